"""Paired (unmasked, masked) views of every face, cropped by THE preprocessing.

Each item is the same face twice: as photographed and with a mask (the real masked twin
when the data set has one, else a synthetic mask from ``training.masks.render_mask`` drawn
on the full image before cropping, so its geometry is what serving sees). Both views share
one augmentation, so the only difference between them is the mask: what the contrastive
and distillation losses need.

Augmentation and synthetic masks are a pure function of (seed, index, epoch), so a run is
reproducible whatever the number of DataLoader workers.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import replace

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from handler.align import face_input, whole_image_detection
from handler.faces import Detection
from handler.contract import InputSpec
from training.data.config import Augmentation
from training.data.detections import FaceFinder, main_face, mask_keypoints
from training.data.images import load_rgb, read_rgb
from training.data.records import FaceRecord
from training.masks import MASK_STYLES, render_mask

LOG = logging.getLogger(__name__)

# BlazeFace keypoint order; a mirror image swaps the subject's right and left.
_MIRROR = np.array([1, 0, 2, 3, 5, 4])
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def flip_detection(detection: Detection, width: int) -> Detection:
    """The same face in the horizontally mirrored image (keypoints swap sides)."""
    x1, y1, x2, y2 = detection.box
    kp = detection.keypoints
    if kp is not None:
        kp = np.asarray(kp, dtype=np.float32)[_MIRROR].copy()
        kp[:, 0] = width - kp[:, 0]
    return replace(detection, box=(width - x2, y1, width - x1, y2), keypoints=kp)


def _similarity(centre: np.ndarray, degrees: float, scale: float, shift: np.ndarray) -> np.ndarray:
    m = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), degrees, scale)
    m[:, 2] += shift
    return m


def _move_detection(detection: Detection, m: np.ndarray) -> Detection:
    """Detection under the similarity ``m`` (keypoints exactly, box about its centre)."""
    x1, y1, x2, y2 = detection.box
    centre = m[:, :2] @ np.array([(x1 + x2) / 2, (y1 + y2) / 2]) + m[:, 2]
    s = math.sqrt(abs(np.linalg.det(m[:, :2])))
    hw, hh = (x2 - x1) * s / 2, (y2 - y1) * s / 2
    kp = detection.keypoints
    if kp is not None:
        kp = (np.asarray(kp, np.float64) @ m[:, :2].T + m[:, 2]).astype(np.float32)
    box = (centre[0] - hw, centre[1] - hh, centre[0] + hw, centre[1] + hh)
    return replace(detection, box=tuple(float(v) for v in box), keypoints=kp)


def augment_pair(
    images: Sequence[np.ndarray],
    detection: Detection,
    rng: np.random.Generator,
    aug: Augmentation,
) -> tuple[list[np.ndarray], Detection]:
    """One random flip / rotation / scale / shift / photometric change, applied to every image.

    Rotation, scale and shift move the face *relative to its crop*: warping image and
    keypoints together would be undone by ``face_input``, which levels the eyes and sizes
    the crop from the detection. With keypoints the inverse motion is applied to the
    detection (one interpolation, done by ``face_input``); a ready-made crop is warped.
    Then what cameras and uploads do to a photo: colour (brightness, contrast, saturation,
    grey), blur and JPEG re-encoding, each image alike, so away from the mask the two views
    differ only where the blur or a JPEG block reaches across the mask's edge.
    """
    flip = rng.random() < aug.flip_p
    degrees = rng.uniform(-aug.max_rotate_deg, aug.max_rotate_deg)
    scale = rng.uniform(*aug.scale)
    shift = rng.uniform(-aug.max_shift, aug.max_shift, 2)
    brightness = rng.uniform(-aug.brightness, aug.brightness) * 255.0
    contrast = rng.uniform(*aug.contrast)
    saturation = rng.uniform(*aug.saturation)
    # drawn after the geometry and colour, so configs without them keep their streams
    if rng.random() < aug.grey_p:
        saturation = 0.0
    blur = rng.uniform(*aug.blur_sigma) if rng.random() < aug.blur_p else 0.0
    quality = int(rng.integers(aug.jpeg_quality[0], aug.jpeg_quality[1] + 1))
    jpeg = rng.random() < aug.jpeg_p

    h, w = images[0].shape[:2]
    out = [np.ascontiguousarray(im[:, ::-1]) if flip else im for im in images]
    if flip:
        detection = flip_detection(detection, w)
    if detection.keypoints is None:
        m = _similarity(np.array([w / 2, h / 2]), degrees, scale, shift * np.array([w, h]))
        out = [
            cv2.warpAffine(im, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            for im in out
        ]
    else:
        x1, y1, x2, y2 = detection.box
        side = max(x2 - x1, y2 - y1)
        m = _similarity(
            np.array([(x1 + x2) / 2, (y1 + y2) / 2]), degrees, scale, shift * side
        )
        detection = _move_detection(detection, cv2.invertAffineTransform(m))
    x1, y1, x2, y2 = detection.box
    sigma = blur * max(x2 - x1, y2 - y1)
    out = [_colour(im, brightness, contrast, saturation) for im in out]
    out = [gaussian_blur(im, sigma) for im in out]
    return [jpeg_roundtrip(im, quality) for im in out] if jpeg else out, detection


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of standard deviation ``sigma`` pixels (under 0.3 px: the image)."""
    if sigma < 0.3:
        return image
    return cv2.GaussianBlur(image, (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REPLICATE)


def jpeg_roundtrip(image: np.ndarray, quality: int) -> np.ndarray:
    """``image`` (RGB uint8) as a JPEG of ``quality`` decodes: blocks, ringing, chroma loss."""
    ok, data = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError(f"JPEG encoding failed for an image of shape {image.shape}")
    return np.ascontiguousarray(cv2.imdecode(data, cv2.IMREAD_COLOR)[..., ::-1])


def _colour(image: np.ndarray, brightness: float, contrast: float, saturation: float) -> np.ndarray:
    if brightness == 0.0 and contrast == 1.0 and saturation == 1.0:
        return image  # what the arithmetic below gives, without its cost on big photos
    x = image.astype(np.float32)
    grey = (x @ _LUMA)[..., None]
    x = grey + saturation * (x - grey)
    x = (x - 128.0) * contrast + 128.0 + brightness
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


class PairedFaceDataset(Dataset[dict[str, torch.Tensor]]):
    """Items: ``unmasked`` / ``masked`` [C, H, W] per ``spec``, ``label``, ``subject``, ``index``
    (and ``teacher_unmasked`` / ``teacher_masked`` per ``teacher_spec`` when given, and
    ``soft_target`` when the records carry one: all of them or none).

    Faces are located by ``record.detection``; else by ``detector`` (once per image and
    worker; prefer ``resolve_detections`` beforehand, which caches on disk); else the image
    is a ready-made face crop. Call ``set_epoch`` every epoch for fresh augmentation and
    fresh synthetic masks (with ``persistent_workers=False`` so workers see it).
    """

    def __init__(
        self,
        records: Sequence[FaceRecord],
        spec: InputSpec,
        *,
        teacher_spec: InputSpec | None = None,
        augment: bool = False,
        seed: int = 0,
        mask_styles: tuple[str, ...] | None = None,
        detector: FaceFinder | None = None,
        augmentation: Augmentation | None = None,
    ) -> None:
        if mask_styles is not None:
            unknown = sorted(set(mask_styles) - set(MASK_STYLES))
            if unknown or not mask_styles:
                raise ValueError(f"mask_styles must be a non-empty subset of {MASK_STYLES}, "
                                 f"got {mask_styles}")
        self.records = list(records)
        with_targets = {r.soft_target is not None for r in self.records}
        if len(with_targets) > 1:
            raise ValueError("some records have a soft_target and some do not")
        self.soft_targets = with_targets == {True}
        self.spec = spec
        self.teacher_spec = teacher_spec
        self.augment = augment
        self.seed = seed
        self.mask_styles = mask_styles
        self.detector = detector
        self.augmentation = augmentation or Augmentation()
        self.epoch = 0
        self.subjects: list[str] = sorted({r.subject for r in self.records})
        self._subject_index = {s: k for k, s in enumerate(self.subjects)}
        self._found: dict[int, Detection] = {}
        self._last_image: tuple[int, np.ndarray] | None = None
        self.whole_image_fallbacks = 0

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def labels(self) -> np.ndarray:
        """All labels in order (for class weights and samplers, without loading images)."""
        return np.array([r.label for r in self.records], dtype=np.int64)

    def _detection(self, index: int, record: FaceRecord, image: np.ndarray) -> Detection:
        if record.detection is not None:
            return record.detection
        if index in self._found:
            return self._found[index]
        found = main_face(self.detector.detect(image)) if self.detector is not None else None
        if found is None:
            found = whole_image_detection(image)
            if self.detector is not None:
                self.whole_image_fallbacks += 1
                LOG.debug("no face found in %s; using it whole", record.name)
        self._found[index] = found
        return found

    def _image(self, index: int) -> np.ndarray:
        """The record's decoded image; the last one is kept (views of a face in a row)."""
        if self._last_image is None or self._last_image[0] != index:
            self._last_image = (index, load_rgb(self.records[index]))
        return self._last_image[1]

    def masked_view(
        self, index: int, image: np.ndarray, detection: Detection, epoch: int
    ) -> np.ndarray:
        """The masked twin of ``image``: the real photo if there is one, else synthetic."""
        record = self.records[index]
        if record.masked_path is not None:
            masked = read_rgb(record.masked_path)
            if masked.shape != image.shape:  # keep the pair pixel-aligned
                masked = cv2.resize(masked, image.shape[1::-1], interpolation=cv2.INTER_AREA)
            return masked
        return render_mask(image, mask_keypoints(detection),
                           rng=np.random.default_rng([self.seed, index, epoch, 0]),
                           style=self.mask_style(index, epoch)).image

    def mask_style(self, index: int, epoch: int) -> str:
        """The styles take turns epoch by epoch, from an offset drawn per face, so any
        ``len(styles)`` consecutive epochs (or banked views) show a face in every style and
        an unaugmented split is spread evenly over them."""
        styles = self.mask_styles or MASK_STYLES
        offset = int(np.random.default_rng([self.seed, index]).integers(len(styles)))
        return styles[(offset + epoch) % len(styles)]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.item(index, self.epoch)

    def item(self, index: int, epoch: int) -> dict[str, torch.Tensor]:
        """Item ``index`` as epoch ``epoch`` shows it (a pure function of both and the seed)."""
        if not 0 <= index < len(self.records):
            raise IndexError(index)
        record = self.records[index]
        image = self._image(index)
        detection = self._detection(index, record, image)
        masked = self.masked_view(index, image, detection, epoch)
        if self.augment:
            rng = np.random.default_rng([self.seed, index, epoch, 1])
            (image, masked), detection = augment_pair(
                [image, masked], detection, rng, self.augmentation
            )
        item = {
            "unmasked": torch.from_numpy(face_input(image, detection, self.spec)),
            "masked": torch.from_numpy(face_input(masked, detection, self.spec)),
            "label": torch.tensor(record.label, dtype=torch.long),
            "subject": torch.tensor(self._subject_index[record.subject], dtype=torch.long),
            "index": torch.tensor(index, dtype=torch.long),
        }
        if self.teacher_spec is not None:
            item["teacher_unmasked"] = torch.from_numpy(
                face_input(image, detection, self.teacher_spec)
            )
            item["teacher_masked"] = torch.from_numpy(
                face_input(masked, detection, self.teacher_spec)
            )
        if record.soft_target is not None:
            item["soft_target"] = torch.from_numpy(np.asarray(record.soft_target, np.float32))
        return item
