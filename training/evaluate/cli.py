"""``msde-eval``: per-mask-state evaluation report of msde students (one per fold).

CLI::

    msde-eval --checkpoint runs/x/best.pth --out reports/x
    msde-eval --checkpoint runs/fold{0..9}/best.pth --out reports/kfold   # one per fold
    msde-eval --checkpoint model_store/msde.pt --data-config data.yaml --out reports/pt
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from training.calibrate import write_calibration
from training.evaluate.metrics import SCALARS, STATES, aggregate
from training.evaluate.report import fmt, pm, write_report
from training.evaluate.run import EvalResult, evaluate_checkpoint, read_data_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="msde-eval",
        description="Per-mask-state evaluation report of msde students (one per fold).",
    )
    parser.add_argument("--checkpoint", type=Path, nargs="+", required=True,
                        help="msde-train checkpoint(s) (.pth) or exported TorchScript (.pt)")
    parser.add_argument("--data-config", type=Path, default=None,
                        help="YAML: a training config or a bare data config (default: the "
                        "checkpoint's own config)")
    parser.add_argument("--split", choices=("test", "val", "all"), default="test")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--title", default=None)
    parser.add_argument("--target-precision", type=float, default=None,
                        help="precision the abstention thresholds are fitted for (default: "
                        "the training config's target_precision)")
    parser.add_argument("--cam-samples", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    data_config = read_data_config(args.data_config) if args.data_config else None

    results: list[EvalResult] = []
    for i, path in enumerate(args.checkpoint):
        result, validation = evaluate_checkpoint(
            path, data_config=data_config, split=args.split, device=args.device,
            batch_size=args.batch_size, cam_samples=args.cam_samples if i == 0 else 0,
            target_precision=args.target_precision,
        )
        prefix = "" if len(args.checkpoint) == 1 else f"{result.name.split()[0]}_"
        result.save_outputs(args.out / f"{prefix}{args.split}_outputs.npz")
        if validation is not None and result.calibration is not None:
            validation.save_outputs(args.out / f"{prefix}val_outputs.npz")
            write_calibration(result.calibration, args.out / f"{prefix}calibration.json")
        results.append(result)

    title = args.title or f"msde evaluation: {', '.join(str(p) for p in args.checkpoint[:3])}"
    report = write_report(results, args.out, title)
    agg = aggregate(results)
    show = (lambda m: fmt(m[0])) if len(results) == 1 else (lambda m: pm(*m))
    for s in STATES:
        print(f"{s:9s} " + "  ".join(f"{m} {show(agg[s][m])}" for m in SCALARS))
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
