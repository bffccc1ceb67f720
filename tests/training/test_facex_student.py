"""The facex_mobilenetv2 student starts from the facex teacher (the registry tests cover the
Student contract: heads, embedding, scripting, Grad-CAM layer)."""

from __future__ import annotations

import pytest
import torch

from training.models import create_student, default_input_spec, load_pretrained
from training.teachers.facex_mobilenet import (
    FACEX_INPUT_SPEC,
    default_tflite_path,
    load_facex_teacher,
    to_msde_order,
)


@pytest.fixture(scope="module")
def student() -> torch.nn.Module:
    return create_student("facex_mobilenetv2", pretrained=default_tflite_path()).eval()


def test_facex_student_at_the_teachers_size_predicts_exactly_like_the_teacher(
    student: torch.nn.Module,
) -> None:
    teacher = load_facex_teacher()
    x = torch.rand(2, *FACEX_INPUT_SPEC.input_size)
    with torch.no_grad():
        torch.testing.assert_close(student(x)[0], to_msde_order(teacher(x)), atol=1e-4, rtol=0)


def test_facex_student_runs_at_its_reduced_input_size(student: torch.nn.Module) -> None:
    spec = default_input_spec("facex_mobilenetv2")
    assert spec.input_size[1] < FACEX_INPUT_SPEC.input_size[1]
    assert (spec.mean, spec.std, spec.crop) == (
        FACEX_INPUT_SPEC.mean, FACEX_INPUT_SPEC.std, FACEX_INPUT_SPEC.crop)
    expression, mask = student(torch.rand(3, *spec.input_size))
    assert expression.shape == (3, 7) and mask.shape == (3, 2)
    assert torch.isfinite(expression).all()


def test_tflite_weights_only_load_into_the_facex_student() -> None:
    other = create_student("mini_xception")
    with pytest.raises(ValueError, match="only facex_mobilenetv2"):
        load_pretrained(other, default_tflite_path())
