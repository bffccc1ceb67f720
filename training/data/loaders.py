"""Data-set layouts people actually have, turned into ``FaceRecord``s.

Structural problems (missing folders, unknown labels, names that do not parse, pairs
without their masked twin, malformed CSV rows) are collected and raised together as one
``DataError``, so a user fixes a data set in one go rather than one crash at a time.
Images that exist but do not decode are skipped and reported (``LoadReport.skipped``, and a
warning), unless ``strict``: one corrupt JPEG should not stop a 30 000-image run.
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from handler.contract import EXPRESSION_LABELS
from training.assets import DEFAULT_CACHE
from training.data.config import DataConfig
from training.data.detections import default_detector, resolve_detections
from training.data.face_pool.records import pool_records
from training.data.images import unreadable_reason
from training.data.records import DataError, FaceRecord, LoadReport, SkippedItem, SplitName
from training.data.synthetic import generate_faces

LOG = logging.getLogger(__name__)

# Folder names (lower case) accepted for each expression, msde order.
LABEL_ALIASES: dict[str, int] = {
    alias: EXPRESSION_LABELS.index(label)
    for label, aliases in {
        "surprise": ("surprise", "surprised", "suprise"),
        "fear": ("fear", "fearful", "afraid", "scared"),
        "disgust": ("disgust", "disgusted"),
        "happiness": ("happiness", "happy", "joy"),
        "sadness": ("sadness", "sad"),
        "anger": ("anger", "angry"),
        "neutral": ("neutral",),
    }.items()
    for alias in aliases
}
# Folders that hold a split of a class-folder tree (``<root>/<split>/<label>/...``).
SPLIT_FOLDERS: dict[str, SplitName] = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val",
    "test": "test", "testing": "test",
}
# FER2013 order (0=Angry, 1=Disgust, 2=Fear, 3=Happy, 4=Sad, 5=Surprise, 6=Neutral) -> ours.
FER_TO_MSDE: tuple[int, ...] = (5, 2, 1, 3, 4, 0, 6)
FER_USAGE: dict[str, SplitName] = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
FER_SIDE = 48
MSDE_UNMASKED, MSDE_MASKED, MSDE_PAIRS = "MSD-E", "MSD-ME", "Paired_files.txt"
_MSDE_NAME = re.compile(r"^(?P<subject>[^_]+)_(?P<label>[^_]+)(?:_.*)?$")


def load_records(cfg: DataConfig) -> list[FaceRecord]:
    """The configured data set's records (unreadable images skipped and logged)."""
    return load_report(cfg).records


def load_report(cfg: DataConfig) -> LoadReport:
    """The configured data set's records and what was skipped on the way.

    With ``cfg.detect`` real images also get their face located (``resolve_detections``,
    cached), so training crops them as serving will.
    """
    if cfg.layout == "synthetic":
        records = generate_faces(cfg.n_subjects, cfg.images_per_subject, cfg.image_size, cfg.seed)
        return LoadReport(records, [])
    if cfg.layout == "face_pool":
        return LoadReport(pool_records(cfg), [])
    assert cfg.root is not None  # DataConfig guarantees it
    if cfg.layout == "msde":
        report = load_msde(cfg)
    elif cfg.layout == "folders":
        report = load_folders(cfg)
    else:
        report = load_fer2013(cfg)
    if report.skipped:
        LOG.warning(
            "skipped %d unreadable item(s): %s", len(report.skipped),
            "; ".join(f"{s.item} ({s.reason})" for s in report.skipped[:10]),
        )
    if not report.records:
        raise DataError(f"no usable images in {cfg.root}",
                        [f"{s.item}: {s.reason}" for s in report.skipped])
    LOG.info("%s: %d records, %d subjects", cfg.layout, len(report.records),
             len({r.subject for r in report.records}))
    if cfg.detect:
        cache = cfg.detection_cache or DEFAULT_CACHE.parent / "detections"
        records, _ = resolve_detections(report.records, default_detector(), cache)
        report = LoadReport(records, report.skipped)
    return report


def _keep_readable(records: list[FaceRecord], cfg: DataConfig) -> LoadReport:
    """Drop records whose image (or masked twin) does not decode; strict: raise instead."""
    if not cfg.verify_images:
        return LoadReport(records, [])
    kept: list[FaceRecord] = []
    skipped: list[SkippedItem] = []
    for r in records:
        bad = [
            SkippedItem(str(p), reason)
            for p in (r.image_path, r.masked_path)
            if p is not None and (reason := unreadable_reason(p)) is not None
        ]
        if bad:
            skipped.extend(bad)
        else:
            kept.append(r)
    if skipped and cfg.strict:
        raise DataError(f"{len(skipped)} unreadable image(s)",
                        [f"{s.item}: {s.reason}" for s in skipped])
    return LoadReport(kept, skipped)


