"""Which data set to load and how: the ``data:`` section of a training config."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class Augmentation(BaseModel):
    """Ranges of the random pair augmentation (``training.data.dataset.augment_pair``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    flip_p: float = Field(0.5, ge=0.0, le=1.0)
    max_rotate_deg: float = Field(10.0, ge=0.0, le=180.0)
    scale: tuple[float, float] = (0.9, 1.1)
    max_shift: float = Field(
        0.05, ge=0.0, description="of the face box side (of the image side for whole images)"
    )
    brightness: float = Field(0.12, ge=0.0, description="of full scale")
    contrast: tuple[float, float] = (0.8, 1.2)
    saturation: tuple[float, float] = (0.7, 1.3)
    grey_p: float = Field(0.0, ge=0.0, le=1.0, description="chance of a grey photo")
    blur_p: float = Field(0.0, ge=0.0, le=1.0, description="chance of a Gaussian blur")
    blur_sigma: tuple[float, float] = Field(
        (0.005, 0.02), description="blur sigma range, of the face box side (a focus or motion "
        "blur the size of the face, whatever the photo's resolution)"
    )
    jpeg_p: float = Field(0.0, ge=0.0, le=1.0, description="chance of a JPEG re-encoding")
    jpeg_quality: tuple[int, int] = Field((30, 90), description="JPEG quality range (1-100)")

    @field_validator("scale", "contrast", "saturation", "blur_sigma")
    @classmethod
    def _range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0.0 < v[0] <= v[1]:
            raise ValueError(f"a range needs 0 < low <= high, got {v}")
        return v

    @field_validator("jpeg_quality")
    @classmethod
    def _quality(cls, v: tuple[int, int]) -> tuple[int, int]:
        if not 1 <= v[0] <= v[1] <= 100:
            raise ValueError(f"JPEG quality needs 1 <= low <= high <= 100, got {v}")
        return v


class DataConfig(BaseModel):
    """Data-set selection; validated at the config edge so loaders can trust it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    layout: Literal["msde", "folders", "fer2013", "synthetic", "face_pool"]
    root: Path | None = Field(
        None,
        description="msde: folder holding MSD-E/, MSD-ME/, Paired_files.txt; folders: the "
        "class-folder tree; fer2013: the CSV file (or a folder holding fer2013.csv); "
        "face_pool: the pool cache (default: MSDE_FACE_POOL_CACHE or .cache/face_pool)",
    )
    # folders layout
    subject_regex: str | None = Field(
        None,
        description="regex on the file stem; its group 'subject' (or group 1) is the identity. "
        "Default: every file is its own subject",
    )
    label_map: dict[str, str | None] = Field(
        default_factory=dict,
        description="folder name -> expression label name (null: ignore that folder), checked "
        "before the built-in aliases; needed for numeric folders (AffectNet, RAF-DB)",
    )
    masked_root: Path | None = Field(
        None, description="folders: a second tree with real masked twins at the same paths"
    )
    extensions: tuple[str, ...] = IMAGE_EXTENSIONS
    # real images
    detect: bool = Field(
        True,
        description="locate faces in real images with the serving detector (BlazeFace), once "
        "per image, cached; images without a face are used whole, as ready-made crops",
    )
    detection_cache: Path | None = Field(
        None, description="detection cache folder (default: .cache/detections in the repo)"
    )
    verify_images: bool = Field(True, description="decode every image once at load time")
    strict: bool = Field(False, description="unreadable images are an error, not skipped")
    # face_pool layout
    teachers: tuple[str, ...] = Field(
        ("fer",), min_length=1,
        description="face_pool: teachers (training.teachers) whose mean probabilities on the "
        "unmasked face are each record's soft target; its label is their top class",
    )
    sources: tuple[str, ...] | None = Field(
        None, description="face_pool: the pool sources to use (default: all)"
    )
    max_per_identity: int = Field(20, ge=1, description="face_pool: faces kept per person")
    # synthetic layout
    n_subjects: int = Field(70, ge=1)
    images_per_subject: int = Field(28, ge=1)
    image_size: int = Field(96, ge=48, le=512)
    seed: int = 0

    @field_validator("subject_regex")
    @classmethod
    def _compiles(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as e:
                raise ValueError(f"subject_regex does not compile: {e}") from e
        return v

    @field_validator("extensions")
    @classmethod
    def _lower_dotted(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in v)

    @field_validator("sources")
    @classmethod
    def _known_sources(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        from training.data.face_pool.sources import SOURCES

        unknown = sorted(set(v or ()) - set(SOURCES))
        if unknown:
            raise ValueError(f"unknown face-pool sources {unknown}; known: {', '.join(SOURCES)}")
        return v

    @model_validator(mode="after")
    def _root_needed(self) -> DataConfig:
        if self.layout not in ("synthetic", "face_pool") and self.root is None:
            raise ValueError(f"layout {self.layout!r} needs 'root'")
        return self
