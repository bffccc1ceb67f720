"""Recall of ``handler.detect.FaceDetector`` on unmasked, masked and rolled real faces, and speed.

Ground truth comes from the detector itself, run on the UNMASKED upright photos in its most
thorough setting with a high threshold (the per-photo face counts are checked against
``EXPECTED_FACES``, counted by eye on the contact sheet ``--sheet`` writes). Every test image
is then derived from those photos with known geometry:

* masked: each face gets a mask drawn from its keypoints by ``training.masks.render_mask``,
  once per style (colour drawn from the style's palette) and once as a black cloth mask;
* rolled: the whole photo is rotated by +-15/25/35 degrees, unmasked and masked; the truth box
  keeps the face's size and follows its centre (the box ``FaceDetector`` itself reports);

and a face counts as found when a detection overlaps its truth box at IoU >= 0.5 (one
detection per face). Non-face LFW crops measure false positives.

Run:  python bench/detector.py [--presets default baseline ...] [--threads 1 2] [--sheet F]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from handler.detect import DetectorConfig, FaceDetector, iou_matrix, rotation_matrix
from handler.faces import Detection
from training.assets import fetch
from training.masks import MASK_STYLES, render_mask

LOG = logging.getLogger("bench.detector")

# Faces per photo, counted by eye on the contact sheet (the truth must find exactly these).
EXPECTED_FACES: dict[str, int] = {
    "sample1.jpg": 3,
    "sample2.jpg": 3,
    "sample3.jpg": 3,
    "sample4.jpg": 4,
    "sample5.jpg": 5,
    "sample6.jpg": 4,
    "astronaut": 1,
    "grace_hopper": 1,
}
LFW_FACES = 100  # skimage lfw_subset: the first 100 crops are faces, the rest are not
LFW_SIDE = 96  # the 25 px crops are upscaled to this and padded, to be a plausible face
ROLLS = (-35.0, -25.0, -15.0, 15.0, 25.0, 35.0)
IOU_MATCH = 0.5

PRESETS: dict[str, DetectorConfig] = {
    # BlazeFace as it comes: one pass, threshold 0.5
    "baseline-back": DetectorConfig(models=("back",), rotations=(0.0,), candidate_threshold=0.5),
    "baseline-front": DetectorConfig(models=("front",), rotations=(0.0,), candidate_threshold=0.5),
    # one upright pass plus close-up verification of weak candidates
    "fast": DetectorConfig(models=("back",), rotations=(0.0,)),
    "default": DetectorConfig(),
    "thorough": DetectorConfig(
        models=("front", "back"),
        rotations=(0.0, -30.0, 30.0, -60.0, 60.0),
        rotation_models=("front", "back"),
        tiles=3,
        max_verifications=16,
    ),
}
TRUTH_CONFIG = PRESETS["thorough"].model_copy(update={"score_threshold": 0.7})


@dataclass(frozen=True)
class Photo:
    name: str
    image: np.ndarray  # RGB uint8
    truth: tuple[Detection, ...] = ()


def rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileNotFoundError(path)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def padded_lfw(crop: np.ndarray) -> np.ndarray:
    """A 25x25 grey LFW crop (forehead to chin) -> RGB face upscaled and framed by its edges."""
    face = cv2.resize((crop * 255).astype(np.uint8), (LFW_SIDE, LFW_SIDE),
                      interpolation=cv2.INTER_CUBIC)
    pad = LFW_SIDE // 2
    framed = cv2.copyMakeBorder(face, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    return np.ascontiguousarray(np.repeat(framed[:, :, None], 3, axis=2))


def load_photos() -> tuple[list[Photo], list[Photo], list[np.ndarray]]:
    """(group/portrait photos, LFW face images, LFW non-face images), all RGB uint8."""
    from matplotlib import cbook
    from skimage import data

    photos = [Photo(p.name, rgb(p)) for p in sorted((fetch("face-api") / "demo").glob("*.jpg"))]
    photos.append(Photo("astronaut", np.ascontiguousarray(data.astronaut())))
    photos.append(Photo("grace_hopper", rgb(Path(cbook.get_sample_data("grace_hopper.jpg",
                                                                        asfileobj=False)))))
    lfw = data.lfw_subset()
    faces = [Photo(f"lfw{i:03d}", padded_lfw(c)) for i, c in enumerate(lfw[:LFW_FACES])]
    others = [padded_lfw(c) for c in lfw[LFW_FACES:]]
    return photos, faces, others


def with_truth(detector: FaceDetector, photos: list[Photo], expected: dict[str, int],
               default_count: int | None) -> list[Photo]:
    """Attach the truth detections; photos whose count differs from the expected are dropped
    (LFW crops: the face may be too cut off to find even upright and unmasked)."""
    out = []
    for p in photos:
        truth = tuple(detector.detect(p.image))
        want = expected.get(p.name, default_count)
        if want is not None and len(truth) != want:
            LOG.warning("%s: truth has %d faces, expected %d; photo skipped",
                        p.name, len(truth), want)
            continue
        out.append(Photo(p.name, p.image, truth))
    return out


def transformed(photo: Photo, name: str, matrix: np.ndarray, size_wh: tuple[int, int]
                ) -> Photo | None:
    """The photo warped by a scale+shift ``matrix`` into ``size_wh``, truth moved along; None
    when a truth face would be cut by the new border (its truth would be ambiguous)."""
    image = cv2.warpAffine(photo.image, matrix, size_wh, flags=cv2.INTER_AREA
                           if matrix[0, 0] < 1 else cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REPLICATE)
    w, h = size_wh
    truth = []
    for det in photo.truth:
        corners = np.array(det.box, np.float64).reshape(2, 2) @ matrix[:, :2].T + matrix[:, 2]
        inside = (corners >= 0).all() and (corners[:, 0] <= w).all() and (corners[:, 1] <= h).all()
        outside = (corners[1] <= 0).any() or corners[0, 0] >= w or corners[0, 1] >= h
        if outside:
            continue
        if not inside:
            return None
        kp = None if det.keypoints is None else (
            det.keypoints @ matrix[:, :2].T + matrix[:, 2]).astype(np.float32)
        box = tuple(corners.reshape(-1).tolist())
        truth.append(Detection(box, det.score, kp))  # type: ignore[arg-type]
    return Photo(name, image, tuple(truth))


def downscaled(photos: list[Photo], long_side: int) -> list[Photo]:
    """The photos shrunk to ``long_side`` pixels: smaller faces, as a 640x480 upload has."""
    out = []
    for p in photos:
        h, w = p.image.shape[:2]
        s = long_side / max(h, w)
        m = np.array([[s, 0.0, 0.0], [0.0, s, 0.0]])
        q = transformed(p, f"{p.name}@{long_side}", m, (round(w * s), round(h * s)))
        assert q is not None
        out.append(q)
    return out


def portraits(photos: list[Photo], side: int, face_fraction: float) -> list[Photo]:
    """One square crop per truth face, the face ``face_fraction`` of the side (selfie-like)."""
    out = []
    for p in photos:
        for k, det in enumerate(p.truth):
            x1, y1, x2, y2 = det.box
            s = side * face_fraction / max(x2 - x1, y2 - y1)
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
            m = np.array([[s, 0.0, side / 2 - s * cx], [0.0, s, side / 2 - s * cy]])
            q = transformed(p, f"{p.name}#{k}", m, (side, side))
            if q is not None:
                out.append(q)
    return out


# The renderer's styles with their own colour draws, plus black cloth (the hardest case).
MASK_VARIANTS: dict[str, tuple[str, tuple[int, int, int] | None]] = {
    **{style: (style, None) for style in MASK_STYLES},
    "cloth-black": ("cloth", (28, 28, 30)),
}

Painter = Callable[[np.ndarray, np.ndarray, int], np.ndarray]


def painter(style: str, colour: tuple[int, int, int] | None) -> Painter:
    """Masks one face of an image with ``training.masks.render_mask``, seeded."""

    def paint(image: np.ndarray, keypoints: np.ndarray, seed: int) -> np.ndarray:
        return render_mask(image, keypoints, rng=seed, style=style, color=colour).image

    return paint


def masked(photo: Photo, paint: Painter, seed: int) -> Photo:
    image = photo.image
    for k, det in enumerate(photo.truth):
        assert det.keypoints is not None
        image = paint(image, det.keypoints, seed * 1000 + k)
    return Photo(photo.name, image, photo.truth)


def rolled(photo: Photo, degrees: float) -> Photo:
    """The photo rotated on an enlarged canvas; truth centres and keypoints follow, sizes kept."""
    h, w = photo.image.shape[:2]
    m, cw, ch = rotation_matrix((h, w), degrees)
    image = cv2.warpAffine(photo.image, m, (cw, ch), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT)
    truth = []
    for det in photo.truth:
        x1, y1, x2, y2 = det.box
        c = m[:, :2] @ np.array([(x1 + x2) / 2, (y1 + y2) / 2]) + m[:, 2]
        half = np.array([x2 - x1, y2 - y1]) / 2
        kp = None if det.keypoints is None else det.keypoints @ m[:, :2].T + m[:, 2]
        truth.append(Detection((*(c - half), *(c + half)), det.score,  # type: ignore[arg-type]
                               None if kp is None else kp.astype(np.float32)))
    return Photo(f"{photo.name}@{degrees:+.0f}", image, tuple(truth))


def found(truth: tuple[Detection, ...], dets: list[Detection]) -> tuple[int, int]:
    """(truth faces matched at IoU >= 0.5, detections left unmatched), greedy best-IoU first."""
    if not truth:
        return 0, len(dets)
    if not dets:
        return 0, 0
    ious = iou_matrix(np.array([t.box for t in truth]), np.array([d.box for d in dets]))
    hits = 0
    while ious.size and ious.max() >= IOU_MATCH:
        i, j = np.unravel_index(int(ious.argmax()), ious.shape)
        ious[i, :] = -1.0
        ious[:, j] = -1.0
        hits += 1
    return hits, len(dets) - hits


def conditions(photos: list[Photo], painters: dict[str, Painter]
               ) -> Iterator[tuple[str, Photo]]:
    """(condition, test image) for every photo: unmasked, each mask style, rolled, both."""
    styles = list(painters.items())
    for n, p in enumerate(photos):
        yield "unmasked", p
        for s, (style, paint) in enumerate(styles):
            yield f"masked:{style}", masked(p, paint, n * 31 + s)
        for r, degrees in enumerate(ROLLS):
            yield f"rolled{abs(degrees):.0f}", rolled(p, degrees)
            style, paint = styles[(n + r) % len(styles)]
            yield f"masked+rolled{abs(degrees):.0f}", rolled(masked(p, paint, n * 31 + r), degrees)


def recall(detector: FaceDetector, cases: list[tuple[str, Photo]]) -> dict[str, list[int]]:
    """condition -> [faces found, faces, unmatched detections]."""
    totals: dict[str, list[int]] = {}
    for cond, photo in cases:
        hits, extra = found(photo.truth, detector.detect(photo.image))
        t = totals.setdefault(cond, [0, 0, 0])
        t[0] += hits
        t[1] += len(photo.truth)
        t[2] += extra
    return totals


def summarise(totals: dict[str, list[int]], detail: bool) -> dict[str, list[int]]:
    """Per-style rows, then pooled rows: all masks, rolled, masked+rolled (per angle if
    ``detail``)."""
    groups = {"masked (all)": "masked:", "rolled (all)": "rolled",
              "masked+rolled (all)": "masked+rolled"}
    out = {k: v for k, v in totals.items()
           if k == "unmasked" or k.startswith("masked:") or detail}
    for label, prefix in groups.items():
        rows = [v for k, v in totals.items() if k.startswith(prefix)]
        out[label] = [sum(r[i] for r in rows) for i in range(3)]
    return out


def fmt(row: list[int]) -> str:
    hits, n, extra = row
    return f"{100.0 * hits / max(n, 1):5.1f}% ({hits}/{n}, {extra} extra)"


def false_positives(detector: FaceDetector, others: list[np.ndarray]) -> int:
    return sum(len(detector.detect(im)) for im in others)


def speed_images(photos: list[Photo]) -> list[np.ndarray]:
    """640x480 versions of the photos (centre crop to 4:3, then resize)."""
    out = []
    for p in photos:
        h, w = p.image.shape[:2]
        cw, ch = min(w, h * 4 // 3), min(h, w * 3 // 4)
        x0, y0 = (w - cw) // 2, (h - ch) // 2
        out.append(cv2.resize(p.image[y0:y0 + ch, x0:x0 + cw], (640, 480),
                              interpolation=cv2.INTER_AREA))
    return out


def ms_per_image(detector: FaceDetector, images: list[np.ndarray], rounds: int) -> float:
    """Median over rounds of the mean time per image."""
    for im in images:
        detector.detect(im)
    per_round = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for im in images:
            detector.detect(im)
        per_round.append((time.perf_counter() - t0) * 1000.0 / len(images))
    return statistics.median(per_round)


def contact_sheet(photos: list[Photo], path: Path) -> None:
    """Photos with their truth boxes and keypoints (eyes red/green), for checking by eye."""
    tiles = []
    for p in photos:
        im = p.image.copy()
        thick = max(2, im.shape[1] // 400)
        for d in p.truth:
            x1, y1, x2, y2 = (int(round(v)) for v in d.box)
            cv2.rectangle(im, (x1, y1), (x2, y2), (255, 255, 0), thick)
            if d.keypoints is not None:
                colours = [(255, 0, 0), (0, 255, 0), (255, 255, 255), (255, 0, 255),
                           (0, 128, 255), (0, 128, 255)]
                for (x, y), c in zip(d.keypoints, colours):
                    cv2.circle(im, (int(x), int(y)), thick * 2, c, -1)
        scale = 480 / im.shape[0]
        tiles.append(cv2.resize(im, (int(im.shape[1] * scale), 480), interpolation=cv2.INTER_AREA))
    rows, row, width = [], [], 0
    for t in tiles:
        if width + t.shape[1] > 2000 and row:
            rows.append(row)
            row, width = [], 0
        row.append(t)
        width += t.shape[1]
    rows.append(row)
    full = max(sum(t.shape[1] for t in r) for r in rows)
    sheet = np.vstack([np.hstack(r + [np.zeros((480, full - sum(t.shape[1] for t in r), 3),
                                                np.uint8)]) for r in rows])
    cv2.imwrite(str(path), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="*", default=["baseline-back", "fast", "default"],
                        choices=sorted(PRESETS))
    parser.add_argument("--config", action="append", default=[], metavar="NAME=JSON",
                        help="extra DetectorConfig to measure, as JSON (repeatable)")
    parser.add_argument("--threads", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=5, help="timing rounds")
    parser.add_argument("--detail", action="store_true", help="recall per roll angle")
    parser.add_argument("--no-lfw", action="store_true", help="skip the 100 LFW faces")
    parser.add_argument("--sheet", type=Path, default=None, help="write the truth contact sheet")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    model_dir = fetch("blazeface") / "ONNX"
    configs = {name: PRESETS[name] for name in args.presets}
    for spec in args.config:
        name, _, text = spec.partition("=")
        configs[name] = DetectorConfig.model_validate(json.loads(text))

    photos, lfw_faces, lfw_others = load_photos()
    oracle = FaceDetector(model_dir, TRUTH_CONFIG)
    photos = with_truth(oracle, photos, EXPECTED_FACES, None)
    if args.sheet:
        contact_sheet(photos, args.sheet)
        print(f"contact sheet: {args.sheet}")
    sets = {
        "photos": photos,
        "small": downscaled(photos, 640),
        "portrait": portraits(photos, 384, 0.4),
    }
    if not args.no_lfw:
        sets["lfw"] = with_truth(oracle, lfw_faces, {}, 1)
    painters = {name: painter(*v) for name, v in MASK_VARIANTS.items()}
    print(f"masks: training.masks.render_mask, variants: {', '.join(painters)}")
    for set_name, ps in sets.items():
        print(f"{set_name}: {len(ps)} images, {sum(len(p.truth) for p in ps)} faces")
    cases = {k: list(conditions(v, painters)) for k, v in sets.items()}
    timing_images = speed_images(photos)

    for name, cfg in configs.items():
        print(f"\n== {name}: {cfg.model_dump_json()}")
        det = FaceDetector(model_dir, cfg)
        pooled: dict[str, list[int]] = {}
        for set_name, cs in cases.items():
            for cond, row in summarise(recall(det, cs), args.detail).items():
                print(f"  {set_name:8s} {cond:22s} {fmt(row)}")
                if "(all)" in cond or cond == "unmasked":
                    acc = pooled.setdefault(cond, [0, 0, 0])
                    for k in range(3):
                        acc[k] += row[k]
        for cond, row in pooled.items():
            print(f"  {'ALL':8s} {cond:22s} {fmt(row)}")
        print(f"  false positives on {len(lfw_others)} LFW non-face crops: "
              f"{false_positives(det, lfw_others)}")
        for threads in args.threads:
            timed = FaceDetector(model_dir, cfg, threads=threads)
            ms = ms_per_image(timed, timing_images, args.rounds)
            print(f"  speed 640x480, {threads} thread(s): {ms:.2f} ms/image "
                  f"(median of {args.rounds} rounds over {len(timing_images)} images)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
