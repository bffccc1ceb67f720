"""The face pool as a data set: the ``face_pool`` layout of ``training.data.load_records``.

Every pool face becomes a ``FaceRecord`` of its image in the pool cache (read through the
serving decoder like any image file), its detection and its person as the subject; faces of
the reserved ``eval`` group are marked ``split="test"`` so ``holdout_split`` never trains,
tunes or selects on them. The teachers then label every face (``soft_targets``).
"""

from __future__ import annotations

import logging

from training.data.config import DataConfig
from training.data.face_pool.build import build_pool
from training.data.records import FaceRecord
from training.data.soft_targets import label_with_teachers

LOG = logging.getLogger(__name__)


def pool_records(cfg: DataConfig) -> list[FaceRecord]:
    """Records of every pool face of ``cfg.sources`` (all by default), teacher-labelled."""
    faces = build_pool(cfg.root, max_per_identity=cfg.max_per_identity,
                       sources=cfg.sources, progress=False)
    records = [
        FaceRecord(label=0, subject=f.identity, image_path=f.image_path, detection=f.detection,
                   split="test" if f.group == "eval" else None, source=f.source)
        for f in faces
    ]
    LOG.info("face pool: %d faces of %d people (%d reserved for testing)", len(records),
             len({r.subject for r in records}), sum(r.split == "test" for r in records))
    return label_with_teachers(records, cfg.teachers)
