#!/usr/bin/env python3
"""Probes and drain for a TorchServe started by deploy/entrypoint.sh (exit code = verdict).

Why not just ``GET /ping``: TorchServe answers "Healthy" before the model's workers have
loaded anything, so a pod would receive traffic it can only answer with 503. Readiness here
means every model named in ``load_models`` has all of its workers READY *and* a warm-up
prediction (a small generated PNG) came back as a well-formed answer ({"faces": [...],
"model": {...}}). The warm-up runs once per set of worker processes (a crashed worker that
TorchServe replaces is warmed again), not on every probe, so probe traffic does not skew the
service's request and no-face metrics.

Subcommands (stdlib only: the script runs inside the image next to TorchServe, and must not
import the handler or the training package):
  ready   readiness / Docker HEALTHCHECK: 0 ready, 1 not ready (also while draining)
  live    liveness: 0 when /ping says Healthy
  drain   used by the entrypoint on SIGTERM: waits until no request is in flight on the
          inference port (or the timeout passes); 0 drained, 1 timed out

Everything is read from the effective config.properties the entrypoint wrote into its work
directory (``$MSDE_WORK_DIR``): addresses, model names, and the token key file TorchServe
writes there when token authorization is on.
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import shutil
import struct
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

LOG = logging.getLogger("msde.healthcheck")

CONFIG_NAME = "config.properties"
KEY_FILE = "key_file.json"  # TorchServe writes it into its working directory
DRAIN_MARKER = "draining"  # created by the entrypoint on SIGTERM
WARM_MARKER = "warm.json"  # worker pids whose warm-up prediction succeeded
EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int


@dataclass(frozen=True)
class Serving:
    """What the probes need to know about one running TorchServe."""

    work_dir: Path
    inference: Endpoint
    management: Endpoint
    models: tuple[str, ...]
    tokens: dict[str, str]


def read_properties(path: Path) -> dict[str, str]:
    """Java-properties subset TorchServe itself understands: key=value, '#' comments."""
    props: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", "!")) or "=" not in line:
            continue
        key, value = line.split("=", 1)
        props[key.strip()] = value.strip()
    return props


def parse_address(address: str) -> Endpoint:
    """A TorchServe listen address as something to connect to (wildcards mean loopback)."""
    parts = urlsplit(address)
    if parts.scheme != "http":
        raise ValueError(f"only http addresses are supported by the probes, got {address!r}")
    host = parts.hostname or "127.0.0.1"
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    port = parts.port or 80
    return Endpoint(host, port)


def model_names(load_models: str) -> tuple[str, ...]:
    """``msde=msde.mar,other.mar`` -> ("msde", "other")."""
    names = []
    for entry in filter(None, (e.strip() for e in load_models.split(","))):
        if entry.upper() == "ALL":
            raise ValueError("load_models=ALL: name the models so readiness can check them")
        name, sep, url = entry.partition("=")
        if not sep:
            url = name
            name = Path(urlsplit(url).path).name
            for suffix in (".mar", ".model"):
                name = name.removesuffix(suffix)
        names.append(name)
    if not names:
        raise ValueError("load_models names no model")
    return tuple(names)


def load_serving(work_dir: Path) -> Serving:
    props = read_properties(work_dir / CONFIG_NAME)
    tokens: dict[str, str] = {}
    key_file = work_dir / KEY_FILE
    if props.get("disable_token_authorization", "false").lower() != "true" and key_file.exists():
        keys = json.loads(key_file.read_text())
        tokens = {kind: keys[kind]["key"] for kind in ("inference", "management")}
    return Serving(
        work_dir=work_dir,
        inference=parse_address(props.get("inference_address", "http://127.0.0.1:8080")),
        management=parse_address(props.get("management_address", "http://127.0.0.1:8081")),
        models=model_names(props.get("load_models", "")),
        tokens=tokens,
    )


def request(
    endpoint: Endpoint,
    method: str,
    path: str,
    token: str | None,
    timeout: float,
    body: bytes | None = None,
    content_type: str | None = None,
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(endpoint.host, endpoint.port, timeout=timeout)
    headers = {"Connection": "close"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if content_type:
        headers["Content-Type"] = content_type
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def probe_png(size: int = 64) -> bytes:
    """A small grey gradient PNG: a valid image with no face in it, built without Pillow."""
    rows = b"".join(b"\x00" + bytes((x * 2 + y) % 256 for x in range(size)) for y in range(size))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", size, size, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def ready_workers(serving: Serving, model: str, timeout: float) -> list[int] | None:
    """Worker pids when all workers of ``model`` are READY, else None (reason logged)."""
    status, body = request(
        serving.management, "GET", f"/models/{model}", serving.tokens.get("management"), timeout
    )
    if status != 200:
        LOG.info("model %s: management API answered %d", model, status)
        return None
    description = json.loads(body)[0]
    workers = description.get("workers", [])
    states = [w.get("status") for w in workers]
    if not workers or any(s != "READY" for s in states):
        LOG.info("model %s: workers %s", model, states or "none")
        return None
    return sorted(int(w.get("pid", -1)) for w in workers)


def warm_up(serving: Serving, model: str, timeout: float) -> bool:
    """POST the probe image; the answer must have the handler's response shape."""
    status, body = request(
        serving.inference,
        "POST",
        f"/predictions/{model}",
        serving.tokens.get("inference"),
        timeout,
        body=probe_png(),
        content_type="image/png",
    )
    if status != 200:
        LOG.info("model %s: warm-up prediction answered %d: %.200s", model, status, body)
        return False
    try:
        answer = json.loads(body)
    except ValueError:
        LOG.info("model %s: warm-up answer is not JSON: %.200s", model, body)
        return False
    if not (
        isinstance(answer, dict)
        and isinstance(answer.get("faces"), list)
        and isinstance(answer.get("model"), dict)
    ):
        LOG.info("model %s: warm-up answer lacks faces/model: %.200s", model, body)
        return False
    return True


