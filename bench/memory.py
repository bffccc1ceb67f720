"""Worst-case memory: the largest requests the limits admit, sent to the real service at once.

Starts TorchServe with the archive as deployed (its model-config.yaml: workers, batching,
limits), samples the RSS of every worker (and of the frontend JVM) 20 times a second, and
sends, from ``2 x workers x batchSize`` clients at once for ``--seconds``:

* KServe bodies at the per-request pixel budget made of flat PNGs at the per-image limit
  (a few KB each, the cheapest way to ask for the most pixels);
* the largest photo-like JPEG within the image limits (decoded with DCT scaling);
* the body of issue #13 (16 flat 6000x6600 PNGs), which must be refused from the headers.

Prints (and returns) peak RSS and PSS per worker against the idle figures after warm-up with
the real student, the answers by status, and whether the summed peak PSS (what the pod's
memory cgroup counts: shared library pages once) stays under ``--limit-mib`` (the pod's
limit, shared by its workers and the JVM) with a 25% margin.

Run:  python bench/memory.py [--archive model_store/msde.mar] [--seconds 20]
"""

from __future__ import annotations

import argparse
import base64
import collections
import json
import logging
import math
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import requests
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.client import Payload, closed_loop  # noqa: E402
from handler.pipeline import ServingConfig  # noqa: E402
from testkit.corpus import flat_png  # noqa: E402
from testkit.imaging import encode  # noqa: E402
from testkit.photos import one_face_photos  # noqa: E402
from testkit.server import ServedModel, start_server  # noqa: E402

LOG = logging.getLogger("bench.memory")
MIB = 1024 * 1024


def archive_config(mar: Path) -> dict[str, Any]:
    import zipfile

    with zipfile.ZipFile(mar) as z:
        return yaml.safe_load(z.read("model-config.yaml")) or {}


def _kserve(images: list[bytes]) -> bytes:
    items = ",".join('{"data": "%s"}' % base64.b64encode(i).decode() for i in images)
    return ('{"instances": [' + items + "]}").encode()


