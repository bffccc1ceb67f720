"""Loss terms of the three training paradigms, as pure functions of tensors.

Kept apart from the training loop so each term can be checked against a hand computation
(``tests/training/test_losses.py``) and reused by the benchmark. Conventions:

* expression labels use the msde order 0..6; ``-1`` marks an unlabelled sample, which the
  cross-entropy terms skip (the distillation terms still use it);
* mask-state labels are 0 = unmasked, 1 = masked (``handler.contract.MASK_LABELS``);
* every loss is a scalar that stays attached to the graph, even when nothing in the batch
  contributes (it is then an exact zero), so DDP always sees the same parameters in use.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

UNLABELLED = -1


def expression_ce(logits: Tensor, labels: Tensor, *, label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy over the labelled samples only (label ``-1`` is skipped).

    Mean over labelled samples; an exact (graph-attached) zero when none is labelled, where
    ``F.cross_entropy`` would return NaN.
    """
    labelled = labels != UNLABELLED
    if not bool(labelled.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(
        logits[labelled], labels[labelled], label_smoothing=label_smoothing
    )


def mask_state_ce(mask_logits: Tensor, mask_labels: Tensor) -> Tensor:
    """Cross-entropy of the mask head (0 = unmasked view, 1 = masked view)."""
    return F.cross_entropy(mask_logits, mask_labels)


def paired_embedding_mse(unmasked: Tensor, masked: Tensor) -> Tensor:
    """The paper's Siamese term: MSE between the L2-normalised embeddings of a pair.

    ``F.mse_loss`` semantics (mean over batch *and* feature dimensions), i.e.
    ``mean_i (2 - 2 cos(u_i, m_i)) / D``; the weight ``alpha`` in the config absorbs the
    ``1 / D``. Pulls a masked face's embedding onto its unmasked twin's.
    """
    if unmasked.shape != masked.shape:
        raise ValueError(f"pair embeddings differ in shape: {unmasked.shape} vs {masked.shape}")
    return F.mse_loss(F.normalize(unmasked, dim=1), F.normalize(masked, dim=1))


def supervised_contrastive(
    embeddings: Tensor, groups: Tensor, *, temperature: float = 0.1
) -> Tensor:
    """Supervised contrastive loss (Khosla et al. 2020, the L_out form) on L2-normalised rows.

    ``groups[i]`` says which rows are positives of each other (same expression class, or a
    pair id for unlabelled samples so only the twin counts). For each anchor ``i`` with at
    least one positive: ``-1/|P(i)| * sum_{p in P(i)} log(exp(s_ip/t) / sum_{a != i} exp(s_ia/t))``
    with ``s`` the cosine similarity; averaged over anchors that have positives. Compared to
    the pairwise MSE it also pushes different expressions apart, which is why we offer it.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    n = embeddings.shape[0]
    z = F.normalize(embeddings, dim=1)
    sim = z @ z.t() / temperature
    self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
    # log-softmax over all other rows (the anchor itself is excluded from the denominator)
    sim = sim.masked_fill(self_mask, float("-inf"))
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    positives = (groups[:, None] == groups[None, :]) & ~self_mask
    n_pos = positives.sum(dim=1)
    has_pos = n_pos > 0
    if not bool(has_pos.any()):
        return embeddings.sum() * 0.0
    pos_log_prob = log_prob.masked_fill(~positives, 0.0).sum(dim=1)
    per_anchor = -pos_log_prob[has_pos] / n_pos[has_pos].to(log_prob.dtype)
    return per_anchor.mean()


def contrastive_groups(labels: Tensor, num_classes: int) -> Tensor:
    """Group ids for SupCon on a ``cat([unmasked, masked])`` batch of ``N`` pairs.

    ``labels`` has length ``2N`` (the pair's label twice). Labelled rows group by class;
    an unlabelled pair gets its own id ``num_classes + pair index`` so its twin is its only
    positive.
    """
    n2 = labels.shape[0]
    if n2 % 2:
        raise ValueError("expected a batch of pairs (even length)")
    pair = torch.arange(n2, device=labels.device) % (n2 // 2)
    return torch.where(labels == UNLABELLED, num_classes + pair, labels)


def feature_mse(student_features: Tensor, teacher_features: Tensor) -> Tensor:
    """Feature distillation: plain MSE between (projected) student and teacher features.

    The paper weights it with lambda = 100; with mean-over-elements semantics that weight
    is what makes the term matter next to the cross-entropy.
    """
    if student_features.shape != teacher_features.shape:
        raise ValueError(
            f"feature shapes differ: student {tuple(student_features.shape)} vs teacher "
            f"{tuple(teacher_features.shape)} (a projection is needed)"
        )
    return F.mse_loss(student_features, teacher_features.detach())


def distillation_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Hinton knowledge distillation: ``T^2 * KL(softmax(t/T) || softmax(s/T))``, batch mean.

    The ``T^2`` factor keeps the gradient scale independent of ``T`` (Hinton et al. 2015).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    log_p_student = F.log_softmax(student_logits / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.detach() / temperature, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * temperature**2
