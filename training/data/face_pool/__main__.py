"""CLI: ``python -m training.data.face_pool build|list|sheet``."""

from __future__ import annotations

import argparse
import logging
from collections import Counter
from pathlib import Path

from training.contact_sheet import write_sheet
from training.data.face_pool.build import build_pool
from training.data.face_pool.report import pool_sheet, summary
from training.data.face_pool.sources import GROUPS, SOURCES


def main(argv: list[str] | None = None) -> int:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--cache-dir", type=Path, default=None)
    common.add_argument("--sources", nargs="+", default=None, choices=list(SOURCES))
    common.add_argument("--max-per-identity", type=int, default=20)
    parser = argparse.ArgumentParser(prog="python -m training.data.face_pool",
                                     description="The face pool: build, list, draw.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_build = sub.add_parser("build", parents=[common],
                             help="build (or load) the pool and print counts")
    p_build.add_argument("--groups", nargs="+", default=list(GROUPS), choices=list(GROUPS))
    sub.add_parser("list", parents=[common], help="list the sources, their groups and licences")
    p_sheet = sub.add_parser("sheet", parents=[common],
                             help="write a contact sheet of aligned crops")
    p_sheet.add_argument("--group", choices=list(GROUPS), required=True)
    p_sheet.add_argument("out", type=Path)
    p_sheet.add_argument("--tile", type=int, default=64)
    p_sheet.add_argument("--columns", type=int, default=20)
    p_sheet.add_argument("--labels", action="store_true", help="caption crops with identities")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    if args.cmd == "list":
        for s in SOURCES.values():
            if args.sources is None or s.name in args.sources:
                print(f"{s.group:5s} {s.name:17s} {s.version:28s} {len(s.shots):4d} shots  "
                      f"{s.licence}")
        return 0
    groups = args.groups if args.cmd == "build" else [args.group]
    faces = build_pool(args.cache_dir, groups=groups, max_per_identity=args.max_per_identity,
                       sources=args.sources)
    if args.cmd == "build":
        print(f"{'group':5s} {'source':17s} {'faces':>5s} {'people':>6s}  licence")
        for row in summary(faces):
            print(f"{row['group']:5s} {row['source']:17s} {row['faces']:5d} "
                  f"{row['identities']:6d}  {row['licence']}")
        per_id = Counter(f.identity for f in faces)
        print(f"total: {len(faces)} faces, {len(per_id)} identities")
        return 0
    write_sheet(pool_sheet(faces, tile=args.tile, columns=args.columns, labels=args.labels),
                args.out)
    print(f"{args.out}: {len(faces)} faces of {len({f.identity for f in faces})} people")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
