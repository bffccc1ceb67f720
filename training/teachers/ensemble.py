"""The ensemble teacher: the ported teachers' calibrated probabilities, weighted, on one input.

No labelled expression data is reachable offline, so calibration and weights are fitted
against the teachers themselves, on the unmasked faces of the pool's train group
(``training.teachers.report fit`` writes ``ensemble.json`` beside this module):

* leave-one-out (LOO) reference: for teacher i, the weighted mean of the OTHER teachers'
  calibrated probabilities;
* temperature T_i: temperature scaling with the LOO reference's top-1 answers as labels
  (the NLL of those answers under softmax(z_i / T_i) is minimised), so a teacher's
  confidence comes to match how often the others agree with it; the soft LOO mixture is not
  used as the target because a mixture of disagreeing teachers is flatter than any of them
  and would push every temperature up;
* weight w_i: the log-odds of teacher i's top-1 agreement a_i with its LOO reference,
  log(a_i (K - 1) / (1 - a_i)) with K = 7 classes, floored at 0 (a teacher at chance level
  gets no vote): the weight an independent voter of accuracy a_i earns in a symmetric-noise
  model, with a_i estimated without labels;
* the two steps alternate until they settle.

The ensemble's probabilities are sum_i w_i softmax(z_i / T_i); ``EnsembleTeacher`` returns
their log (logits whose softmax is that mixture), in msde order, from ONE input tensor: an
RGB crop wide enough to hold every member's crop, from which each member's own view (size,
scale, shift, grey or RGB, normalisation) is cut and resampled inside the module.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import minimize_scalar
from torch import Tensor, nn

from handler.contract import EXPRESSION_LABELS, CropSpec, InputSpec

FIT_PATH = Path(__file__).with_name("ensemble.json")
NUM_CLASSES = len(EXPRESSION_LABELS)
LUMA = (0.299, 0.587, 0.114)  # BT.601, as handler.align's grey conversion
TEMPERATURE_BOUNDS = (0.05, 20.0)
FIT_ROUNDS = 10
WINDOW_MARGIN = 0.1


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def mixture(probs: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """Weighted mean of probability arrays (weights need not sum to 1)."""
    total = float(sum(weights))
    if total <= 0:
        raise ValueError(f"weights {list(weights)} do not sum to a positive number")
    return sum(w * p for w, p in zip(weights, probs)) / total  # type: ignore[return-value]


def vote_weight(agreement: float, num_classes: int = NUM_CLASSES) -> float:
    """log(a (K-1) / (1-a)), floored at 0: the log-odds weight of a voter of accuracy a."""
    a = min(max(agreement, 1e-6), 1 - 1e-6)
    return max(math.log(a * (num_classes - 1) / (1 - a)), 0.0)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """T minimising the NLL of ``labels`` (class indices) under softmax(logits / T)."""
    rows = np.arange(len(labels))

    def loss(log_t: float) -> float:
        p = softmax(logits, math.exp(log_t))
        return float(-np.log(np.maximum(p[rows, labels], 1e-12)).mean())

    lo, hi = (math.log(b) for b in TEMPERATURE_BOUNDS)
    return float(math.exp(minimize_scalar(loss, bounds=(lo, hi), method="bounded").x))


@dataclass(frozen=True)
class EnsembleFit:
    """Fitted per-member calibration and weights, and the LOO agreement they came from."""

    members: tuple[str, ...]
    temperatures: tuple[float, ...]
    weights: tuple[float, ...]  # normalised to sum to 1
    loo_agreement: tuple[float, ...]
    faces: int
    fitted_on: str

    def probs(self, logits: Mapping[str, np.ndarray]) -> np.ndarray:
        return mixture([softmax(logits[m], t) for m, t in zip(self.members, self.temperatures)],
                       self.weights)


def loo_references(
    logits: Sequence[np.ndarray], temperatures: Sequence[float], weights: Sequence[float]
) -> list[np.ndarray]:
    """For each member, the weighted mixture of the others' calibrated probabilities."""
    probs = [softmax(z, t) for z, t in zip(logits, temperatures)]
    out = []
    for i in range(len(probs)):
        others = [j for j in range(len(probs)) if j != i]
        w = [weights[j] for j in others]
        if sum(w) <= 0:  # every other member has no vote yet: fall back to equal votes
            w = [1.0] * len(others)
        out.append(mixture([probs[j] for j in others], w))
    return out


def fit_ensemble(logits: Mapping[str, np.ndarray], fitted_on: str) -> EnsembleFit:
    """Alternate LOO temperatures and agreement weights (``FIT_ROUNDS`` rounds)."""
    members = tuple(logits)
    if len(members) < 3:
        raise ValueError("a leave-one-out fit needs at least 3 teachers")
    z = [np.asarray(logits[m], np.float64) for m in members]
    temperatures = [1.0] * len(z)
    weights = [1.0] * len(z)
    agreement = [0.0] * len(z)
    for _ in range(FIT_ROUNDS):
        refs = loo_references(z, temperatures, weights)
        temperatures = [fit_temperature(zi, r.argmax(1)) for zi, r in zip(z, refs)]
        agreement = [float((zi.argmax(1) == r.argmax(1)).mean()) for zi, r in zip(z, refs)]
        weights = [vote_weight(a) for a in agreement]
    total = sum(weights)
    return EnsembleFit(
        members=members,
        temperatures=tuple(round(t, 4) for t in temperatures),
        weights=tuple(round(w / total, 4) for w in weights),
        loo_agreement=tuple(round(a, 4) for a in agreement),
        faces=len(z[0]),
        fitted_on=fitted_on,
    )


