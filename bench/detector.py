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

Speed: every variant is timed on the same 640x480 images in interleaved rounds (so load
from other programs hits all of them alike), one thread, per image; the figure is the
median per image, wall clock and this process's CPU time, with the ratio to the first
variant. CPU used by other programs during the timing (/proc/stat minus our own) is
reported, and ``--max-foreign`` refuses (exit 3) figures taken on a busy machine.

Run:  python bench/detector.py [--presets default masked ...] [--rounds 5] [--sheet F]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from handler.candidates import iou_matrix
from handler.detect import DetectorConfig, FaceDetector, rotation_matrix
from handler.faces import Detection
from training.assets import fetch
from training.detector.distill import detector_models
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
    # the fine-tuned masked-face model (training.detector): one upright pass; with the
    # close-up verification; in the default's three rotated passes
    "masked": DetectorConfig(models=("masked",), rotations=(0.0,), candidate_threshold=0.5),
    "masked-verify": DetectorConfig(models=("masked",), rotations=(0.0,)),
    "masked-3pass": DetectorConfig(models=("masked",), rotation_models=("masked",)),
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


def _machine_busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot (/proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Timing:
    """Median per image over rounds x images: wall and own-CPU ms."""

    wall_ms: float
    cpu_ms: float


def time_side_by_side(detectors: dict[str, FaceDetector], images: list[np.ndarray],
                      rounds: int) -> tuple[dict[str, Timing], float]:
    """Per-image times of every detector, interleaved round by round; and the cores other
    programs kept busy meanwhile (machine busy time minus this process's CPU time)."""
    for det in detectors.values():
        for im in images:
            det.detect(im)
    wall: dict[str, list[float]] = {n: [] for n in detectors}
    cpu: dict[str, list[float]] = {n: [] for n in detectors}
    busy0, own0, t0 = _machine_busy_seconds(), time.process_time(), time.perf_counter()
    for _ in range(rounds):
        for name, det in detectors.items():
            for im in images:
                w, c = time.perf_counter(), time.process_time()
                det.detect(im)
                cpu[name].append((time.process_time() - c) * 1000.0)
                wall[name].append((time.perf_counter() - w) * 1000.0)
    elapsed = time.perf_counter() - t0
    foreign = max(0.0, (_machine_busy_seconds() - busy0) - (time.process_time() - own0))
    return ({n: Timing(statistics.median(wall[n]), statistics.median(cpu[n]))
             for n in detectors}, foreign / max(elapsed, 1e-9))


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


REAL_SETS = ("photos", "small", "portrait")  # the target is on these (real photos)
POOLED = ("unmasked", "masked (all)", "rolled (all)", "masked+rolled (all)")


def pooled_rows(per_set: dict[str, dict[str, list[int]]], sets: tuple[str, ...]
                ) -> dict[str, list[int]]:
    """The pooled conditions summed over ``sets``."""
    out = {cond: [0, 0, 0] for cond in POOLED}
    for set_name in sets:
        for cond in POOLED:
            for k in range(3):
                out[cond][k] += per_set.get(set_name, {}).get(cond, [0, 0, 0])[k]
    return out


def pct(row: list[int]) -> str:
    return f"{100.0 * row[0] / max(row[1], 1):.1f}%"


def summary_table(recalls: dict[str, dict[str, list[int]]], timings: dict[str, Timing],
                  false_pos: dict[str, int], reference: str) -> str:
    """Markdown: variant | ms | recall per condition on the real photos | extra detections."""
    lines = [
        "| variant | median ms / 640x480 (1 thread, wall) | CPU ms | vs " + reference
        + " | unmasked | masked | rolled | masked+rolled | extra (masked / all) "
        "| non-face FP |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    ref = timings[reference].wall_ms
    for name, rows in recalls.items():
        t = timings[name]
        extra_all = sum(r[2] for r in rows.values())
        lines.append(
            f"| {name} | {t.wall_ms:.2f} | {t.cpu_ms:.2f} | {t.wall_ms / ref:.2f}x | "
            + " | ".join(f"{pct(rows[c])} ({rows[c][0]}/{rows[c][1]})" for c in POOLED)
            + f" | {rows['masked (all)'][2]} / {extra_all} | {false_pos[name]} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="*", default=["default", "masked"],
                        choices=sorted(PRESETS))
    parser.add_argument("--config", action="append", default=[], metavar="NAME=JSON",
                        help="extra DetectorConfig to measure, as JSON (repeatable)")
    parser.add_argument("--rounds", type=int, default=5, help="timing rounds")
    parser.add_argument("--detail", action="store_true", help="recall per roll angle")
    parser.add_argument("--no-lfw", action="store_true", help="skip the 100 LFW faces")
    parser.add_argument("--sheet", type=Path, default=None, help="write the truth contact sheet")
    parser.add_argument("--model-dir", type=Path, default=None,
                        help="detector models (default: registry models + the built masked "
                        "model, built if missing)")
    parser.add_argument("--max-foreign", type=float, default=None, metavar="CORES",
                        help="refuse the timings (exit 3) when other programs kept more than "
                        "this many cores busy while they were taken")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    model_dir = args.model_dir or detector_models()
    configs = {name: PRESETS[name] for name in args.presets}
    for spec in args.config:
        name, _, text = spec.partition("=")
        configs[name] = DetectorConfig.model_validate(json.loads(text))
    if not configs:
        parser.error("nothing to measure: give --presets or --config")

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

    detectors = {name: FaceDetector(model_dir, cfg, threads=1) for name, cfg in configs.items()}
    real: dict[str, dict[str, list[int]]] = {}
    false_pos: dict[str, int] = {}
    for name, det in detectors.items():
        print(f"\n== {name}: {det.config.model_dump_json()}")
        per_set: dict[str, dict[str, list[int]]] = {}
        for set_name, cs in cases.items():
            per_set[set_name] = summarise(recall(det, cs), args.detail)
            for cond, row in per_set[set_name].items():
                print(f"  {set_name:8s} {cond:22s} {fmt(row)}")
        real[name] = pooled_rows(per_set, REAL_SETS)
        for cond, row in real[name].items():
            print(f"  {'REAL':8s} {cond:22s} {fmt(row)}")
        for cond, row in pooled_rows(per_set, tuple(cases)).items():
            print(f"  {'ALL':8s} {cond:22s} {fmt(row)}")
        false_pos[name] = false_positives(det, lfw_others)
        print(f"  false positives on {len(lfw_others)} LFW non-face crops: {false_pos[name]}")

    timings, foreign = time_side_by_side(detectors, speed_images(photos), args.rounds)
    print(f"\nrecall on the real photos ({' + '.join(REAL_SETS)}), speed on "
          f"{len(photos)} 640x480 images x {args.rounds} rounds, interleaved; "
          f"other programs kept {foreign:.2f} cores busy meanwhile"
          + (" (UNDER LOAD: absolute ms are pessimistic, compare ratios)" if foreign > 0.1
             else ""))
    print(summary_table(real, timings, false_pos, next(iter(detectors))))
    if args.max_foreign is not None and foreign > args.max_foreign:
        print(f"refused: {foreign:.2f} foreign cores > --max-foreign {args.max_foreign}",
              file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
