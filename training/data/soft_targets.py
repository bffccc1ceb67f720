"""Labelling faces with teachers: soft targets on the unmasked face, the top class as label.

Where no human labelled the faces (the face pool), the teachers' answer on the *unmasked*
face is the target the student learns to give on the masked one. Each teacher sees its own
input (``TEACHERS[name].input_spec`` through ``handler.align.face_input``); their
probabilities are averaged, so an ensemble of teachers plugs in as a list of names.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch

from handler.align import face_input
from handler.contract import EXPRESSION_LABELS
from handler.postprocess import softmax
from training.data.images import load_rgb
from training.data.records import FaceRecord

LOG = logging.getLogger(__name__)


@torch.inference_mode()
def teacher_probabilities(
    records: Sequence[FaceRecord], teachers: Sequence[str], batch_size: int = 128
) -> np.ndarray:
    """(N, 7) mean probability of ``teachers`` on each record's unmasked face, msde order."""
    from training.teachers import TEACHERS, load_teacher

    nets = {name: load_teacher(name) for name in teachers}
    probs = np.zeros((len(records), len(EXPRESSION_LABELS)))
    for start in range(0, len(records), batch_size):
        chunk = records[start:start + batch_size]
        images = [load_rgb(r) for r in chunk]
        for name, net in nets.items():
            spec = TEACHERS[name].input_spec
            x = np.stack([face_input(im, r.detection, spec)
                          for im, r in zip(images, chunk, strict=True)])
            logits = net(torch.from_numpy(x)).double().numpy()
            probs[start:start + len(chunk)] += softmax(logits) / len(nets)
    return probs


def label_with_teachers(
    records: Sequence[FaceRecord], teachers: Sequence[str]
) -> list[FaceRecord]:
    """The records with ``soft_target`` = the teachers' mean probabilities (float32) and
    ``label`` = its top class. Every record needs its ``detection``."""
    missing = [r.name for r in records if r.detection is None]
    if missing:
        raise ValueError(f"{len(missing)} records have no detection to show the teachers")
    probs = teacher_probabilities(records, teachers)
    LOG.info("labelled %d faces with %s", len(records), ", ".join(teachers))
    return [replace(r, soft_target=p.astype(np.float32), label=int(p.argmax()))
            for r, p in zip(records, probs, strict=True)]
