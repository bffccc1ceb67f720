"""Build the self-contained TorchServe archive (.mar) with torch-model-archiver.

The archive holds: the TorchScript student as ``msde_student.pt`` (metadata.json inside),
the ``handler`` package, the BlazeFace detector weights under ``blazeface/`` with their
licence (and the distilled masked-face model when model-config.yaml serves it), and
model-config.yaml. Nothing is fetched when TorchServe loads it.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from handler.contract import read_metadata
from training.assets import REPO_ROOT, fetch

LOG = logging.getLogger(__name__)

HANDLER_DIR = REPO_ROOT / "handler"
DEFAULT_MODEL_CONFIG = REPO_ROOT / "deploy" / "model-config.yaml"
STUDENT_FILE = "msde_student.pt"  # the name handler.msde_handler loads


def _stage_handler(dest: Path) -> None:
    dest.mkdir(parents=True)
    for src in sorted(HANDLER_DIR.glob("*.py")):
        shutil.copy2(src, dest / src.name)


def _detector_dir(model_config: Path) -> Path:
    """The detector folder the config serves: ``MSDE_DETECTOR_DIR`` if set, else the built
    masked-face detector when the config uses it (built if missing), else the registry's."""
    import yaml

    from handler.detect import DetectorConfig

    if os.environ.get("MSDE_DETECTOR_DIR"):
        return Path(os.environ["MSDE_DETECTOR_DIR"])
    handler = (yaml.safe_load(model_config.read_text()) or {}).get("handler") or {}
    if "masked" in DetectorConfig.model_validate(handler.get("detector") or {}).needed_models():
        from training.detector.distill import detector_models

        return detector_models()
    return fetch("blazeface")


def _stage_detector(dest: Path, root: Path) -> None:
    dest.mkdir(parents=True)
    onnx = sorted(root.rglob("*.onnx"))
    if not onnx:
        raise FileNotFoundError(f"no .onnx detector weights under {root}")
    for src in onnx:
        shutil.copy2(src, dest / src.name)
    for name in ("LICENSE", "asset.json", "detector.json"):
        if (root / name).exists():
            shutil.copy2(root / name, dest / name)


def build_archive(
    pt_path: Path,
    out_dir: Path,
    *,
    model_config: Path | None = None,
    model_name: str = "msde",
    detector_dir: Path | None = None,
) -> Path:
    """Package ``pt_path`` into ``out_dir/<model_name>.mar`` and return its path."""
    pt_path, out_dir = Path(pt_path), Path(out_dir)
    meta = read_metadata(pt_path)  # refuses a student without a valid contract
    model_config = Path(model_config or DEFAULT_MODEL_CONFIG)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="msde-mar-") as tmp:
        stage = Path(tmp)
        shutil.copy2(pt_path, stage / STUDENT_FILE)
        extra = stage / "extra"
        _stage_handler(extra / "handler")
        _stage_detector(extra / "blazeface", detector_dir or _detector_dir(model_config))
        cmd = [
            sys.executable,
            "-m",
            "model_archiver.model_packaging",
            "--model-name", model_name,
            "--version", meta.version,
            "--serialized-file", str(stage / STUDENT_FILE),
            "--handler", str(extra / "handler" / "msde_handler.py"),
            "--extra-files", str(extra),
            "--config-file", str(model_config),
            "--export-path", str(out_dir),
            "--force",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"torch-model-archiver failed: {proc.stderr.strip()[-2000:]}")
    mar = out_dir / f"{model_name}.mar"
    if not mar.exists():
        raise RuntimeError(f"torch-model-archiver did not write {mar}")
    LOG.info("wrote %s (%s %s, %.1f MB)", mar, meta.architecture, meta.version,
             mar.stat().st_size / 1e6)
    return mar


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("student", type=Path, help="TorchScript student (.pt with metadata)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "model_store")
    parser.add_argument("--model-config", type=Path, default=DEFAULT_MODEL_CONFIG)
    parser.add_argument("--name", default="msde")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    print(build_archive(args.student, args.out, model_config=args.model_config,
                        model_name=args.name))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
