"""The loss terms against hand computations on tiny batches."""

from __future__ import annotations

import math

import pytest
import torch

from training import losses


def test_cross_entropy_skips_unlabelled_samples() -> None:
    logits = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0], [7.0, -7.0]])
    labels = torch.tensor([0, 1, -1])
    # p(class 0 | row 0) = 3/4, p(class 1 | row 1) = 1/2; row 2 is ignored
    expected = (math.log(4 / 3) + math.log(2)) / 2
    assert losses.expression_ce(logits, labels).item() == pytest.approx(expected, abs=1e-6)


def test_cross_entropy_of_an_unlabelled_batch_is_an_attached_zero() -> None:
    logits = torch.randn(3, 7, requires_grad=True)
    loss = losses.expression_ce(logits, torch.full((3,), -1))
    assert loss.item() == 0.0
    loss.backward()
    assert logits.grad is not None and torch.count_nonzero(logits.grad) == 0


def test_mask_state_cross_entropy_matches_hand_value() -> None:
    mask_logits = torch.tensor([[0.0, math.log(4.0)], [0.0, 0.0]])
    # p(masked | row 0) = 4/5, p(unmasked | row 1) = 1/2
    expected = (math.log(5 / 4) + math.log(2)) / 2
    got = losses.mask_state_ce(mask_logits, torch.tensor([1, 0]))
    assert got.item() == pytest.approx(expected, abs=1e-6)


def test_paired_mse_uses_l2_normalised_embeddings() -> None:
    unmasked = torch.tensor([[3.0, 4.0], [2.0, 0.0]])
    masked = torch.tensor([[1.0, 0.0], [5.0, 0.0]])
    # (0.6, 0.8) vs (1, 0): squared error 0.16 + 0.64; second pair identical directions;
    # mean over 2 pairs x 2 dims
    assert losses.paired_embedding_mse(unmasked, masked).item() == pytest.approx(0.2, abs=1e-6)


def test_paired_mse_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        losses.paired_embedding_mse(torch.zeros(2, 3), torch.zeros(2, 4))


def _hand_supcon() -> float:
    # z0=(1,0) z1=(0.6,0.8) z2=(0,1) z3=(-1,0), groups [0, 0, 1, 1], temperature 0.5:
    # anchor -> (similarity/T to its positive, similarities/T to all others)
    e = math.exp
    anchors = [
        (1.2, [1.2, 0.0, -2.0]),
        (1.2, [1.2, 1.6, -1.2]),
        (0.0, [0.0, 1.6, 0.0]),
        (0.0, [-2.0, -1.2, 0.0]),
    ]
    return sum(-(pos - math.log(sum(e(s) for s in others))) for pos, others in anchors) / 4


def test_supcon_matches_hand_computation_on_four_samples() -> None:
    z = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-1.0, 0.0]])
    groups = torch.tensor([0, 0, 1, 1])
    got = losses.supervised_contrastive(z, groups, temperature=0.5)
    assert got.item() == pytest.approx(_hand_supcon(), abs=1e-5)
    # rows are normalised inside: scaling the embeddings changes nothing
    scaled = losses.supervised_contrastive(z * torch.tensor([[3.0], [0.5], [2.0], [9.0]]),
                                           groups, temperature=0.5)
    assert scaled.item() == pytest.approx(_hand_supcon(), abs=1e-5)


def test_supcon_averages_over_all_positives_of_an_anchor() -> None:
    # three rows of one class at (1,0) and one row of another class at (0,1), T = 1:
    # anchors 0..2 each have two positives with similarity 1 and one negative at 0
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    groups = torch.tensor([0, 0, 0, 1])
    per_anchor = -(1.0 - math.log(2 * math.e + 1.0))
    got = losses.supervised_contrastive(z, groups, temperature=1.0)
    assert got.item() == pytest.approx(per_anchor, abs=1e-5)  # anchor 3 has no positive


def test_supcon_groups_pair_unlabelled_faces_with_their_twin_only() -> None:
    labels = torch.tensor([2, -1, -1, 2, -1, -1])  # 3 pairs: [unmasked..., masked...]
    groups = losses.contrastive_groups(labels, num_classes=7)
    assert groups.tolist() == [2, 8, 9, 2, 8, 9]


def test_feature_mse_needs_equal_shapes_and_stops_teacher_gradients() -> None:
    student = torch.tensor([[1.0, 2.0]], requires_grad=True)
    teacher = torch.tensor([[0.0, 4.0]], requires_grad=True)
    loss = losses.feature_mse(student, teacher)
    assert loss.item() == pytest.approx((1.0 + 4.0) / 2)
    loss.backward()
    assert teacher.grad is None
    with pytest.raises(ValueError, match="projection"):
        losses.feature_mse(torch.zeros(1, 3), torch.zeros(1, 4))


def test_kl_distillation_uses_temperature_and_t_squared_scaling() -> None:
    student = torch.tensor([[0.0, 0.0]])
    teacher = torch.tensor([[math.log(3.0), 0.0]])
    for t in (1.0, 2.0):
        # teacher softened by t: p = 3^(1/t) / (3^(1/t) + 1); the student stays uniform
        p = 3 ** (1 / t) / (3 ** (1 / t) + 1)
        kl = p * math.log(p / 0.5) + (1 - p) * math.log((1 - p) / 0.5)
        got = losses.distillation_kl(student, teacher, temperature=t)
        assert got.item() == pytest.approx(t * t * kl, abs=1e-6)


def test_kl_distillation_is_zero_when_student_matches_teacher() -> None:
    logits = torch.randn(5, 7)
    assert losses.distillation_kl(logits, logits, 4.0).item() == pytest.approx(0.0, abs=1e-6)
