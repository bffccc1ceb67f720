"""In-process figures: the raw student forward and the pipeline stage by stage, one thread.

These are the floor the service is compared with (``p50 at concurrency 1 <= 1.3x the
in-process time of one image``), and the tuning figures of the forward pass: the student
as shipped against ``torch.jit.freeze`` + ``optimize_for_inference``, channels-last and
int8, each with its agreement with the shipped fp32 student on real face crops.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from handler.align import face_input
from handler.contract import METADATA_FILE, ModelMetadata
from handler.msde_handler import load_pipeline
from handler.pipeline import Pipeline, ServingConfig, Timings

LOG = logging.getLogger(__name__)

Forward = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def unpack(mar: Path, dest: Path) -> Path:
    with zipfile.ZipFile(mar) as z:
        z.extractall(dest)
    return dest


def load_serving(model_dir: Path) -> Pipeline:
    """The pipeline exactly as a worker loads it (the archive's model-config.yaml)."""
    config = yaml.safe_load((model_dir / "model-config.yaml").read_text()) or {}
    return load_pipeline(model_dir, ServingConfig.model_validate(config.get("handler", {})))


def student_metadata(model_dir: Path) -> ModelMetadata:
    extra = {METADATA_FILE: ""}
    torch.jit.load(str(model_dir / "msde_student.pt"), map_location="cpu", _extra_files=extra)
    return ModelMetadata.from_json(extra[METADATA_FILE])


def _median_ms(fn: Callable[[], object], reps: int, warmup: int = 5) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def face_batch(pipeline: Pipeline, photos: Sequence[np.ndarray]) -> torch.Tensor:
    """Real face crops (THE preprocessing) of the photos' detected faces."""
    rows = [face_input(p, d, pipeline.spec) for p in photos for d in pipeline.detector.detect(p)]
    return torch.from_numpy(np.stack(rows))


def forward_variants(model: torch.jit.ScriptModule, metadata: ModelMetadata,
                     faces: torch.Tensor, reps: int) -> list[dict[str, Any]]:
    """Speed at batch 1 and 8 and agreement with the shipped student, per variant."""
    with torch.inference_mode():
        ref_e, ref_m = model(faces)
    variants: list[tuple[str, Callable[[], Forward]]] = [
        ("as shipped (TorchScript)", lambda: model),
        ("jit.freeze + optimize_for_inference",
         lambda: torch.jit.optimize_for_inference(torch.jit.freeze(model.eval()))),
        ("channels-last input", lambda: _channels_last(model)),
        ("int8 static (FX, fbgemm)", lambda: _int8(model, metadata, faces)),
    ]
    out = []
    for name, make in variants:
        row: dict[str, Any] = {"variant": name}
        try:
            fn = make()
            with torch.inference_mode():
                e, m = fn(faces)
                for batch in (1, 8):
                    x = faces[:batch].contiguous()
                    row[f"batch{batch}_ms"] = round(_median_ms(lambda: fn(x), reps), 3)
            row["expression_agreement"] = round(
                float((e.argmax(1) == ref_e.argmax(1)).float().mean()), 4)
            row["mask_agreement"] = round(float((m.argmax(1) == ref_m.argmax(1)).float().mean()), 4)
            row["max_abs_logit_diff"] = round(float((e - ref_e).abs().max()), 5)
        except Exception as exc:  # a variant that does not apply is a finding, not a crash
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
        out.append(row)
    return out


def _channels_last(model: torch.jit.ScriptModule) -> Forward:
    def run(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return model(x.contiguous(memory_format=torch.channels_last))

    return run


def _int8(model: torch.jit.ScriptModule, metadata: ModelMetadata, faces: torch.Tensor) -> Forward:
    """Post-training static int8 of the eager architecture, calibrated on the real crops."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    from training.models import create_student

    eager = create_student(metadata.architecture, in_channels=metadata.input_size[0]).eval()
    # the scripted module also holds the eager one's non-persistent buffers
    loaded = eager.load_state_dict(model.state_dict(), strict=False)
    if loaded.missing_keys:
        raise RuntimeError(f"weights missing from the scripted student: {loaded.missing_keys}")
    prepared = prepare_fx(eager, get_default_qconfig_mapping("fbgemm"), (faces[:1],))
    with torch.inference_mode():
        prepared(faces)
    return convert_fx(prepared)


def pipeline_stages(pipeline: Pipeline, payloads: Sequence[bytes], reps: int
                    ) -> dict[str, float]:
    """Median milliseconds per image of each stage, and of ``run`` for one image."""
    stages: dict[str, list[float]] = {k: [] for k in
                                      ("decode", "detect", "crop", "forward", "postprocess",
                                       "total")}
    for i in range(reps + 3):
        body = payloads[i % len(payloads)]
        timings = Timings()
        t0 = time.perf_counter()
        (outcome,) = pipeline.run([{"body": body}], timings)
        json.dumps(outcome.body)  # the handler's last step
        total = time.perf_counter() - t0
        if outcome.status != 200:
            raise RuntimeError(f"in-process pipeline answered {outcome.status}: {outcome.body}")
        if i < 3:  # warm-up
            continue
        stages["decode"].append(sum(timings.decode))
        stages["detect"].append(sum(timings.detect))
        stages["crop"].append(sum(timings.crop))
        stages["forward"].append(timings.forward)
        stages["postprocess"].append(timings.postprocess)
        stages["total"].append(total)
    return {k: round(1000 * statistics.median(v), 2) for k, v in stages.items()}