def _require_dirs(paths: Iterable[Path]) -> None:
    missing = [str(p) for p in paths if not p.is_dir()]
    if missing:
        raise DataError("missing folder(s)", missing)


# ---------------------------------------------------------------- MSD-E


def parse_msde_name(name: str) -> tuple[str, int]:
    """``017_3_2.jpg`` -> (subject "017", label 3); ValueError says what is wrong."""
    m = _MSDE_NAME.match(Path(name).stem)
    if m is None:
        raise ValueError("name has no label: expected <subject>_<label>_...")
    token = m["label"]
    if not token.isdigit():
        raise ValueError(f"label {token!r} is not a number: expected <subject>_<label>_...")
    label = int(token)
    if not 0 <= label < len(EXPRESSION_LABELS):
        raise ValueError(f"label {label} outside 0..{len(EXPRESSION_LABELS) - 1}")
    return m["subject"], label


def load_msde(cfg: DataConfig) -> LoadReport:
    """``<root>/MSD-E/<name>`` + real masked twin ``<root>/MSD-ME/<name>``, for every name
    in ``<root>/Paired_files.txt``; names are ``<subject>_<label>_...`` (msde label order)."""
    root = Path(cfg.root)  # type: ignore[arg-type]
    unmasked_dir, masked_dir, pairs = root / MSDE_UNMASKED, root / MSDE_MASKED, root / MSDE_PAIRS
    _require_dirs([root, unmasked_dir, masked_dir])
    if not pairs.is_file():
        raise DataError(f"missing pair list {pairs} (one file name per line)")
    names: list[str] = []
    for line in pairs.read_text(encoding="utf-8", errors="replace").splitlines():
        name = Path(line.strip()).name
        if name and name not in names:
            names.append(name)
    if not names:
        raise DataError(f"{pairs} lists no files")
    problems: list[str] = []
    records: list[FaceRecord] = []
    for name in names:
        try:
            subject, label = parse_msde_name(name)
        except ValueError as e:
            problems.append(f"{name}: {e}")
            continue
        image, twin = unmasked_dir / name, masked_dir / name
        missing = [str(p) for p in (image, twin) if not p.is_file()]
        if missing:
            what = "masked twin" if missing == [str(twin)] else "image"
            problems.append(f"{name}: {what} missing ({', '.join(missing)})")
            continue
        records.append(FaceRecord(label=label, subject=subject, image_path=image, masked_path=twin))
    if problems:
        raise DataError(f"{len(problems)} problem(s) in the MSD-E data set at {root}", problems)
    return _keep_readable(records, cfg)


# ---------------------------------------------------------------- class folders


def _label_lookup(cfg: DataConfig) -> dict[str, int | None]:
    """Folder name (lower case) -> label index, or None for folders to ignore."""
    lookup: dict[str, int | None] = dict(LABEL_ALIASES)
    bad: list[str] = []
    for folder, target in cfg.label_map.items():
        if target is None:
            lookup[folder.lower()] = None
        elif target.lower() in LABEL_ALIASES:
            lookup[folder.lower()] = LABEL_ALIASES[target.lower()]
        else:
            bad.append(f"label_map[{folder!r}] = {target!r}")
    if bad:
        raise DataError(f"label_map targets must be one of {list(EXPRESSION_LABELS)}", bad)
    return lookup


def _subject_of(stem: str, pattern: re.Pattern[str] | None) -> str | None:
    if pattern is None:
        return stem
    m = pattern.search(stem)
    if m is None:
        return None
    subject = m.groupdict().get("subject") or (m.group(1) if m.groups() else m.group(0))
    return subject or None


