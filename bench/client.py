"""The one load generator every server is measured with: closed loop, keep-alive, loopback.

``concurrency`` client threads each keep one HTTP/1.1 connection open and send the next
photo as soon as the previous answer arrived (a closed loop: the offered load adapts to the
server, so throughput and latency are read together). Answers that complete inside the
measured window count; a warm-up before it is discarded. Every answer is read and parsed
as JSON by the same code whatever the server, so the client costs both servers the same.
"""

from __future__ import annotations

import collections
import http.client
import json
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from bench.cpu import CpuMeter, CpuUse


@dataclass(frozen=True)
class Payload:
    """One request body the clients send, and the name its answers are counted under."""

    body: bytes
    content_type: str = "image/jpeg"
    name: str = "photo"


@dataclass
class Window:
    """What one measured window ended with."""

    concurrency: int
    seconds: float
    latencies: list[float] = field(default_factory=list)
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    failures: int = 0
    abandoned: int = 0  # still in flight ``grace`` seconds after the window
    faces: int = 0
    cpu: CpuUse | None = None
    by_payload: dict[str, collections.Counter[int]] = field(
        default_factory=lambda: collections.defaultdict(collections.Counter))
    payload_latencies: dict[str, list[float]] = field(
        default_factory=lambda: collections.defaultdict(list))

    def quantile(self, q: float) -> float:
        lat = sorted(self.latencies)
        if not lat:
            return float("nan")
        return lat[min(len(lat) - 1, int(q * len(lat)))]

    def summary(self) -> dict[str, Any]:
        ok = self.statuses.get(200, 0)
        return {
            "concurrency": self.concurrency,
            "requests": sum(self.statuses.values()),
            "req_per_s": round(ok / self.seconds, 2),
            "faces_per_s": round(self.faces / self.seconds, 2),
            "p50_ms": round(1000 * self.quantile(0.50), 1),
            "p90_ms": round(1000 * self.quantile(0.90), 1),
            "p99_ms": round(1000 * self.quantile(0.99), 1),
            "errors": sum(n for s, n in self.statuses.items() if s != 200) + self.failures,
            "abandoned": self.abandoned,
            "cpu": self.cpu.as_dict() if self.cpu else None,
        }


def closed_loop(
    url: str,
    payloads: Sequence[Payload],
    *,
    concurrency: int,
    seconds: float,
    warmup: float = 2.0,
    faces_in: Callable[[Any], int],
    grace: float = 30.0,
) -> Window:
    """Run the loop for ``warmup + seconds``; return the measured window.

    Requests still in flight ``grace`` seconds after the window are abandoned (their
    connections shut), so a collapsing server cannot hold the benchmark for minutes.
    """
    parts = urlsplit(url)
    window = Window(concurrency, seconds)
    lock = threading.Lock()
    start = time.monotonic() + warmup
    end = start + seconds
    meter = CpuMeter()
    conns: dict[int, http.client.HTTPConnection] = {}

    def client(index: int) -> None:
        conn = conns[index] = http.client.HTTPConnection(parts.hostname, parts.port,
                                                         timeout=120)
        i = index
        while time.monotonic() < end:
            payload = payloads[i % len(payloads)]
            i += 1
            t0 = time.monotonic()
            try:
                conn.request("POST", parts.path, body=payload.body,
                             headers={"Content-Type": payload.content_type})
                resp = conn.getresponse()
                data = resp.read()
                status = resp.status
                faces = faces_in(json.loads(data)) if status == 200 else 0
            except (OSError, http.client.HTTPException, ValueError):
                conn.close()
                conn = conns[index] = http.client.HTTPConnection(parts.hostname, parts.port,
                                                                 timeout=120)
                if start <= time.monotonic() <= end:
                    with lock:
                        window.failures += 1
                continue
            t1 = time.monotonic()
            if start <= t1 <= end:
                with lock:
                    window.statuses[status] += 1
                    window.latencies.append(t1 - t0)
                    window.faces += faces
                    window.by_payload[payload.name][status] += 1
                    window.payload_latencies[payload.name].append(t1 - t0)
        conn.close()

    threads = [threading.Thread(target=client, args=(i,), daemon=True)
               for i in range(concurrency)]
    for t in threads:
        t.start()
    time.sleep(max(0.0, start - time.monotonic()))
    meter.start()
    time.sleep(max(0.0, end - time.monotonic()))
    window.cpu = meter.stop()
    deadline = time.monotonic() + grace
    for index, t in enumerate(threads):
        t.join(timeout=max(0.0, deadline - time.monotonic()))
        if t.is_alive():
            window.abandoned += 1
            sock = conns[index].sock
            if sock is not None:
                sock.shutdown(socket.SHUT_RDWR)
            t.join(timeout=10)
    return window
