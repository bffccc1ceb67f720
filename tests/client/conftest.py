"""A scripted stand-in for TorchServe's HTTP answers (status codes and bodies as TorchServe
0.12 and our handler write them), for the client's error handling; the client against the
real TorchServe is in tests/e2e/test_client.py."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from client.ui import in_background

Reply = tuple[int, dict[str, Any] | list[Any]]


def prediction(n_faces: int = 1, label: str = "happiness", group: str | None = None
               ) -> dict[str, Any]:
    """A response whose faces answer ``label`` (or, when it is 'uncertain', ``group``)."""
    probs = {k: 0.0 for k in ("surprise", "fear", "disgust", "happiness", "sadness", "anger",
                              "neutral")}
    probs["happiness"] = 1.0
    groups = {"positive": 1.0, "negative": 0.0, "surprised": 0.0, "neutral": 0.0}
    if label != "uncertain":
        answer = {"level": "expression", "label": label, "probability": 1.0}
    elif group is not None:
        answer = {"level": "group", "label": group, "probability": 1.0}
    else:
        answer = {"level": "uncertain", "label": "uncertain", "probability": 1.0}
    face = {"box": [20.0, 30.0, 60.0, 80.0], "score": 0.9,
            "mask": {"label": "unmasked", "probability": 0.97, "state_reliable": True},
            "expression": {"label": label, "probability": 1.0, "probabilities": probs,
                           "calibrated": True},
            "group": {"label": group or "uncertain", "probability": 1.0,
                      "probabilities": groups},
            "answer": answer}
    return {"faces": [face] * n_faces, "image": {"width": 100, "height": 100},
            "model": {"name": "msde", "version": "1.0.0"}}


TOKEN_BODY = {"code": 400, "type": "InvalidKeyException",
              "message": "Token Authorization failed. Token either incorrect, expired, or not "
                         "provided correctly"}
NO_MODEL_BODY = {"code": 404, "type": "ModelNotFoundException",
                 "message": "Model not found: msde"}
NO_WORKER_BODY = {"code": 503, "type": "ServiceUnavailableException",
                  "message": "Model \"msde\" has no worker to serve inference request."}


@dataclass
class FakeService:
    """Answers each request with ``respond(method, path, body)``; records what it got."""

    respond: Callable[[str, str, bytes], Reply]
    url: str = ""
    seen: list[tuple[str, str, bytes, dict[str, str]]] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    delay: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)


@pytest.fixture()
def fake_service() -> Iterator[FakeService]:
    service = FakeService(respond=lambda m, p, b: (200, prediction()))

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _answer(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with service.lock:
                service.seen.append((self.command, self.path, body, dict(self.headers)))
                service.in_flight += 1
                service.max_in_flight = max(service.max_in_flight, service.in_flight)
            time.sleep(service.delay)
            status, payload = service.respond(self.command, self.path, body)
            with service.lock:
                service.in_flight -= 1
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _answer  # noqa: N815 - stdlib naming

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    service.url = f"http://127.0.0.1:{server.server_address[1]}"
    with in_background(server):
        yield service


@pytest.fixture()
def closed_port_url() -> str:
    """A loopback URL where nothing listens."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"
