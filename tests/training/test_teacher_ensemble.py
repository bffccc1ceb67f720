"""The ensemble teacher: label-free calibration and weights, and its one-input module."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import data
from torch import Tensor, nn

from handler.align import face_input
from handler.contract import CropSpec, InputSpec
from handler.faces import Detection
from training.teachers.ensemble import (
    EnsembleFit,
    EnsembleTeacher,
    ensemble_input_spec,
    fit_ensemble,
    fit_temperature,
    load_fit,
    member_window,
    save_fit,
    softmax,
    vote_weight,
)

GREY_64 = InputSpec(input_size=(1, 64, 64), mean=(0.5,), std=(0.5,),
                    crop=CropSpec(scale=1.2, shift_y=0.0))
RGB_112 = InputSpec(input_size=(3, 112, 112), mean=(0.4, 0.4, 0.4), std=(1.0, 1.0, 1.0),
                    crop=CropSpec(scale=1.0, shift_y=0.1))
GREY_48 = InputSpec(input_size=(1, 48, 48), mean=(0.0,), std=(1.0,),
                    crop=CropSpec(scale=1.4, shift_y=-0.05))
ASTRONAUT_FACE = Detection(box=(172.0, 75.0, 278.0, 181.0), score=1.0)


def test_vote_weight_is_zero_at_chance_and_grows_with_agreement() -> None:
    assert vote_weight(1 / 7) == pytest.approx(0.0, abs=1e-9)
    assert vote_weight(0.05) == 0.0
    assert 0 < vote_weight(0.3) < vote_weight(0.6) < vote_weight(0.9)
    assert vote_weight(0.5) == pytest.approx(math.log(6))


def test_fit_temperature_recovers_the_temperature_labels_were_drawn_with() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=4.0, size=(20000, 7))
    p = softmax(logits, 2.5)
    labels = (p.cumsum(1) > rng.random((len(p), 1))).argmax(1)  # one draw per row
    assert fit_temperature(logits, labels) == pytest.approx(2.5, rel=0.05)


def _synthetic_teachers(n: int = 600) -> tuple[dict[str, np.ndarray], np.ndarray]:
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 7, n)
    onehot = np.eye(7)[truth]

    def noisy(strength: float, scale: float) -> np.ndarray:
        return scale * (strength * onehot + rng.normal(size=(n, 7)))

    return {
        "good": noisy(2.5, 1.0),
        "overconfident": noisy(2.5, 6.0),  # as right as 'good', six times as sure
        "fair": noisy(1.5, 1.0),
        "random": rng.normal(size=(n, 7)),
    }, truth


def test_fit_ensemble_softens_the_overconfident_and_mutes_the_random_teacher() -> None:
    logits, truth = _synthetic_teachers()
    fit = fit_ensemble(logits, fitted_on="synthetic")
    by = dict(zip(fit.members, zip(fit.temperatures, fit.weights, fit.loo_agreement)))
    assert by["overconfident"][0] > 3 * by["good"][0]
    assert by["random"][1] < 0.05 < by["fair"][1] < by["good"][1]
    assert sum(fit.weights) == pytest.approx(1.0, abs=1e-3)
    ensemble = fit.probs(logits)
    assert (ensemble.argmax(1) == truth).mean() >= (logits["good"].argmax(1) == truth).mean()
    np.testing.assert_allclose(ensemble.sum(1), 1.0, atol=1e-9)


def test_fit_needs_three_teachers_for_leave_one_out() -> None:
    logits, _ = _synthetic_teachers(10)
    with pytest.raises(ValueError, match="at least 3"):
        fit_ensemble({k: logits[k] for k in ("good", "fair")}, fitted_on="x")


def test_saved_fit_is_refused_once_a_member_input_spec_changed(tmp_path: Path) -> None:
    fit = EnsembleFit(("a", "b", "c"), (1.0, 2.0, 0.5), (0.5, 0.3, 0.2), (0.8, 0.7, 0.6), 9, "x")
    specs = {"a": GREY_64, "b": RGB_112, "c": GREY_48}
    path = tmp_path / "ensemble.json"
    save_fit(fit, specs, path)
    assert load_fit(specs, path) == fit
    assert json.loads(path.read_text())["input_specs"]["b"]["input_size"] == [3, 112, 112]
    with pytest.raises(ValueError, match=r"\['c'\]"):
        load_fit({**specs, "c": GREY_64}, path)


def test_ensemble_input_holds_every_member_crop_without_upsampling() -> None:
    outer = ensemble_input_spec([GREY_64, RGB_112, GREY_48])
    assert outer.input_size[0] == 3 and outer.crop.shift_y == 0.0
    assert outer.crop.scale == pytest.approx(1.6)  # GREY_48: 1.4 + 2 * 0.05, + margin 0.1
    for spec in (GREY_64, RGB_112, GREY_48):
        top, left, side = member_window(outer, spec)
        assert side >= spec.input_size[1]
        assert top >= 0 and left >= 0 and top + side <= outer.input_size[1]
    top, _, side = member_window(outer, RGB_112)
    assert top + side / 2 > outer.input_size[1] / 2  # shifted down by 0.1 box


@pytest.mark.parametrize("member", [GREY_64, RGB_112, GREY_48])
def test_member_view_cut_from_the_ensemble_crop_matches_face_input(member: InputSpec) -> None:
    image = np.asarray(data.astronaut())
    outer = ensemble_input_spec([GREY_64, RGB_112, GREY_48])
    module = EnsembleTeacher([nn.Identity()] * 3, [GREY_64, RGB_112, GREY_48],
                             [1.0] * 3, [1 / 3] * 3)
    x = torch.from_numpy(face_input(image, ASTRONAUT_FACE, outer))[None]
    i = [GREY_64, RGB_112, GREY_48].index(member)
    view = module.view(x, i)[0].numpy()
    direct = face_input(image, ASTRONAUT_FACE, member)
    assert view.shape == direct.shape
    # two resamplings instead of one blur a little; no offset (in [0, 1] pixel units)
    std = np.asarray(member.std, np.float32)[:, None, None]
    assert np.abs((view - direct) * std).mean() < 0.025
    assert abs(((view - direct) * std).mean()) < 0.005


class _MeanLogits(nn.Module):
    """A stand-in member: logits from the view's channel means (depends on its input)."""

    def __init__(self, channels: int, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(channels, 7, generator=g) * 5)

    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=(2, 3)) @ self.w


def test_ensemble_module_returns_the_log_of_the_weighted_calibrated_mixture() -> None:
    specs = [GREY_64, RGB_112, GREY_48]
    members = [_MeanLogits(s.input_size[0], k) for k, s in enumerate(specs)]
    temps, weights = [0.5, 2.0, 1.0], [0.5, 0.2, 0.3]
    module = EnsembleTeacher(members, specs, temps, weights).eval()
    x = torch.rand(4, *module.outer.input_size)
    with torch.no_grad():
        logits = module(x)
        expected = sum(w * (m(module.view(x, i)) / t).softmax(-1)
                       for i, (m, t, w) in enumerate(zip(members, temps, weights)))
        torch.testing.assert_close(logits.softmax(-1), expected, atol=1e-6, rtol=0)
        torch.testing.assert_close(logits.exp().sum(-1), torch.ones(4), atol=1e-5, rtol=0)
        torch.testing.assert_close(module.classify(module.features(x)), logits)
        torch.testing.assert_close(torch.jit.script(module)(x), logits, atol=1e-6, rtol=0)
