"""Which data set to load and how: the ``data:`` section of a training config."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class DataConfig(BaseModel):
    """Data-set selection; validated at the config edge so loaders can trust it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    layout: Literal["msde", "folders", "fer2013", "synthetic"]
    root: Path | None = Field(
        None,
        description="msde: folder holding MSD-E/, MSD-ME/, Paired_files.txt; folders: the "
        "class-folder tree; fer2013: the CSV file (or a folder holding fer2013.csv)",
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

    @model_validator(mode="after")
    def _root_needed(self) -> DataConfig:
        if self.layout != "synthetic" and self.root is None:
            raise ValueError(f"layout {self.layout!r} needs 'root'")
        return self
