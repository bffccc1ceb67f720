"""``msde-client ui``: the try-it page, served on 127.0.0.1, forwarding API calls.

The page (``client/static/index.html``: one file, no build step) talks only to this server,
which forwards ``/api/predict``, ``/api/explain`` and ``/api/ping`` to the service: the
browser sees one origin, so TorchServe needs no CORS settings, and a token (``--token``)
stays on this side instead of in the page.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from socketserver import BaseServer
from typing import Any, TypeVar

import requests

LOG = logging.getLogger(__name__)
Server = TypeVar("Server", bound=BaseServer)

# what the service accepts (20 MiB per request) plus room for base64/multipart framing
MAX_FORWARD_BYTES = 32 * 1024 * 1024
ROUTES = {"/api/predict": "predictions", "/api/explain": "explanations"}


def page() -> bytes:
    return resources.files("client").joinpath("static/index.html").read_bytes()


class _Handler(BaseHTTPRequestHandler):
    server: UiServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        LOG.debug("%s " + format, self.address_string(), *args)

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        if self.path in ("/", "/index.html"):
            self._send(200, page(), "text/html; charset=utf-8")
        elif self.path == "/api/ping":
            self._forward("GET", f"{self.server.upstream}/ping", None, None)
        else:
            self._error(404, "not_found", f"no page at {self.path}")

    def do_POST(self) -> None:  # noqa: N802
        kind = ROUTES.get(self.path)
        if kind is None:
            self._error(404, "not_found", f"no API at {self.path}")
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_FORWARD_BYTES:
            self._error(413, "payload_too_large",
                        f"{length} bytes; this page forwards at most {MAX_FORWARD_BYTES}")
            self.close_connection = True
            return
        body = self.rfile.read(length)
        url = f"{self.server.upstream}/{kind}/{self.server.model}"
        self._forward("POST", url, body, self.headers.get("Content-Type"))

    def _forward(self, method: str, url: str, body: bytes | None, ctype: str | None) -> None:
        headers = {"Content-Type": ctype} if ctype else {}
        if self.server.token:
            headers["Authorization"] = f"Bearer {self.server.token}"
        try:
            r = requests.request(method, url, data=body, headers=headers, timeout=120)
        except requests.RequestException:
            self._error(502, "service_unreachable",
                        f"the msde service at {self.server.upstream} does not answer: "
                        "is it running? (`make serve` starts it)")
            return
        self._send(r.status_code, r.content, r.headers.get("Content-Type", "application/json"))

    def _error(self, status: int, code: str, message: str) -> None:
        body = json.dumps({"error": {"code": code, "message": message}}).encode()
        self._send(status, body, "application/json")

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)


class UiServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, upstream: str, model: str, token: str | None) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.upstream = upstream.rstrip("/")
        self.model = model
        self.token = token


def serve(upstream: str, *, port: int = 8090, model: str = "msde",
          token: str | None = None) -> UiServer:
    """A bound server (``port=0``: a free one); the caller runs ``serve_forever``."""
    return UiServer(port, upstream, model, token)


@contextmanager
def in_background(server: Server) -> Iterator[Server]:
    """Run ``server`` on a thread for the ``with`` block (tests, notebooks), then stop it."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
