"""The serving pipeline, free of TorchServe: decode -> detect -> align -> batch -> model -> respond.

``Pipeline.run`` takes every request of a TorchServe batch and runs ONE forward pass over all
faces of all good requests; a bad request gets its own ``InputError`` and never fails the
others. ``handler.msde_handler`` is only the adapter around this.
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
from handler.decode import DecodeLimits, InputError, ParsedRequest, decode_image, parse_request
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
        )


@dataclass
class Timings:
    """Seconds spent per stage for one batch (per request for decode/detect)."""

    decode: list[float] = field(default_factory=list)
    detect: list[float] = field(default_factory=list)
    forward: float = 0.0


@dataclass
class RequestOutcome:
    """The answer to one request: a JSON-able body and its HTTP status."""

    status: int
    body: dict[str, Any]
    error: InputError | None = None
    faces: list[dict[str, Any]] = field(default_factory=list)
    # the decoded images and their detections, in answer order (``run(keep_images=True)``)
    images: list[tuple[np.ndarray, list[Detection]]] = field(default_factory=list)


@dataclass
class _Image:
    request: int
    array: np.ndarray
    detections: list[Detection]
    first_face: int  # row of its first face in the batch tensor


Model = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class Pipeline:
    """Holds the loaded model, metadata and detector; everything else is per call."""

    def __init__(
        self,
        model: Model,
        metadata: ModelMetadata,
        detector: Detector,
        config: ServingConfig | None = None,
    ) -> None:
        self.model = model
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
        images: list[_Image] = []
        rows: list[np.ndarray] = []
        failed: dict[int, InputError] = {}
        per_request: dict[int, list[_Image]] = {}
        for r, req in enumerate(parsed):
            if isinstance(req, InputError):
                failed[r] = req
                continue
            decoded: list[_Image] = []
            try:
                for item in req.images:
                    t0 = time.perf_counter()
                    array = decode_image(item.data, self.limits)
                    t1 = time.perf_counter()
                    dets = self.detector.detect(array) if item.detect else [
                        whole_image_detection(array)
                    ]
                    timings.decode.append(t1 - t0)
                    timings.detect.append(time.perf_counter() - t1)
                    decoded.append(_Image(r, array, dets, 0))
            except InputError as err:
                failed[r] = err
                continue
            for img in decoded:
                img.first_face = len(rows)
                rows.extend(face_input(img.array, d, self.spec) for d in img.detections)
            images.extend(decoded)
            per_request[r] = decoded

        expr, mask = self._forward(rows, timings)
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
            kept = [(img.array, img.detections) for img in per_request[r]] if keep_images else []
            outcomes.append(RequestOutcome(200, body, faces=faces, images=kept))
        return outcomes

    def _forward(
        self, rows: list[np.ndarray], timings: Timings
    ) -> tuple[np.ndarray, np.ndarray]:
        c, h, w = self.spec.input_size
        if not rows:
            return np.zeros((0, len(self.metadata.labels))), np.zeros((0, 2))
        t0 = time.perf_counter()
        batch = torch.from_numpy(np.stack(rows)).reshape(len(rows), c, h, w)
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
        h, w = img.array.shape[:2]
        return PredictionResponse(
            faces=faces,
            image=ImageInfo(width=w, height=h),
            model=ModelInfo(name=self.metadata.name, version=self.metadata.version),
        )
