"""Device placement: the GPU TorchServe assigns when there is one, the CPU otherwise.

No GPU is needed: the decision is a pure function of what TorchServe, torch and onnxruntime
report, and the handler is initialised with a fake TorchServe context.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from handler.device import CPU, CUDA_PROVIDER, placement_for, select_placement
from handler.msde_handler import DETECTOR_DIR, STUDENT_FILE, MsdeHandler
from testkit.context import FakeContext
from testkit.imaging import encode
from testkit.photos import astronaut
from training.assets import fetch

BOTH = [CUDA_PROVIDER, "CPUExecutionProvider"]


def test_cpu_when_torchserve_assigns_no_gpu() -> None:
    assert select_placement({"gpu_id": None}, cuda_available=True, ort_providers=BOTH) == CPU
    assert select_placement({}, cuda_available=True, ort_providers=BOTH) == CPU


def test_cpu_when_torch_has_no_cuda_even_with_a_gpu_id() -> None:
    assert select_placement({"gpu_id": 1}, cuda_available=False, ort_providers=BOTH) == CPU


def test_student_and_detector_on_the_assigned_gpu() -> None:
    placement = select_placement({"gpu_id": 1}, cuda_available=True, ort_providers=BOTH)
    assert placement.torch_device == "cuda:1"
    assert placement.detector_providers == (
        (CUDA_PROVIDER, {"device_id": 1}), "CPUExecutionProvider")


def test_detector_falls_back_to_cpu_without_the_cuda_provider() -> None:
    placement = select_placement({"gpu_id": "0"}, cuda_available=True,
                                 ort_providers=["CPUExecutionProvider"])
    assert placement.torch_device == "cuda:0"
    assert placement.detector_providers == ("CPUExecutionProvider",)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_student_pt: Path) -> Path:
    """An unpacked archive: the student and the detector weights, as TorchServe lays it out."""
    root = tmp_path_factory.mktemp("unpacked")
    shutil.copy2(tiny_student_pt, root / STUDENT_FILE)
    (root / DETECTOR_DIR).mkdir()
    for onnx in fetch("blazeface").rglob("*.onnx"):
        shutil.copy2(onnx, root / DETECTOR_DIR / onnx.name)
    return root


@pytest.mark.parametrize("gpu_id", [None, 0])
def test_handler_runs_where_placement_says(model_dir: Path, gpu_id: int | None) -> None:
    context = FakeContext(model_dir, gpu_id)
    handler = MsdeHandler()
    handler.initialize(context)
    expected = placement_for(context.system_properties)
    assert handler.pipeline is not None
    assert handler.pipeline.device == torch.device(expected.torch_device)
    params = list(handler.pipeline.model.parameters())  # type: ignore[union-attr]
    assert params and all(p.device == torch.device(expected.torch_device) for p in params)
    (answer,) = handler.handle([{"body": encode(np.ascontiguousarray(astronaut()))}], context)
    assert context.statuses == {}
    assert len(json.loads(answer)["faces"]) == 1
