"""Load figures for docs/reliability.md: a bounded burst far above one server's capacity.

Starts TorchServe on free loopback ports (``testkit.server``, the test student, the archive's
batching from deploy/model-config.yaml unless overridden), sends ``--total`` requests from
``--concurrency`` threads (a fresh connection each), and prints one JSON line: statuses,
client-side failures (reset / refused / timeout: all must be 0), rejections (503/429),
latency p50/max, and one sample body per status. Loopback only; count and time bounded.

Run:  python bench/load.py [--total 600] [--concurrency 64] [--workers 2] [--queue 64]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from testkit.corpus import jpeg  # noqa: E402
from testkit.load import blast  # noqa: E402
from testkit.server import start_server  # noqa: E402
from testkit.student import build_test_student  # noqa: E402
from training.archive import build_archive  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--total", type=int, default=600)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--queue", type=int, default=64, help="job_queue_size")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-batch-delay", type=int, default=20)
    parser.add_argument("--image", type=Path, help="payload file (default: 128x96 JPEG)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="msde-load-") as tmp:
        root = Path(tmp)
        config = yaml.safe_load((REPO / "deploy" / "model-config.yaml").read_text())
        config.update(minWorkers=args.workers, maxWorkers=args.workers,
                      batchSize=args.batch_size, maxBatchDelay=args.max_batch_delay)
        (root / "model-config.yaml").write_text(yaml.safe_dump(config))
        student = build_test_student(root / "student")
        build_archive(student, root / "store", model_config=root / "model-config.yaml")
        served = start_server(root / "store", root / "ts",
                              extra_config={"job_queue_size": str(args.queue)})
        try:
            payload = args.image.read_bytes() if args.image else jpeg()
            start = time.monotonic()
            result = blast(served.predictions_url(), payload, total=args.total,
                           concurrency=args.concurrency)
            wall = time.monotonic() - start
        finally:
            served.stop()
    summary = result.summary()
    summary.update(workers=args.workers, queue=args.queue, batch_size=args.batch_size,
                   concurrency=args.concurrency, wall_s=round(wall, 1),
                   lost=args.total - result.sent + sum(result.failures.values()),
                   samples=result.first_body)
    print(json.dumps(summary))
    ok = not result.failures and set(result.statuses) <= {200, 429, 503}
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