def worst_bodies(config: ServingConfig) -> dict[str, bytes]:
    """The heaviest requests the limits admit, and the issue's over-limit one."""
    side = int(math.isqrt(config.max_image_pixels))
    side = min(side, config.max_image_side)
    per_image = side * side
    n = max(1, config.max_request_pixels // per_image)
    rest = config.max_request_pixels - n * per_image
    images = [flat_png(side, side)] * n
    if rest >= 64 * 64 and n < config.max_images_per_request:
        images.append(flat_png(int(math.isqrt(rest)), int(math.isqrt(rest))))
    # a photo-like gradient with grain, at the per-image limit and under the byte limit
    ramp = (np.arange(side, dtype=np.uint16) * 255 // side).astype(np.uint8)
    photo = np.empty((side, side, 3), np.uint8)
    photo[..., 0], photo[..., 1] = ramp[None, :], ramp[:, None]
    photo[..., 2] = (ramp[None, :].astype(np.uint16) + ramp[:, None]) // 2
    photo += np.random.default_rng(0).integers(0, 6, (side, side, 1), dtype=np.uint8)
    big_jpeg = next(data for q in (80, 60, 40, 20)
                    if len(data := encode(photo, "JPEG", quality=q)) < 0.9 * config.max_image_bytes)
    del photo
    return {
        f"kserve_{len(images)}_flat_png_at_request_budget": _kserve(images),
        f"jpeg_{side}x{side}": big_jpeg,
        "issue13_16_flat_6000x6600_png": _kserve([flat_png(6000, 6600)] * 16),
    }


def _memory(pid: int) -> tuple[int, int]:
    """(RSS, PSS) bytes. PSS shares each shared page among the processes mapping it: the
    workers' sum is what the pod's memory cgroup sees (RSS counts the ~440 MiB of torch's
    shared libraries once per worker)."""
    rss = pss = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Rss:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith("Pss:"):
                pss = int(line.split()[1]) * 1024
    return rss, pss


class MemorySampler:
    """Peak RSS and PSS of each worker and of the frontend, sampled in the background."""

    def __init__(self, served: ServedModel, every: float = 0.05) -> None:
        self.served = served
        self.every = every
        self.peak_rss: dict[int, int] = collections.defaultdict(int)
        self.peak_pss: dict[int, int] = collections.defaultdict(int)
        self.frontend_peak_rss = self.frontend_peak_pss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def worker_pids(self) -> list[int]:
        return [int(w["pid"]) for w in self.served.workers() if w.get("pid")]

    def snapshot(self) -> dict[int, tuple[int, int]]:
        out = {}
        for pid in self.worker_pids():
            try:
                out[pid] = _memory(pid)
            except OSError:
                continue
        return out

    def _run(self) -> None:
        pids = self.worker_pids()
        launcher = psutil.Process(self.served.process.pid)
        while not self._stop.is_set():
            try:
                for pid in pids:
                    rss, pss = _memory(pid)
                    self.peak_rss[pid] = max(self.peak_rss[pid], rss)
                    self.peak_pss[pid] = max(self.peak_pss[pid], pss)
                others = [_memory(p.pid) for p in launcher.children(recursive=True)
                          if p.pid not in pids]
                self.frontend_peak_rss = max(self.frontend_peak_rss, sum(r for r, _ in others))
                self.frontend_peak_pss = max(self.frontend_peak_pss, sum(p for _, p in others))
            except (OSError, psutil.NoSuchProcess):
                pids = self.worker_pids()  # a worker died and was replaced
            time.sleep(self.every)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def run_memory_bench(mar: Path, workdir: Path, *, seconds: float = 20.0,
                     limit_mib: int = 3072, margin: float = 0.25) -> dict[str, Any]:
    raw_config = archive_config(mar)
    config = ServingConfig.model_validate(raw_config.get("handler", {}))
    # every worker busy with a full batch of worst requests, and as many again queued
    clients = 2 * int(raw_config.get("maxWorkers", 1)) * int(raw_config.get("batchSize", 1))
    bodies = worst_bodies(config)
    photo = encode(one_face_photos(1)[0], "JPEG", quality=90)
    served = start_server(mar.parent, workdir, archive=mar.name,
                          extra_config={"job_queue_size": "256"})
    try:
        url = served.predictions_url()
        for _ in range(6):
            requests.post(url, data=photo, timeout=60).raise_for_status()
        sampler = MemorySampler(served)
        idle = sampler.snapshot()
        payloads = [Payload(body, "image/jpeg" if name.startswith("jpeg") else
                            "application/json", name) for name, body in bodies.items()]
        with sampler:
            window = closed_loop(url, payloads, concurrency=clients, seconds=seconds,
                                 warmup=0.0, faces_in=lambda _: 0, grace=240.0)
        after = requests.post(url, data=photo, timeout=60).status_code
        settled = sampler.snapshot()
    finally:
        served.stop()
    # sums of per-process peaks: an upper bound of the pod's peak
    total_rss = sum(sampler.peak_rss.values()) + sampler.frontend_peak_rss
    total_pss = sum(sampler.peak_pss.values()) + sampler.frontend_peak_pss
    result = {
        "archive": mar.name,
        "workers": len(idle),
        "clients": clients,
        "seconds": seconds,
        "limits": {"max_image_pixels": config.max_image_pixels,
                   "max_request_pixels": config.max_request_pixels,
                   "max_batch_pixels": config.max_batch_pixels,
                   "working_side": config.working_side},
        "idle_worker_rss_mib": sorted(round(r / MIB) for r, _ in idle.values()),
        "idle_worker_pss_mib": sorted(round(p / MIB) for _, p in idle.values()),
        "peak_worker_rss_mib": sorted(round(v / MIB) for v in sampler.peak_rss.values()),
        "peak_worker_pss_mib": sorted(round(v / MIB) for v in sampler.peak_pss.values()),
        "after_worker_rss_mib": sorted(round(r / MIB) for r, _ in settled.values()),
        "frontend_peak_rss_mib": round(sampler.frontend_peak_rss / MIB),
        "total_peak_rss_mib": round(total_rss / MIB),
        "total_peak_pss_mib": round(total_pss / MIB),
        "limit_mib": limit_mib,
        "margin": margin,
        "within_limit_with_margin": total_pss <= (1 - margin) * limit_mib * MIB,
        "answers": {k: dict(v) for k, v in window.by_payload.items()},
        "median_latency_s": {k: round(float(np.median(v)), 2)
                             for k, v in window.payload_latencies.items() if v},
        "abandoned": window.abandoned,
        "photo_after_status": after,
    }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", type=Path, default=REPO / "model_store" / "msde.mar")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--limit-mib", type=int, default=3072)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not args.archive.exists():
        parser.error(f"{args.archive} is missing: run `make model` first")
    with tempfile.TemporaryDirectory(prefix="msde-memory-") as tmp:
        result = run_memory_bench(args.archive, Path(tmp), seconds=args.seconds,
                                  limit_mib=args.limit_mib)
    print(json.dumps(result, indent=2))
    return 0 if result["within_limit_with_margin"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
