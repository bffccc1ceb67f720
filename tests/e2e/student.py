"""A tiny random-weight student for servers that only test plumbing (overload, faults)."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import save_tiny_student, tiny_metadata


def build_test_student(workdir: Path) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    return save_tiny_student(workdir / "student.pt", tiny_metadata(input_size=(1, 64, 64)))
