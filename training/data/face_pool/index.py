"""One face of the pool as its source's cached ``index.json`` holds it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from handler.faces import Detection
from training.data.face_pool.sources import Group


@dataclass(frozen=True)
class PoolFace:
    """One real face: the image it is in (under the pool cache), where, and whose it is."""

    image_path: Path
    detection: Detection
    identity: str
    source: str
    licence: str
    group: Group

    def _key(self) -> tuple[object, ...]:
        kps = self.detection.keypoints
        return (
            self.image_path, self.detection.box, self.detection.score,
            None if kps is None else np.asarray(kps).tobytes(),
            self.identity, self.source, self.licence, self.group,
        )

    def __eq__(self, other: object) -> bool:
        # the dataclass default would compare keypoint arrays with ``==`` (ambiguous truth)
        return isinstance(other, PoolFace) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def to_json(self, root: Path) -> dict[str, Any]:
        kps = self.detection.keypoints
        return {
            "image": self.image_path.relative_to(root).as_posix(),
            "box": [round(float(v), 3) for v in self.detection.box],
            "score": round(float(self.detection.score), 5),
            "keypoints": None if kps is None else np.round(kps, 3).tolist(),
            "identity": self.identity,
            "source": self.source,
            "licence": self.licence,
            "group": self.group,
        }

    @staticmethod
    def from_json(d: dict[str, Any], root: Path) -> PoolFace:
        kps = d["keypoints"]
        return PoolFace(
            image_path=root / d["image"],
            detection=Detection(
                box=tuple(float(v) for v in d["box"]),  # type: ignore[arg-type]
                score=float(d["score"]),
                keypoints=None if kps is None else np.asarray(kps, dtype=np.float32),
            ),
            identity=d["identity"],
            source=d["source"],
            licence=d["licence"],
            group=d["group"],
        )
