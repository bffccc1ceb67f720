"""A tiny random-weight TorchScript student with the real contract, for plumbing only.

Tests use it where the model's answers do not matter (decoding, batching, overload, faults);
benchmarks use it to measure the service's overhead apart from the model's.
"""

from __future__ import annotations

from pathlib import Path

import torch

from handler.contract import ModelMetadata


class TinyStudent(torch.nn.Module):
    """Smallest network with the student contract, for plumbing tests only."""

    def __init__(self, channels: int = 1) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(channels, 8, 3, stride=2, padding=1)
        self.expression = torch.nn.Linear(8, 7)
        self.mask = torch.nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = torch.relu(self.conv(x)).mean(dim=(2, 3))
        return self.expression(f), self.mask(f)


def tiny_metadata(**overrides: object) -> ModelMetadata:
    fields: dict[str, object] = dict(
        version="0.0.1-test",
        architecture="tiny-test",
        input_size=(1, 32, 32),
        mean=[0.5],
        std=[0.5],
        trained_on="nothing: random weights for plumbing tests",
    )
    fields.update(overrides)
    return ModelMetadata(**fields)  # type: ignore[arg-type]


def save_tiny_student(path: Path, metadata: ModelMetadata | None = None) -> Path:
    torch.manual_seed(0)
    meta = metadata or tiny_metadata()
    model = torch.jit.script(TinyStudent(meta.input_size[0]).eval())
    torch.jit.save(model, str(path), _extra_files={"metadata.json": meta.to_json()})
    return path


def build_test_student(workdir: Path) -> Path:
    """The student of the plumbing servers (overload, faults, bench/load.py)."""
    workdir.mkdir(parents=True, exist_ok=True)
    return save_tiny_student(workdir / "student.pt", tiny_metadata(input_size=(1, 64, 64)))
