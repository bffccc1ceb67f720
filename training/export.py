"""``msde-export``: a training checkpoint becomes the TorchScript file TorchServe loads.

The scripted student carries its contract inside, as the extra file ``metadata.json``
(``handler.contract.ModelMetadata``: labels, input size, normalisation, crop, calibration),
so the handler never guesses how to feed it. Before the file is accepted, the scripted
module — re-loaded from disk — must reproduce the eager model's outputs on random tensors
and on real photos run through the serving preprocessing; any difference fails loudly.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from handler.align import face_input, whole_image_detection
from handler.faces import Detection
from handler.contract import (
    METADATA_FILE,
    Calibration,
    InputSpec,
    ModelMetadata,
    read_metadata,
)
from training import __version__
from training.models import create_student, default_input_spec, student_from_checkpoint

LOG = logging.getLogger(__name__)

PARITY_ATOL = 1e-5
# skimage's astronaut (public domain, NASA): her face lies roughly in this box
_ASTRONAUT_FACE = (160.0, 40.0, 300.0, 200.0)


class ParityError(RuntimeError):
    """The scripted model does not compute what the eager model computes."""


def script_module(model: nn.Module, example: Tensor) -> tuple[torch.jit.ScriptModule, str]:
    """``torch.jit.script`` the model; trace only if scripting is impossible (and say so)."""
    try:
        return torch.jit.script(model), "script"
    except Exception as exc:  # noqa: BLE001 - any scripting failure means: try tracing
        LOG.warning("torch.jit.script failed (%s); falling back to torch.jit.trace", exc)
        return torch.jit.trace(model, example), "trace"


def real_inputs(spec: InputSpec, images: list[Path] | None = None) -> Tensor:
    """Real photos through THE preprocessing (``handler.align.face_input``) as a batch.

    Given image files are treated as ready-made face crops; without them, public-domain
    photos that ship with installed packages are used (skimage's astronaut, her face box
    and the whole frame), so the check needs no download.
    """
    if images:
        import cv2

        arrays = []
        for p in images:
            bgr = cv2.imread(str(p), cv2.IMREAD_COLOR)
            if bgr is None:
                raise FileNotFoundError(f"cannot read parity image {p}")
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            arrays.append(face_input(rgb, whole_image_detection(rgb), spec))
        return torch.from_numpy(np.stack(arrays))
    from skimage import data

    astronaut = np.ascontiguousarray(data.astronaut())
    face = Detection(box=_ASTRONAUT_FACE, score=1.0, keypoints=None)
    batch = [
        face_input(astronaut, face, spec),
        face_input(astronaut, whole_image_detection(astronaut), spec),
    ]
    return torch.from_numpy(np.stack(batch))


def check_parity(
    eager: nn.Module, scripted: torch.jit.ScriptModule, inputs: dict[str, Tensor],
    atol: float = PARITY_ATOL,
) -> dict[str, float]:
    """Max |eager - scripted| per input set and output; raises ``ParityError`` above ``atol``."""
    diffs: dict[str, float] = {}
    with torch.no_grad():
        for name, x in inputs.items():
            for i, (a, b) in enumerate(zip(eager(x), scripted(x), strict=True)):
                if a.shape != b.shape:
                    raise ParityError(f"{name} output {i}: shape {a.shape} vs {b.shape}")
                diffs[f"{name}/output{i}"] = float((a - b).abs().max())
    bad = {k: v for k, v in diffs.items() if not v <= atol}
    if bad:
        raise ParityError(f"scripted != eager beyond atol={atol}: {bad}")
    return diffs


def export_student(
    model: nn.Module,
    metadata: ModelMetadata,
    out: Path,
    *,
    parity_images: list[Path] | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Script ``model``, embed ``metadata``, save to ``out`` and verify the saved file.

    Returns the parity differences (all <= ``PARITY_ATOL``).
    """
    model = model.eval()
    spec = metadata.input_spec()
    generator = torch.Generator().manual_seed(seed)
    inputs = {
        "random": torch.randn((4, *spec.input_size), generator=generator),
        "real": real_inputs(spec, parity_images),
    }
    scripted, how = script_module(model, inputs["random"])
    if how == "trace":
        LOG.warning("exported a TRACED module: data-dependent control flow is frozen")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # write to a temporary file first so a failed check never leaves a plausible model.pt
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".export-") as tmp:
        staged = Path(tmp) / out.name
        torch.jit.save(scripted, str(staged), _extra_files={METADATA_FILE: metadata.to_json()})
        reloaded = torch.jit.load(str(staged), map_location="cpu")
        diffs = check_parity(model, reloaded, inputs)
        if read_metadata(staged) != metadata:
            raise ParityError("metadata.json read back differs from what was written")
        staged.replace(out)
    LOG.info("exported %s (%s); max |eager - scripted| = %.2e", out, how, max(diffs.values()))
    return diffs


