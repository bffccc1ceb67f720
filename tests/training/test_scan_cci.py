"""SCAN-CCI: shapes, attention normalised where the paper normalises, loss, export, paradigms."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from training.export import export_student, metadata_for_checkpoint, script_module
from training.models import (
    ScanCciStudent,
    create_student,
    default_input_spec,
    student_from_checkpoint,
)
from training.scan_cci import (
    EfficientChannelAttention,
    SpatioChannelAttention,
    grid_cells,
    grid_edges,
)
from training.train import TrainNet


def _student(seed: int = 0) -> ScanCciStudent:
    torch.manual_seed(seed)
    student = create_student("scan_cci_narrow")
    assert isinstance(student, ScanCciStudent)
    return student


def _faces(n: int = 3, size: int = 64) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def test_branches_are_scan_then_four_regions_and_the_prediction_is_their_mean() -> None:
    student = _student()
    x = _faces()
    branches, mask, emb = student.forward_branches(x)
    assert branches.shape == (3, 5, 7) and mask.shape == (3, 2) and emb.shape == (3, 64)
    expr, mask_all, emb_all = student.forward_all(x)
    torch.testing.assert_close(expr, branches.mean(dim=1))
    torch.testing.assert_close(mask_all, mask)
    torch.testing.assert_close(emb_all, emb)
    # the embedding is the pooled ECA-weighted layer3 map (what embed() and Grad-CAM use)
    torch.testing.assert_close(student.embed(x), emb)


def test_every_branch_trains_the_trunk_and_its_own_weights() -> None:
    student = _student().train()
    branches, mask, emb = student.forward_branches(_faces())
    labels = torch.tensor([0, 3, 6])
    (student.branch_loss(branches, labels, 0.0) + mask.sum() + emb.pow(2).mean()).backward()
    # (residual branches start as identity: their last BN is zero-initialised, so the
    # downsample convs and those BN weights are what a first step moves in layers 2-3)
    for name in ("conv1.weight", "layer2.0.downsample.0.weight", "layer3.0.bn2.weight",
                 "scan.local_attention.0.conv.weight", "scan.local_attention.15.conv.weight",
                 "scan.global_attention.conv.weight", "scan.fc.weight", "cci.eca.conv.weight",
                 "cci.classifier.0.weight", "mask_head.weight"):
        grad = student.get_parameter(name).grad
        assert grad is not None and float(grad.abs().sum()) > 0, name


def test_branch_loss_weighs_scan_0_2_and_each_region_0_8() -> None:
    branches = torch.randn(4, 5, 7, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([1, 2, -1, 4])  # -1: unlabelled, skipped as everywhere
    labelled = labels >= 0
    expected = 0.2 * F.cross_entropy(branches[labelled, 0], labels[labelled]) + 0.8 * sum(
        F.cross_entropy(branches[labelled, b], labels[labelled]) for b in range(1, 5)
    )
    loss = _student().branch_loss(branches, labels, 0.0)
    torch.testing.assert_close(loss, expected)


def test_training_supervises_each_branch_not_the_averaged_logits() -> None:
    net = TrainNet(_student(), None)
    expr, _, _, _, branches = net(_faces())
    labels = torch.tensor([0, 1, 2])
    torch.testing.assert_close(expr, branches.mean(dim=1))
    torch.testing.assert_close(net.expression_loss(branches, labels, 0.0),
                               net.student.branch_loss(branches, labels, 0.0))
    assert not torch.allclose(net.expression_loss(branches, labels, 0.0),
                              F.cross_entropy(expr, labels))
    # a single-head student keeps the plain cross-entropy of its logits
    plain = TrainNet(create_student("resnet18_narrow"), None)
    expr, _, _, _, branches = plain(_faces())
    assert branches.shape == (3, 1, 7)
    torch.testing.assert_close(plain.expression_loss(branches, labels, 0.1),
                               F.cross_entropy(expr, labels, label_smoothing=0.1))


@pytest.mark.parametrize(("size", "parts", "edges"), [
    (28, 5, [0, 5, 11, 16, 22, 28]), (8, 4, [0, 2, 4, 6, 8]), (7, 2, [0, 3, 7]),
])
def test_grid_cells_cover_the_map_once_without_overlap(size: int, parts: int,
                                                       edges: list[int]) -> None:
    assert grid_edges(size, parts) == edges
    fmap = torch.arange(2 * size * size, dtype=torch.float32).reshape(1, 2, size, size)
    cells = grid_cells(fmap, parts)
    assert len(cells) == parts * parts
    values = torch.cat([c.flatten(2) for c in cells], dim=2)
    assert values.shape[2] == size * size
    assert torch.equal(values.sort(dim=2).values, fmap.flatten(2))
    with pytest.raises(ValueError, match="cannot cut"):
        grid_edges(3, 4)


def test_spatio_channel_attention_gives_one_weight_in_0_1_per_channel_and_location() -> None:
    torch.manual_seed(3)
    attention = SpatioChannelAttention(8).train()
    x = torch.randn(4, 8, 5, 5)
    with torch.no_grad():
        w = attention(x)
    assert w.shape == x.shape
    assert float(w.min()) > 0.0 and float(w.max()) < 1.0
    # not factorised: the weights vary across locations within a channel and across channels
    assert float(w.std(dim=(2, 3)).min()) > 0.0 and float(w.std(dim=1).min()) > 0.0


def test_scan_features_are_l2_normalised_and_each_patch_is_attended_alone() -> None:
    student = _student().eval()
    scan = student.scan
    mid = torch.randn(2, 32, 8, 8, generator=torch.Generator().manual_seed(4))
    feats = scan.features(mid)
    assert feats.shape == (2, 64)
    torch.testing.assert_close(feats.norm(dim=1), torch.ones(2))
    # patch (0, 0) is the top-left 2x2 cell; its attended pooling sees nothing outside it
    cell = mid[:, :, :2, :2]
    pooled = (cell * scan.local_attention[0](cell)).mean(dim=(2, 3))
    changed = mid.clone()
    changed[:, :, 2:, :] += 5.0
    cell_again = changed[:, :, :2, :2]
    torch.testing.assert_close(
        (cell_again * scan.local_attention[0](cell_again)).mean(dim=(2, 3)), pooled
    )


def test_eca_weights_each_channel_once_in_0_1_the_same_at_every_location() -> None:
    torch.manual_seed(5)
    eca = EfficientChannelAttention(64)
    assert eca.conv.kernel_size == (3,)  # |(log2 64 + 1) / 2|_odd = 3
    assert EfficientChannelAttention(256).conv.kernel_size == (5,)
    x = torch.rand(2, 64, 4, 4) + 0.1
    with torch.no_grad():
        w = eca.weights(x)
        ratio = eca(x) / x
    assert w.shape == (2, 64, 1, 1)
    assert float(w.min()) > 0.0 and float(w.max()) < 1.0
    torch.testing.assert_close(ratio, w.expand_as(x))


def test_export_scripts_with_parity_and_the_model_card(tmp_path: Path) -> None:
    student = _student(6).eval()
    scripted, how = script_module(student, _faces(1))
    assert how == "script"
    spec = default_input_spec("scan_cci_narrow")
    ckpt = {"student": "scan_cci_narrow", "epoch": 3,
            "config": {"paradigm": "baseline", "data": {"layout": "synthetic", "seed": 0}}}
    meta = metadata_for_checkpoint(ckpt, spec, version="1.0.0", trained_on=None,
                                   calibration=None)
    diffs = export_student(student, meta, tmp_path / "scan.pt")
    assert diffs and max(diffs.values()) <= 1e-5
    loaded = torch.jit.load(str(tmp_path / "scan.pt"))
    x = _faces(2)
    with torch.no_grad():
        for a, b in zip(student(x), loaded(x), strict=True):
            torch.testing.assert_close(b, a, atol=1e-5, rtol=0)
        torch.testing.assert_close(loaded.embed(x), student.embed(x), atol=1e-5, rtol=0)


def test_served_grad_cam_is_the_full_predictions_grad_cam() -> None:
    from handler.explain import grad_cam

    student = _student(7).eval()
    x, targets = _faces(2), [3, 5]
    scripted = torch.jit.script(student)
    served = grad_cam(scripted, x, targets)
    # by hand: the gradient of the averaged five-branch prediction w.r.t. the ECA-weighted map
    with torch.no_grad():
        mid = student._mid(x)
        scan_logits = student.scan(mid)
    deep = student.cci.eca(student.layer3(mid)).detach().requires_grad_(True)
    full = torch.cat([scan_logits.unsqueeze(1), student.cci.region_logits(deep)], 1).mean(1)
    (grads,) = torch.autograd.grad(full[[0, 1], targets].sum(), deep)
    by_hand = torch.relu((grads.mean(dim=(2, 3), keepdim=True) * deep.detach()).sum(dim=1))
    assert float(by_hand.amax()) > 0
    torch.testing.assert_close(torch.from_numpy(served), by_hand, rtol=1e-4, atol=1e-9)
    served_again = grad_cam(scripted, x, targets)  # the optimised second call answers the same
    torch.testing.assert_close(torch.from_numpy(served_again), by_hand, rtol=1e-4, atol=1e-9)


def test_full_width_scan_cci_keeps_torchvision_trunk_names() -> None:
    student = create_student("scan_cci")
    names = dict(student.named_parameters())
    assert names["conv1.weight"].shape == (64, 3, 7, 7)
    assert names["layer3.1.conv2.weight"].shape == (256, 256, 3, 3)
    assert not any(n.startswith("layer4") for n in names)
    assert default_input_spec("scan_cci").input_size == (3, 112, 112)
    with torch.no_grad():
        expr, mask = student.eval()(torch.randn(1, 3, 112, 112))  # 14x14 map: uneven patches
    assert expr.shape == (1, 7) and mask.shape == (1, 2)


def test_scan_cci_trains_with_every_paradigm_and_as_a_teacher(tmp_path: Path) -> None:
    from training.config import TrainConfig
    from training.data import DataConfig, load_records
    from training.evaluate.run import evaluate_model
    from training.train import train

    data = DataConfig(layout="synthetic", n_subjects=6, images_per_subject=7, image_size=48)
    records = load_records(data)

    def run(name: str, **overrides: object) -> Path:
        fields: dict[str, object] = dict(
            student="scan_cci_narrow", input_size=32, data=data, epochs=1, batch_size=8,
            num_workers=0, threads=1, device="cpu", val_fraction=0.2, test_fraction=0.2,
            out_dir=tmp_path / name, progress=False, limit_train_batches=2,
        )
        return train(TrainConfig.model_validate(fields | overrides), records).best_path

    teacher = run("baseline")
    run("contrastive", paradigm="contrastive", supcon=True)
    student_run = run("distill", paradigm="distill", teacher=str(teacher), kd="both")
    # as a teacher of another architecture
    run("taught", paradigm="distill", teacher=str(teacher), student="resnet18_narrow")

    student, spec, ckpt = student_from_checkpoint(student_run)
    assert ckpt["student"] == "scan_cci_narrow" and spec.input_size == (3, 32, 32)
    from training.data import PairedFaceDataset

    result = evaluate_model(student, PairedFaceDataset(records[:8], spec), "cpu", cam_samples=1)
    assert set(result.metrics) == {"unmasked", "masked", "all"}
    assert 0.0 <= result.metrics["masked"].accuracy <= 1.0
    assert {c.view for c in result.cams} == {"unmasked", "masked"}  # Grad-CAM on the ECA map
