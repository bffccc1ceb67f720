"""The serving pipeline, free of TorchServe: decode -> detect -> align -> batch -> model -> respond.

``Pipeline.run`` takes every request of a TorchServe batch and runs ONE forward pass over all
faces of all good requests; a bad request gets its own ``InputError`` and never fails the
others. ``handler.msde_handler`` is only the adapter around this.

Memory is bounded by design: every image's header is read first and the decoded pixels of
each request and of the whole batch are checked against their budgets before any pixel is
decoded; then images are decoded one at a time, at working resolution, and each is dropped
as soon as its faces are cropped (what the forward pass needs is a few KB per face).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from handler.align import face_input, whole_image_detection
from handler.decode import (
    DecodedImage,
    DecodeLimits,
    InputError,
    OpenedImage,
    ParsedRequest,
    batch_busy_error,
    check_pixel_budget,
    decode_opened,
    open_image,
    parse_request,
)
from handler.faces import Detection
from handler.contract import Calibration, ModelMetadata
from handler.postprocess import face_results
from handler.schema import (
    ImageInfo,
    KServeV1Response,
    ModelInfo,
    PredictionResponse,
)

LOG = logging.getLogger(__name__)


class Detector(Protocol):
    def detect(self, image: np.ndarray) -> list[Detection]: ...


class ServingConfig(BaseModel):
    """The ``handler:`` section of model-config.yaml (limits and behaviour)."""

    model_config = ConfigDict(extra="forbid")

    threads: int = Field(1, ge=1, le=64, description="torch intra-op threads per worker")
    max_image_bytes: int = Field(20 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(40_000_000, ge=64)
    max_image_side: int = Field(12_000, ge=16)
    max_images_per_request: int = Field(16, ge=1, description="KServe v1 instances per request")
    max_faces_per_batch: int = Field(
        64, ge=1, description="faces per forward chunk (memory bound); all faces are answered"
    )
    max_request_pixels: int = Field(
        64_000_000, ge=64, description="decoded pixels of all images of one request (413 above)"
    )
    max_batch_pixels: int = Field(
        128_000_000, ge=64, description="decoded pixels of one TorchServe batch; requests "
        "beyond it are answered 503 (retry) before anything is decoded"
    )
    working_side: int | None = Field(
        1024, ge=256, description="images are decoded at 1/2, 1/4 or 1/8 scale while their "
        "long side stays at least this (JPEG: DCT scaling); null = full resolution"
    )
    mask_reliable_probability: float = Field(0.8, ge=0.5, le=1.0)
    abstain_threshold: dict[str, float] | None = Field(
        None,
        description="per mask state ('unmasked', 'masked'): overrides the thresholds fitted "
        "into the model's metadata (an expression below it is answered 'uncertain')",
    )
    detector: dict[str, Any] = Field(default_factory=dict)

    @field_validator("abstain_threshold")
    @classmethod
    def _thresholds(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        if v is not None:
            Calibration(abstain_threshold=v)  # same rules as fitted thresholds
        return v

    def limits(self) -> DecodeLimits:
        return DecodeLimits(
            max_bytes=self.max_image_bytes,
            max_pixels=self.max_image_pixels,
            max_side=self.max_image_side,
            max_images=self.max_images_per_request,
            max_request_pixels=self.max_request_pixels,
            max_batch_pixels=self.max_batch_pixels,
        )


@dataclass
class Timings:
    """Seconds spent per stage for one batch (per image for decode/detect/crop)."""

    decode: list[float] = field(default_factory=list)
    detect: list[float] = field(default_factory=list)
    crop: list[float] = field(default_factory=list)
    forward: float = 0.0
    postprocess: float = 0.0


@dataclass
class RequestOutcome:
    """The answer to one request: a JSON-able body and its HTTP status."""

    status: int
    body: dict[str, Any]
    error: InputError | None = None
    faces: list[dict[str, Any]] = field(default_factory=list)
    # the decoded images and their detections, in answer order (``run(keep_images=True)``)
    images: list[KeptImage] = field(default_factory=list)


@dataclass
class KeptImage:
    """A decoded image kept for a second look (explanations), at its working resolution.

    ``detections`` are in ``array``'s pixels; ``scale`` multiplies them into the client's
    (full-resolution) pixels.
    """

    array: np.ndarray
    detections: list[Detection]
    scale: tuple[float, float]


@dataclass
class _Image:
    """What is kept of an image once its faces are cropped (its pixels are not)."""

    detections: list[Detection]  # in pixels of the full-resolution image
    width: int
    height: int
    first_face: int  # row of its first face in the batch tensor
    kept: KeptImage | None = None  # only when the caller asked to keep the pixels


Model = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class Pipeline:
    """Holds the loaded model, metadata and detector; everything else is per call."""

    def __init__(
        self,
        model: Model,
        metadata: ModelMetadata,
        detector: Detector,
        config: ServingConfig | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        self.model = model
        self.device = torch.device(device)
        self.config = config or ServingConfig()
        if self.config.abstain_threshold is not None:
            calibration = metadata.calibration.model_copy(
                update={"abstain_threshold": self.config.abstain_threshold}
            )
            metadata = metadata.model_copy(update={"calibration": calibration})
        self.metadata = metadata
        self.spec = metadata.input_spec()
        self.detector = detector
        self.limits = self.config.limits()

    def parse(self, inputs: Sequence[dict[str, Any]]) -> list[ParsedRequest | InputError]:
        out: list[ParsedRequest | InputError] = []
        for raw in inputs:
            try:
                out.append(parse_request(raw, self.limits))
            except InputError as err:
                out.append(err)
        return out

    def run(
        self,
        inputs: Sequence[dict[str, Any]],
        timings: Timings | None = None,
        keep_images: bool = False,
    ) -> list[RequestOutcome]:
        timings = timings if timings is not None else Timings()
        parsed = self.parse(inputs)
        failed: dict[int, InputError] = {}
        opened = self._admit(parsed, failed)
        rows: list[np.ndarray] = []
        per_request: dict[int, list[_Image]] = {}
        for r, items in opened.items():
            first_row = len(rows)
            try:
                per_request[r] = [self._faces(img, detect, rows, timings, keep_images)
                                  for img, detect in items]
            except InputError as err:
                failed[r] = err
                del rows[first_row:]
            items.clear()  # drop the encoded images of this request as we go
        expr, mask = self._forward(rows, timings)
        del rows
        t0 = time.perf_counter()
        outcomes: list[RequestOutcome] = []
        for r, req in enumerate(parsed):
            if r in failed:
                err = failed[r]
                outcomes.append(RequestOutcome(err.status, err.body(), error=err))
                continue
            assert isinstance(req, ParsedRequest)
            predictions = [self._respond(img, expr, mask) for img in per_request[r]]
            if req.envelope == "kserve_v1":
                body = KServeV1Response(predictions=predictions).model_dump(mode="json")
            else:
                body = predictions[0].model_dump(mode="json")
            faces = [f.model_dump(mode="json") for p in predictions for f in p.faces]
            kept = [img.kept for img in per_request[r] if img.kept is not None]
            outcomes.append(RequestOutcome(200, body, faces=faces, images=kept))
        timings.postprocess += time.perf_counter() - t0
        return outcomes

    def _admit(
        self, parsed: list[ParsedRequest | InputError], failed: dict[int, InputError]
    ) -> dict[int, list[tuple[OpenedImage, bool]]]:
        """Read every header and apply the pixel budgets, before any pixel is decoded.

        Requests are admitted in batch order; one that would overflow what is left of the
        batch budget is answered 503 (it fits alone: a retry succeeds), later smaller ones
        may still fit.
        """
        admitted: dict[int, list[tuple[OpenedImage, bool]]] = {}
        batch_pixels = 0
        for r, req in enumerate(parsed):
            if isinstance(req, InputError):
                failed[r] = req
                continue
            try:
                images = [(open_image(item.data, self.limits, self.config.working_side),
                           item.detect) for item in req.images]
                pixels = sum(img.decoded_pixels for img, _ in images)
                check_pixel_budget(pixels, self.limits)
                if batch_pixels + pixels > self.limits.max_batch_pixels:
                    raise batch_busy_error(self.limits)
            except InputError as err:
                failed[r] = err
                continue
            batch_pixels += pixels
            admitted[r] = images
        return admitted

    def _faces(
        self, opened: OpenedImage, detect: bool, rows: list[np.ndarray], timings: Timings,
        keep: bool = False,
    ) -> _Image:
        """Decode, detect and crop one image; append its faces' model inputs to ``rows``."""
        t0 = time.perf_counter()
        decoded = decode_opened(opened)
        t1 = time.perf_counter()
        array = decoded.array
        dets = self.detector.detect(array) if detect else [whole_image_detection(array)]
        t2 = time.perf_counter()
        first = len(rows)
        rows.extend(face_input(array, d, self.spec) for d in dets)
        timings.decode.append(t1 - t0)
        timings.detect.append(t2 - t1)
        timings.crop.append(time.perf_counter() - t2)
        kept = KeptImage(array, dets, decoded.scale) if keep else None
        return _Image(_to_full_resolution(dets, decoded), decoded.width, decoded.height, first,
                      kept)

    def _forward(
        self, rows: list[np.ndarray], timings: Timings
    ) -> tuple[np.ndarray, np.ndarray]:
        c, h, w = self.spec.input_size
        if not rows:
            return np.zeros((0, len(self.metadata.labels))), np.zeros((0, 2))
        t0 = time.perf_counter()
        batch = torch.from_numpy(np.stack(rows)).reshape(len(rows), c, h, w).to(self.device)
        chunk = self.config.max_faces_per_batch
        exprs, masks = [], []
        with torch.inference_mode():
            for start in range(0, len(rows), chunk):
                e, m = self.model(batch[start : start + chunk])
                exprs.append(e.float().cpu().numpy())
                masks.append(m.float().cpu().numpy())
        timings.forward += time.perf_counter() - t0
        return np.concatenate(exprs), np.concatenate(masks)

    def _respond(self, img: _Image, expr: np.ndarray, mask: np.ndarray) -> PredictionResponse:
        lo, hi = img.first_face, img.first_face + len(img.detections)
        faces = face_results(
            img.detections,
            expr[lo:hi],
            mask[lo:hi],
            labels=self.metadata.labels,
            mask_labels=self.metadata.mask_labels,
            calibration=self.metadata.calibration,
            reliable_probability=self.config.mask_reliable_probability,
        )
        return PredictionResponse(
            faces=faces,
            image=ImageInfo(width=img.width, height=img.height),
            model=ModelInfo(name=self.metadata.name, version=self.metadata.version),
        )


def _to_full_resolution(dets: list[Detection], decoded: DecodedImage) -> list[Detection]:
    """Detections in working-resolution pixels -> the client's (full-resolution) pixels."""
    sx, sy = decoded.scale
    if sx == 1.0 and sy == 1.0:
        return dets
    factor = np.array([sx, sy], dtype=np.float32)
    return [
        Detection(
            box=(d.box[0] * sx, d.box[1] * sy, d.box[2] * sx, d.box[3] * sy),
            score=d.score,
            keypoints=None if d.keypoints is None else d.keypoints * factor,
        )
        for d in dets
    ]