def check_ready(serving: Serving, timeout: float) -> bool:
    if (serving.work_dir / DRAIN_MARKER).exists():
        LOG.info("draining: not ready")
        return False
    marker = serving.work_dir / WARM_MARKER
    warmed: dict[str, list[int]] = json.loads(marker.read_text()) if marker.exists() else {}
    for model in serving.models:
        pids = ready_workers(serving, model, timeout)
        if pids is None:
            return False
        if warmed.get(model) == pids:
            continue
        if not warm_up(serving, model, timeout):
            return False
        warmed[model] = pids
        LOG.info("model %s: warmed up (workers %s)", model, pids)
    tmp = marker.with_suffix(".tmp")
    tmp.write_text(json.dumps(warmed))
    tmp.replace(marker)
    return True


def check_live(serving: Serving, timeout: float) -> bool:
    status, body = request(serving.inference, "GET", "/ping", serving.tokens.get("inference"),
                           timeout)
    healthy = status == 200 and json.loads(body).get("status") == "Healthy"
    if not healthy:
        LOG.info("ping answered %d: %.200s", status, body)
    return healthy


def in_flight(port: int) -> int | None:
    """Connections on ``port`` with a request received but its response not fully sent.

    TorchServe exposes no in-flight gauge, and a keep-alive connection that is idle looks
    like a busy one from the outside; the kernel's per-socket timers tell them apart: data
    received more recently than data sent (or nothing sent yet) means a request is being
    worked on, and a non-empty send queue means a response is still going out. Returns
    None when ``ss`` (iproute2) is missing, so the caller can fall back to waiting.
    """
    ss = shutil.which("ss")
    if ss is None:
        return None
    out = subprocess.run(
        [ss, "-tinH", "state", "established", f"( sport = :{port} )"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sum(1 for sock in split_sockets(out) if socket_busy(sock))


def split_sockets(ss_output: str) -> list[str]:
    """``ss -ti`` prints each socket as a line plus indented detail lines: join them."""
    sockets: list[str] = []
    for line in ss_output.splitlines():
        if line[:1].isspace() and sockets:
            sockets[-1] += " " + line.strip()
        elif line.strip():
            sockets.append(line.strip())
    return sockets


def socket_busy(sock: str) -> bool:
    fields = sock.split()
    send_q = int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else 0
    info = dict(f.split(":", 1) for f in fields if ":" in f and f.split(":", 1)[1][:1].isdigit())
    received = int(info.get("bytes_received", "0"))
    sent = int(info.get("bytes_sent", "0"))
    if send_q > 0:
        return True
    if received == 0:
        return False
    if sent == 0:
        return True
    return int(info.get("lastrcv", "0")) < int(info.get("lastsnd", "0"))


def drain(serving: Serving, timeout: float, quiet_s: float = 0.5) -> bool:
    """Wait until nothing is in flight for ``quiet_s`` (True) or ``timeout`` passes (False)."""
    deadline = time.monotonic() + timeout
    quiet_since: float | None = None
    last_logged = -1
    while time.monotonic() < deadline:
        busy = in_flight(serving.inference.port)
        if busy is None:
            LOG.warning("ss (iproute2) not found: cannot see in-flight requests, waiting %.0fs",
                        timeout)
            time.sleep(max(0.0, deadline - time.monotonic()))
            return False
        now = time.monotonic()
        if busy != last_logged:
            LOG.info("draining: %d request(s) in flight", busy)
            last_logged = busy
        if busy:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = now
        elif now - quiet_since >= quiet_s:
            return True
        time.sleep(0.1)
    LOG.warning("drain timed out after %.0fs", timeout)
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("check", choices=("ready", "live", "drain"), nargs="?", default="ready")
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=Path(os.environ.get("MSDE_WORK_DIR", "logs/run")),
        help="the entrypoint's work directory (default: $MSDE_WORK_DIR)",
    )
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds: per request for ready/live (5), overall for drain (30)")
    parser.add_argument("--quiet", action="store_true", help="log only failures")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s healthcheck %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    try:
        serving = load_serving(args.work_dir)
    except (OSError, ValueError, KeyError) as exc:
        LOG.warning("cannot read the serving setup in %s: %s", args.work_dir, exc)
        return EXIT_USAGE if args.check == "drain" else EXIT_FAIL
    try:
        if args.check == "ready":
            ok = check_ready(serving, args.timeout or 5.0)
        elif args.check == "live":
            ok = check_live(serving, args.timeout or 5.0)
        else:
            ok = drain(serving, args.timeout if args.timeout is not None else 30.0)
    except (OSError, ValueError, KeyError, IndexError, http.client.HTTPException) as exc:
        LOG.info("%s check failed: %s", args.check, exc)
        ok = False
    return EXIT_OK if ok else EXIT_FAIL


if __name__ == "__main__":
    raise SystemExit(main())