def load_folders(cfg: DataConfig) -> LoadReport:
    """``<root>/<label>/*.<ext>`` (or ``<root>/<split>/<label>/...``), label folder names
    matched case-insensitively against ``label_map`` and the built-in aliases."""
    root = Path(cfg.root)  # type: ignore[arg-type]
    _require_dirs([root] + ([Path(cfg.masked_root)] if cfg.masked_root else []))
    lookup = _label_lookup(cfg)
    pattern = re.compile(cfg.subject_regex) if cfg.subject_regex else None
    top = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if top and all(p.name.lower() in SPLIT_FOLDERS for p in top):
        groups = [(SPLIT_FOLDERS[p.name.lower()], p) for p in top]
    else:
        groups = [(None, root)]
    problems: list[str] = []
    records: list[FaceRecord] = []
    ignored_files = 0
    for split, base in groups:
        folders = sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not folders:
            problems.append(f"{base}: no label folders")
        for folder in folders:
            key = folder.name.strip().lower()
            if key not in lookup:
                problems.append(
                    f"unknown label folder {folder}: known names are "
                    f"{', '.join(sorted(LABEL_ALIASES))}; map or ignore it with label_map"
                )
                continue
            label = lookup[key]
            if label is None:
                continue
            for path in sorted(folder.rglob("*")):
                if not path.is_file() or path.name.startswith("."):
                    continue
                if path.suffix.lower() not in cfg.extensions:
                    ignored_files += 1
                    continue
                subject = _subject_of(path.stem, pattern)
                if subject is None:
                    problems.append(f"{path}: subject_regex {cfg.subject_regex!r} does not match")
                    continue
                twin = None
                if cfg.masked_root is not None:
                    twin = Path(cfg.masked_root) / path.relative_to(root)
                    if not twin.is_file():
                        problems.append(f"{path}: masked twin missing ({twin})")
                        continue
                records.append(FaceRecord(label=label, subject=subject, image_path=path,
                                          masked_path=twin, split=split))
    if problems:
        raise DataError(f"{len(problems)} problem(s) in the class-folder tree at {root}", problems)
    if ignored_files:
        LOG.info("ignored %d files without an image extension %s", ignored_files, cfg.extensions)
    if not records:
        raise DataError(f"no images with extensions {cfg.extensions} under {root}")
    return _keep_readable(records, cfg)


# ---------------------------------------------------------------- FER2013


def _fer_csv(root: Path) -> Path:
    if root.is_file():
        return root
    if root.is_dir():
        named = root / "fer2013.csv"
        if named.is_file():
            return named
        found = sorted(root.glob("*.csv"))
        if len(found) == 1:
            return found[0]
        raise DataError(f"{root} holds {len(found)} CSV files; point root at the FER2013 CSV",
                        [str(p) for p in found])
    raise DataError(f"FER2013 CSV not found: {root}")


def load_fer2013(cfg: DataConfig) -> LoadReport:
    """FER2013 ``emotion,pixels[,Usage]`` rows of 48x48 greyscale faces.

    Identities are unknown, so each row is its own subject (splits cannot keep a person
    out of both sides; FER2013 does hold repeated people). ``Usage`` (Training /
    PublicTest / PrivateTest) becomes ``split`` train / val / test for ``predefined_split``.
    """
    path = _fer_csv(Path(cfg.root))  # type: ignore[arg-type]
    problems: list[str] = []
    records: list[FaceRecord] = []
    with path.open(newline="", encoding="utf-8", errors="replace") as f:
        reader = csv.reader(f)
        header = [h.strip().lower() for h in next(reader, [])]
        if "emotion" not in header or "pixels" not in header:
            raise DataError(
                f"{path}: expected a header with columns emotion,pixels[,Usage], got {header}"
            )
        i_emotion, i_pixels = header.index("emotion"), header.index("pixels")
        i_usage = header.index("usage") if "usage" in header else None
        for line_no, row in enumerate(reader, start=2):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != len(header):
                problems.append(f"line {line_no}: {len(row)} fields, header has {len(header)}")
                continue
            try:
                emotion = int(row[i_emotion])
            except ValueError:
                problems.append(f"line {line_no}: emotion {row[i_emotion]!r} is not a number")
                continue
            if not 0 <= emotion < len(FER_TO_MSDE):
                problems.append(f"line {line_no}: emotion {emotion} outside 0..6")
                continue
            try:
                values = np.array(row[i_pixels].split(), dtype=np.int64)
            except ValueError:
                problems.append(f"line {line_no}: pixels are not whitespace-separated integers")
                continue
            if values.size != FER_SIDE * FER_SIDE:
                problems.append(
                    f"line {line_no}: {values.size} pixels, expected {FER_SIDE * FER_SIDE} (48x48)"
                )
                continue
            if values.min() < 0 or values.max() > 255:
                problems.append(f"line {line_no}: pixel values outside 0..255")
                continue
            split: SplitName | None = None
            if i_usage is not None:
                usage = row[i_usage].strip()
                if usage not in FER_USAGE:
                    problems.append(f"line {line_no}: Usage {usage!r} not in {list(FER_USAGE)}")
                    continue
                split = FER_USAGE[usage]
            grey = values.astype(np.uint8).reshape(FER_SIDE, FER_SIDE, 1)
            records.append(
                FaceRecord(
                    label=FER_TO_MSDE[emotion],
                    subject=f"fer2013-line{line_no}",
                    # a read-only RGB view of the grey bytes: a third of the memory
                    pixels=np.broadcast_to(grey, (FER_SIDE, FER_SIDE, 3)),
                    split=split,
                )
            )
    if problems:
        raise DataError(f"{len(problems)} malformed row(s) in {path}", problems)
    if not records:
        raise DataError(f"{path} has no data rows")
    return LoadReport(records, [])
