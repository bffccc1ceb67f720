"""Where a worker runs the student and the detector: the GPU TorchServe assigned, else the CPU.

TorchServe gives each worker a ``gpu_id`` in ``context.system_properties`` when the server
has GPUs (``number_of_gpu`` in config.properties), ``None`` otherwise. The student goes to
``cuda:<gpu_id>`` when torch sees CUDA; the detector asks onnxruntime for its CUDA provider
on the same GPU when that provider is installed (the ``onnxruntime-gpu`` wheel), with the
CPU provider after it as onnxruntime's own fallback. Anything missing means the CPU, which
stays the default.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from handler.detect import CPU_PROVIDERS, Provider

CUDA_PROVIDER = "CUDAExecutionProvider"


@dataclass(frozen=True)
class Placement:
    torch_device: str  # "cpu" or "cuda:<n>"
    detector_providers: tuple[Provider, ...]


CPU = Placement("cpu", CPU_PROVIDERS)


def select_placement(
    system_properties: Mapping[str, Any],
    *,
    cuda_available: bool,
    ort_providers: Sequence[str],
) -> Placement:
    """Pure decision, so it is tested without a GPU (the inputs are what torch, onnxruntime
    and TorchServe report)."""
    gpu_id = system_properties.get("gpu_id")
    if gpu_id is None or not cuda_available:
        return CPU
    gpu = int(gpu_id)
    providers: tuple[Provider, ...] = CPU_PROVIDERS
    if CUDA_PROVIDER in ort_providers:
        providers = ((CUDA_PROVIDER, {"device_id": gpu}), *CPU_PROVIDERS)
    return Placement(f"cuda:{gpu}", providers)


def placement_for(system_properties: Mapping[str, Any]) -> Placement:
    """What this worker will use, from what torch and onnxruntime see on this machine."""
    import onnxruntime
    import torch

    return select_placement(
        system_properties,
        cuda_available=torch.cuda.is_available(),
        ort_providers=onnxruntime.get_available_providers(),
    )
