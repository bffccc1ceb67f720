#!/usr/bin/env python3
"""Build the scaled-down archive (the end-to-end tests' model) with the production
model-config, for an image that can be built and tested in minutes instead of after a
5-20 minute `make model`: `make image-test IMAGE_MAR=model_store/msde-scaled.mar`.

Same recipe as the real model on few faces and steps, so the image holds the same handler,
detector, metadata and worker setup (deploy/model-config.yaml: 2 workers); only the
student's figures differ.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
from pathlib import Path

from testkit.scaled_model import build_scaled_down

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="archive to write, e.g. model_store/msde-scaled.mar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory(prefix="msde-scaled-") as tmp:
        card = build_scaled_down(Path(tmp) / "store", Path(tmp) / "build",
                                 REPO / "deploy" / "model-config.yaml")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(card["archive"], args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
