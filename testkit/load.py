"""Bounded bursts of requests against a server on loopback, and what they ended with.

``blast`` opens a fresh connection per request, so a failure can only be the server's doing
(no stale keep-alive connection) and a refused connect is told apart from a reset one. The
overload tests assert on its outcome; ``bench/load.py`` prints it for longer runs.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import requests

RETRYABLE = {429, 503}


@dataclass
class LoadResult:
    """What a burst of requests ended with: HTTP statuses, client-side failures, latencies."""

    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    failures: collections.Counter[str] = field(default_factory=collections.Counter)
    latencies: list[float] = field(default_factory=list)
    bodies_500: list[str] = field(default_factory=list)
    first_body: dict[int, str] = field(default_factory=dict)  # one sample per status

    @property
    def sent(self) -> int:
        return sum(self.statuses.values()) + sum(self.failures.values())

    @property
    def rejected(self) -> int:
        return sum(n for s, n in self.statuses.items() if s in RETRYABLE)

    def summary(self) -> dict[str, object]:
        lat = sorted(self.latencies) or [0.0]
        return {"sent": self.sent, "statuses": dict(self.statuses),
                "failures": dict(self.failures), "rejected": self.rejected,
                "p50_s": round(lat[len(lat) // 2], 3), "max_s": round(lat[-1], 3)}


def blast(url: str, payload: bytes, *, total: int, concurrency: int, timeout: float = 120.0,
          keep_going: Callable[[], bool] = lambda: True) -> LoadResult:
    """POST ``payload`` ``total`` times from ``concurrency`` threads, one connection each time."""
    result = LoadResult()
    lock = threading.Lock()
    counter = iter(range(total))

    def worker() -> None:
        while True:
            with lock:
                if next(counter, None) is None or not keep_going():
                    return
            start = time.monotonic()
            try:
                r = requests.post(url, data=payload, timeout=timeout,
                                  headers={"Connection": "close"})
            except requests.RequestException as exc:
                kind = failure_kind(exc)
                with lock:
                    result.failures[kind] += 1
                continue
            with lock:
                result.statuses[r.status_code] += 1
                result.latencies.append(time.monotonic() - start)
                result.first_body.setdefault(r.status_code, r.text[:300])
                if r.status_code >= 500 and r.status_code not in RETRYABLE:
                    result.bodies_500.append(r.text[:300])

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return result


def failure_kind(exc: requests.RequestException) -> str:
    text = repr(exc)
    if isinstance(exc, requests.Timeout):
        return "timeout"
    if "Connection refused" in text or "NewConnectionError" in text:
        return "refused"
    return "reset"  # the connection broke after the request was sent