def metadata_for_checkpoint(
    checkpoint: dict[str, object],
    spec: InputSpec,
    *,
    version: str,
    trained_on: str | None,
    calibration: Calibration | None,
) -> ModelMetadata:
    """The model card of a checkpoint; ``trained_on`` defaults to its data config."""
    config = checkpoint.get("config") or {}
    assert isinstance(config, dict)
    if trained_on is None:
        data = config.get("data") or {}
        assert isinstance(data, dict)
        where = data.get("root") or f"seed {data.get('seed')}"
        trained_on = (
            f"{data.get('layout', 'unknown')} data ({where}), paradigm "
            f"{config.get('paradigm', 'unknown')}, epoch {checkpoint.get('epoch')}"
        )
    return ModelMetadata(
        version=version,
        architecture=str(checkpoint["student"]),
        input_size=spec.input_size,
        mean=list(spec.mean),
        std=list(spec.std),
        trained_on=trained_on,
        crop=spec.crop,
        calibration=calibration or Calibration(),
        paradigm=config.get("paradigm"),
        epoch=checkpoint.get("epoch"),
        metrics=checkpoint.get("metrics") or {},
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="msde-export", description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="msde-train .pth")
    source.add_argument("--student", help="export an untrained-by-us student by name "
                        "(with --pretrained: e.g. mini_xception from the fer weights)")
    parser.add_argument("--pretrained", default=None,
                        help="with --student: weights on disk to initialise it from")
    parser.add_argument("--out", type=Path, required=True, help="TorchScript file to write")
    parser.add_argument("--version", default=__version__)
    parser.add_argument("--trained-on", default=None, help="default: from the checkpoint config")
    parser.add_argument("--calibration", type=Path, default=None,
                        help="calibration.json (handler.contract.Calibration)")
    parser.add_argument("--parity-image", type=Path, action="append", default=None,
                        help="face-crop image(s) for the parity check (default: public photos)")
    parser.add_argument("--mar", type=Path, default=None,
                        help="also build the TorchServe archive into this folder")
    parser.add_argument("--model-config", type=Path, default=None,
                        help="TorchServe model-config.yaml for --mar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    if args.checkpoint is not None:
        student, spec, ckpt = student_from_checkpoint(args.checkpoint)
    else:
        student = create_student(args.student, pretrained=args.pretrained).eval()
        spec = default_input_spec(args.student)
        origin = args.pretrained or "random initialisation"
        ckpt = {"student": args.student, "epoch": None,
                "config": {"paradigm": "none", "pretrained": str(origin)}}
        if args.trained_on is None:
            args.trained_on = (
                f"not trained by msde-train: weights from {origin}; mask head untrained"
            )
    calibration = (
        Calibration.model_validate_json(args.calibration.read_text())
        if args.calibration is not None else None
    )
    meta = metadata_for_checkpoint(
        ckpt, spec, version=args.version, trained_on=args.trained_on, calibration=calibration
    )
    diffs = export_student(student, meta, args.out, parity_images=args.parity_image)
    print(f"wrote {args.out} ({meta.architecture}, input {list(meta.input_size)}, "
          f"max |eager - scripted| {max(diffs.values()):.2e})")
    if args.mar is not None:
        from training.archive import build_archive

        print(build_archive(args.out, args.mar, model_config=args.model_config))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