def save_fit(fit: EnsembleFit, specs: Mapping[str, InputSpec], path: Path = FIT_PATH) -> None:
    """Write the fit with the member input specs it was fitted with (checked at load)."""
    record = {**asdict(fit), "input_specs": {m: specs[m].model_dump(mode="json")
                                             for m in fit.members}}
    path.write_text(json.dumps(record, indent=2) + "\n")


def load_fit(
    specs: Mapping[str, InputSpec], path: Path = FIT_PATH, *, check: bool = True
) -> EnsembleFit:
    """The saved fit; fails (``check``) if a member's input spec changed since it was fitted."""
    record = json.loads(Path(path).read_text())
    stale = [m for m in record["members"]
             if InputSpec.model_validate(record["input_specs"][m]) != specs.get(m)]
    if stale and check:
        raise ValueError(f"{path}: fitted with other input specs for {stale}; refit with "
                         "python -m training.teachers.report fit")
    record.pop("input_specs")
    return EnsembleFit(**{k: tuple(v) if isinstance(v, list) else v for k, v in record.items()})


# ------------------------------------------------------------------ one input for all members


def ensemble_input_spec(specs: Sequence[InputSpec]) -> InputSpec:
    """An RGB crop holding every member's crop, at a resolution none of them upsamples.

    Crops are squares of side ``box side * scale`` shifted by ``shift_y`` box heights; the
    ensemble crop is centred (shift 0) with a scale covering every member's square plus
    ``WINDOW_MARGIN`` box sides (room for the windows' sub-pixel placement).
    """
    rotations = {s.crop.rotate for s in specs}
    if len(rotations) != 1:
        raise ValueError("members disagree on levelling the eyes (CropSpec.rotate)")
    scale = max(s.crop.scale + 2 * abs(s.crop.shift_y) for s in specs) + WINDOW_MARGIN
    side = max(s.input_size[1] * scale / s.crop.scale for s in specs)
    size = int(math.ceil(side / 8.0) * 8)
    return InputSpec(input_size=(3, size, size), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                     crop=CropSpec(scale=round(scale, 4), shift_y=0.0, rotate=rotations.pop()))


def member_window(outer: InputSpec, member: InputSpec) -> list[int]:
    """[top, left, side] in pixels of the ensemble input holding ``member``'s crop.

    Assumes square detector boxes (BlazeFace's are), so box height = box side. The window
    is placed so that resizing it to the member's size (``align_corners=False``) samples the
    image where ``handler.align`` would: that module maps the box centre to pixel index
    size/2 at every size, so a window shrunk k-fold starts (k - 1)/2 pixels higher and more
    to the left than the naive square.
    """
    size, n = outer.input_size[1], member.input_size[1]
    px_per_box = size / outer.crop.scale
    side = round(member.crop.scale * px_per_box)
    offset = 0.5 - 0.5 * side / n
    top = round(size / 2 + member.crop.shift_y * px_per_box - side / 2 + offset)
    left = round(size / 2 - side / 2 + offset)
    if top < 0 or left < 0 or top + side > size:
        raise ValueError(f"member crop {member.crop} does not fit in {outer.crop}")
    return [top, left, side]


class EnsembleTeacher(nn.Module):
    """Members' calibrated probabilities mixed with fixed weights, from one RGB crop.

    ``features(x)`` are the members' calibrated log-probabilities ([N, K*7, 1, 1], msde
    order), ``classify`` mixes them into logits (log of the mixture). Each member module
    must return msde-ordered logits (``MsdeOrderTeacher``).
    """

    def __init__(
        self, members: Sequence[nn.Module], specs: Sequence[InputSpec],
        temperatures: Sequence[float], weights: Sequence[float],
    ) -> None:
        super().__init__()
        self.outer = ensemble_input_spec(specs)
        self.members = nn.ModuleList(members)
        self.windows: list[list[int]] = [member_window(self.outer, s) for s in specs]
        self.sizes: list[int] = [s.input_size[1] for s in specs]
        self.grey: list[bool] = [s.input_size[0] == 1 for s in specs]
        self.means: list[list[float]] = [list(s.mean) for s in specs]
        self.stds: list[list[float]] = [list(s.std) for s in specs]
        self.register_buffer("temperatures", torch.tensor(list(temperatures)), persistent=False)
        self.register_buffer("log_weights", torch.tensor(list(weights)).log(), persistent=False)
        self.register_buffer("luma", torch.tensor(LUMA).view(1, 3, 1, 1), persistent=False)

    def view(self, x: Tensor, i: int) -> Tensor:
        """Member ``i``'s input cut out of the ensemble crop (RGB on [0, 1])."""
        top, left, side = self.windows[i][0], self.windows[i][1], self.windows[i][2]
        v = x[:, :, top:top + side, left:left + side]
        size = self.sizes[i]
        if side != size:
            v = F.interpolate(v, size=[size, size], mode="bilinear", align_corners=False,
                              antialias=True)
        if self.grey[i]:
            v = (v * self.luma).sum(dim=1, keepdim=True)
        mean = torch.tensor(self.means[i], dtype=v.dtype, device=v.device).view(1, -1, 1, 1)
        std = torch.tensor(self.stds[i], dtype=v.dtype, device=v.device).view(1, -1, 1, 1)
        return (v - mean) / std

    def features(self, x: Tensor) -> Tensor:
        out: list[Tensor] = []
        for i, member in enumerate(self.members):
            out.append(F.log_softmax(member(self.view(x, i)) / self.temperatures[i], dim=-1))
        return torch.cat(out, dim=1)[:, :, None, None]

    def classify(self, feats: Tensor) -> Tensor:
        logp = feats.flatten(1).view(feats.shape[0], len(self.windows), -1)
        return torch.logsumexp(logp + self.log_weights.view(1, -1, 1), dim=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.classify(self.features(x))
