"""Every student honours the contract: two heads, an embedding, scriptable, loadable."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from training.models import (
    STUDENTS,
    cam_target_layer,
    create_student,
    default_input_spec,
    student_from_checkpoint,
)


def _batch(name: str, n: int = 2) -> torch.Tensor:
    c, h, w = default_input_spec(name).input_size
    return torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", STUDENTS)
def test_student_forward_backward_and_script(name: str) -> None:
    torch.manual_seed(0)
    student = create_student(name)
    x = _batch(name)
    expr, mask, emb = student.forward_all(x)
    assert expr.shape == (2, 7) and mask.shape == (2, 2) and emb.shape == (2, student.embed_dim)
    (expr.logsumexp(1).sum() + mask.sum() + emb.pow(2).mean()).backward()
    grads = [p.grad for p in student.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)
    assert any(float(g.abs().sum()) > 0 for g in grads if g is not None)

    student.eval()
    scripted = torch.jit.script(student)
    with torch.no_grad():
        eager_expr, eager_mask = student(x)
        s_expr, s_mask = scripted(x)
        torch.testing.assert_close(s_expr, eager_expr, atol=1e-5, rtol=0)
        torch.testing.assert_close(s_mask, eager_mask, atol=1e-5, rtol=0)
        torch.testing.assert_close(scripted.embed(x), student.embed(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", STUDENTS)
def test_cam_layer_outputs_the_embedding_feature_map(name: str) -> None:
    student = create_student(name).eval()
    seen: list[torch.Tensor] = []
    handle = cam_target_layer(student).register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        emb = student.embed(_batch(name))
    handle.remove()
    assert seen and seen[-1].dim() == 4
    torch.testing.assert_close(seen[-1].mean(dim=(2, 3)), emb)


@pytest.mark.parametrize("name", STUDENTS)
def test_stages_in_order_are_the_feature_map(name: str) -> None:
    student = create_student(name).eval()
    try:
        stages = student.stages()
    except NotImplementedError:
        pytest.skip(f"{name} does not list its stages (it cannot be frozen stage by stage)")
    own = {id(p) for p in student.parameters()}
    assert all(id(p) in own for s in stages for p in s.parameters())  # shared, not copies
    x = _batch(name)
    with torch.no_grad():
        y = x
        for stage in stages:
            y = stage(y)
        torch.testing.assert_close(y, student.feature_map(x), atol=0, rtol=0)


def test_pretrained_fer_is_the_teacher_s_weights_for_mini_xception_only() -> None:
    from training.teachers.fer_xception import load_fer_teacher

    student = create_student("mini_xception", pretrained="fer")
    teacher = load_fer_teacher()
    torch.testing.assert_close(student.net.classifier.weight, teacher.classifier.weight)
    with pytest.raises(ValueError, match="mini_xception"):
        create_student("resnet18_narrow", pretrained="fer")


def test_unknown_student_is_rejected_with_the_known_names() -> None:
    with pytest.raises(ValueError, match="resnet18"):
        create_student("vgg_mystery")


def test_mini_xception_from_fer_weights_predicts_like_the_teacher() -> None:
    from training.teachers.fer_xception import default_hdf5_path, load_fer_teacher, to_msde_order

    hdf5 = default_hdf5_path()
    student = create_student("mini_xception", pretrained=hdf5).eval()
    teacher = load_fer_teacher(hdf5)
    x = _batch("mini_xception", 3)
    with torch.no_grad():
        torch.testing.assert_close(student(x)[0], to_msde_order(teacher(x)), atol=1e-5, rtol=0)
    assert default_input_spec("mini_xception").input_size == (1, 64, 64)


def test_resnet18_loads_a_torchvision_state_dict_from_disk(tmp_path: Path) -> None:
    torch.manual_seed(1)
    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "imagenet_like.pth"
    torch.save(reference.state_dict(), path)
    student = create_student("resnet18", pretrained=path)
    torch.testing.assert_close(student.conv1.weight, reference.conv1.weight)
    torch.testing.assert_close(student.layer4[1].bn2.weight, reference.layer4[1].bn2.weight)
    assert student.fc.weight.shape == (7, 512)  # torchvision's 1000-class fc is skipped


def test_pretrained_file_that_matches_nothing_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    torch.save({"unrelated.weight": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match="no tensor"):
        create_student("resnet18_narrow", pretrained=path)


def test_checkpoint_round_trip_rebuilds_the_same_student(tmp_path: Path) -> None:
    torch.manual_seed(2)
    student = create_student("resnet18_narrow").eval()
    spec = default_input_spec("resnet18_narrow")
    path = tmp_path / "best.pth"
    torch.save({"model": student.state_dict(), "student": "resnet18_narrow",
                "input_spec": spec.model_dump(mode="json"), "config": {}, "epoch": 1}, path)
    rebuilt, rebuilt_spec, ckpt = student_from_checkpoint(path)
    x = _batch("resnet18_narrow")
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x)[0], student(x)[0])
    assert rebuilt_spec == spec and ckpt["epoch"] == 1
