"""Training data: loaders per layout, subject-independent splits, synthetic faces, paired dataset.

``load_records(DataConfig)`` -> ``FaceRecord``s -> ``subject_kfold`` / ``fixed_split`` indices
-> ``PairedFaceDataset`` items (unmasked + masked view of each face, THE preprocessing).
"""

from training.data.config import Augmentation, DataConfig
from training.data.dataset import PairedFaceDataset
from training.data.detections import (
    CANONICAL_KEYPOINTS,
    DetectionStats,
    default_detector,
    resolve_detections,
)
from training.data.loaders import load_records, load_report
from training.data.records import DataError, FaceRecord, LoadReport, SkippedItem
from training.data.splits import (
    Splits,
    fixed_split,
    holdout_split,
    predefined_split,
    split_records,
    subject_kfold,
)
from training.data.synthetic import generate_faces

__all__ = [
    "CANONICAL_KEYPOINTS",
    "Augmentation",
    "DataConfig",
    "DataError",
    "DetectionStats",
    "FaceRecord",
    "LoadReport",
    "PairedFaceDataset",
    "SkippedItem",
    "Splits",
    "default_detector",
    "fixed_split",
    "generate_faces",
    "holdout_split",
    "load_records",
    "load_report",
    "predefined_split",
    "resolve_detections",
    "split_records",
    "subject_kfold",
]
