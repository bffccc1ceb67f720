"""Building and caching the pool: every source's faces, detected once and kept on disk.

Each photo or video frame is run through the project's detector (``rules.pool_detector``);
every image the detector saw is written as PNG under the pool cache, so a ``PoolFace``'s
detection is in exactly those pixels. A source's faces are cached in
``<cache>/<POOL_VERSION>/<source>/index.json``, keyed by the rules version, the package the
source came from and the detector's code.
"""

from __future__ import annotations

import json
import logging
import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from handler.faces import Detection
from training.assets import REPO_ROOT, fetch
from training.data.face_pool import rules
from training.data.face_pool.index import PoolFace
from training.data.face_pool.reading import frames, prepare
from training.data.face_pool.sources import GROUPS, SOURCES, Group, Source
from training.data.images import read_rgb

LOG = logging.getLogger(__name__)


# Bump when a rule of ``rules`` or ``reading`` changes: other versions' caches are rebuilt.
POOL_VERSION = "facepool-4"
DEFAULT_POOL_CACHE = Path(
    os.environ.get("MSDE_FACE_POOL_CACHE", REPO_ROOT / ".cache" / "face_pool")
)


def build_source(
    source: Source, out_dir: Path, detect: rules.Detect, *, progress: bool = False
) -> list[PoolFace]:
    """Detect, filter, name and deduplicate the faces of one source; write its images."""
    from tqdm import tqdm

    root = fetch(source.asset) if source.asset else None
    images_dir = out_dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    seen: dict[str, list[np.ndarray]] = defaultdict(list)
    faces: list[PoolFace] = []
    for shot in tqdm(source.shots, desc=source.name, disable=not progress, leave=False):
        for key, frame in frames(shot, root):
            image = prepare(frame, shot)
            named = rules.name_faces(rules.keep_faces(detect(image)), shot, source.name)
            fresh: list[tuple[Detection, str]] = []
            for det, identity in named:
                sig = rules.face_signature(image, det)
                if any(float(sig @ other) >= rules.DUPLICATE_CORRELATION
                       for other in seen[identity]):
                    continue
                seen[identity].append(sig)
                fresh.append((det, identity))
            if not fresh:
                continue
            path = images_dir / f"{key}.png"
            Image.fromarray(image).save(path, optimize=False, compress_level=6)
            faces.extend(
                PoolFace(path, det, identity, source.name, source.licence, source.group)
                for det, identity in fresh
            )
    return faces


def detector_fingerprint() -> str:
    """Changes whenever the detector's code does: its faces are what the cache holds."""
    import hashlib

    import handler.detect

    code = Path(handler.detect.__file__).parent
    h = hashlib.sha256()
    for name in ("detect.py", "blazeface.py", "candidates.py"):
        h.update((code / name).read_bytes())
    return h.hexdigest()[:16]


def _source_dir(cache_dir: Path, name: str) -> Path:
    return cache_dir / POOL_VERSION / name


def load_or_build_source(
    source: Source,
    cache_dir: Path,
    detector_factory: Callable[[], rules.Detect],
    *,
    progress: bool = False,
) -> list[PoolFace]:
    """A source's faces from its cached index, or built (and cached) when missing or stale."""
    out_dir = _source_dir(cache_dir, source.name)
    index = out_dir / "index.json"
    key = {"version": POOL_VERSION, "source": source.name, "package": source.version,
           "detector": detector_fingerprint()}
    if index.exists():
        data = json.loads(index.read_text())
        if data.get("key") == key:
            return [PoolFace.from_json(d, out_dir) for d in data["faces"]]
        LOG.info("face pool: cached %s is stale (%s), rebuilding", source.name, data.get("key"))
    records = [
        f.to_json(out_dir)
        for f in build_source(source, out_dir, detector_factory(), progress=progress)
    ]
    tmp = index.with_suffix(".tmp")
    tmp.write_text(json.dumps({"key": key, "faces": records}))
    tmp.replace(index)
    # what the cache will return, rounded the same way, so a first and a second call agree
    faces = [PoolFace.from_json(d, out_dir) for d in records]
    LOG.info("face pool: %s -> %d faces of %d people", source.name, len(faces),
             len({f.identity for f in faces}))
    return faces


def build_pool(
    cache_dir: Path | None = None,
    *,
    groups: Sequence[Group] = GROUPS,
    max_per_identity: int = 20,
    progress: bool = True,
    sources: Sequence[str] | None = None,
) -> list[PoolFace]:
    """All pool faces of the chosen groups (and sources), at most ``max_per_identity`` each.

    Deterministic: sources in ``SOURCES`` order, then shots, frames, faces left to right.
    Each source's detections are cached under ``cache_dir/<POOL_VERSION>/<source>/``, so a
    second call only reads JSON.
    """
    if max_per_identity < 1:
        raise ValueError(f"max_per_identity must be >= 1, got {max_per_identity}")
    unknown_groups = set(groups) - set(GROUPS)
    if unknown_groups:
        raise ValueError(f"unknown groups {sorted(unknown_groups)}; known: {list(GROUPS)}")
    names = list(SOURCES) if sources is None else list(sources)
    unknown = [n for n in names if n not in SOURCES]
    if unknown:
        raise KeyError(f"unknown face-pool sources {unknown}; known: {', '.join(SOURCES)}")
    cache = Path(cache_dir or DEFAULT_POOL_CACHE)
    detector: list[rules.Detect] = []

    def shared_detector() -> rules.Detect:
        if not detector:
            detector.append(rules.pool_detector())
        return detector[0]

    faces: list[PoolFace] = []
    for name in SOURCES:  # fixed order, whatever order ``sources`` came in
        source = SOURCES[name]
        if name in names and source.group in groups:
            faces.extend(load_or_build_source(source, cache, shared_detector, progress=progress))
    return rules.cap_per_identity(faces, max_per_identity)


def load_rgb(face: PoolFace) -> np.ndarray:
    """The RGB uint8 image (H, W, 3) that ``face.detection`` refers to."""
    return read_rgb(face.image_path)
