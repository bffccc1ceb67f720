"""What the pool holds: counts per source and contact sheets of its faces."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from handler.align import align_face
from handler.contract import CropSpec
from training.contact_sheet import contact_sheet
from training.data.face_pool.build import load_rgb
from training.data.face_pool.index import PoolFace
from training.data.face_pool.sources import GROUPS


def summary(faces: Sequence[PoolFace]) -> list[dict[str, Any]]:
    """Faces and distinct people per (group, source), with the licence."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for f in faces:
        row = rows.setdefault(
            (f.group, f.source),
            {"group": f.group, "source": f.source, "faces": 0, "identities": set(),
             "licence": f.licence},
        )
        row["faces"] += 1
        row["identities"].add(f.identity)
    out = []
    for group in GROUPS:
        for (g, _), row in rows.items():
            if g == group:
                out.append({**row, "identities": len(row["identities"])})
        members = [f for f in faces if f.group == group]
        if members:
            out.append({"group": group, "source": "ALL", "faces": len(members),
                        "identities": len({f.identity for f in members}), "licence": ""})
    return out


def pool_sheet(
    faces: Sequence[PoolFace], *, tile: int = 64, columns: int = 20, labels: bool = False
) -> np.ndarray:
    """Aligned crops (the default ``CropSpec``) in a grid, optionally captioned by identity."""
    if not faces:
        raise ValueError("no faces to draw")
    tiles = []
    cache: dict[Path, np.ndarray] = {}
    for face in faces:
        if face.image_path not in cache:
            cache = {face.image_path: load_rgb(face)}  # faces of one image are adjacent
        tiles.append(align_face(cache[face.image_path], face.detection, (tile, tile), CropSpec()))
    captions = [f.identity.split("/")[-1][:11] for f in faces] if labels else None
    return contact_sheet(tiles, columns=columns, captions=captions)
