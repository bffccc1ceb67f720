"""TorchServe adapter: load the archive's student and detector, answer each request on its own.

Everything that is not TorchServe-specific lives in ``handler.pipeline`` and is tested
without TorchServe. The archive (.mar) holds this package as ``handler/``, the student as
``msde_student.pt`` (metadata.json embedded), the detector weights in ``blazeface/`` and
model-config.yaml, whose ``handler:`` section is validated here.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from handler.contract import METADATA_FILE, ModelMetadata
from handler.device import CPU, Placement, placement_for
from handler.explain import Explainer
from handler.pipeline import Pipeline, RequestOutcome, ServingConfig, Timings

LOG = logging.getLogger(__name__)

STUDENT_FILE = "msde_student.pt"
DETECTOR_DIR = "blazeface"
JSON = "application/json"


class MsdeHandler:
    """Entry point named by ``--handler``; one instance per TorchServe worker."""

    def __init__(self) -> None:
        self.pipeline: Pipeline | None = None
        self.explainer: Explainer | None = None
        self.metrics: Any = None
        self.initialized = False

    def initialize(self, context: Any) -> None:
        model_dir = Path(context.system_properties["model_dir"])
        raw_config = (getattr(context, "model_yaml_config", None) or {}).get("handler", {})
        try:
            config = ServingConfig.model_validate(raw_config)
        except ValidationError as exc:
            raise ValueError(f"invalid 'handler:' section in model-config.yaml: {exc}") from None
        torch.set_num_threads(config.threads)
        placement = placement_for(context.system_properties)
        self.pipeline = load_pipeline(model_dir, config, placement)
        self.explainer = Explainer(self.pipeline)
        self.metrics = getattr(context, "metrics", None)
        meta = self.pipeline.metadata
        self._emit("msde_model_info", 1, [meta.version, meta.architecture])
        self.warm_up()
        self.initialized = True
        LOG.info("msde %s (%s) ready on %s; config %s", meta.version, meta.architecture,
                 placement.torch_device, config)

    def warm_up(self) -> None:
        """One forward pass at load, so the first client does not pay for lazy init."""
        assert self.pipeline is not None
        c, h, w = self.pipeline.spec.input_size
        with torch.inference_mode():
            self.pipeline.model(torch.zeros(1, c, h, w, device=self.pipeline.device))

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[str]:
        """Answer a TorchServe batch; predictions and explanations can share one batch.

        The frontend sets the request header ``explain`` to "True" for
        ``POST /explanations/{model}`` (and the KServe ``:explain`` verbs) and to "False"
        otherwise, per request.
        """
        assert self.pipeline is not None, "initialize() was not called"
        explain = [context.get_request_header(i, "explain") == "True" for i in range(len(data))]
        outcomes: list[RequestOutcome | None] = [None] * len(data)
        for wanted, answer in ((False, self.predict_handle), (True, self.explain_handle)):
            idx = [i for i, e in enumerate(explain) if e == wanted]
            if idx:
                for i, outcome in zip(idx, answer([data[i] for i in idx])):
                    outcomes[i] = outcome
        responses = []
        for idx, outcome in enumerate(outcomes):
            assert outcome is not None
            context.set_response_content_type(idx, JSON)
            if outcome.status != 200:
                phrase = str(outcome.body.get("error", {}).get("message", "error"))
                context.set_response_status(outcome.status, phrase, idx)
            responses.append(json.dumps(outcome.body))
        return responses

    def predict_handle(self, data: list[dict[str, Any]]) -> list[RequestOutcome]:
        assert self.pipeline is not None
        start = time.perf_counter()
        timings = Timings()
        try:
            outcomes = self.pipeline.run(data, timings)
        except Exception:  # the model itself failed: every request of the batch gets a 500
            LOG.exception("inference failed for a batch of %d", len(data))
            outcomes = _internal_errors(len(data), "inference failed")
        self._record(outcomes, timings, time.perf_counter() - start)
        return outcomes

    def explain_handle(self, data: list[dict[str, Any]]) -> list[RequestOutcome]:
        """Grad-CAM explanations (``handler.explain``), counted apart from predictions."""
        assert self.explainer is not None
        start = time.perf_counter()
        try:
            outcomes = self.explainer.run(data)
        except Exception:
            LOG.exception("explanation failed for a batch of %d", len(data))
            outcomes = _internal_errors(len(data), "explanation failed")
        if self.metrics is not None:
            self._emit("msde_explanation_seconds", time.perf_counter() - start)
            for outcome in outcomes:
                self._emit("msde_explanations_total", 1, [str(outcome.status)])
        return outcomes

    # -- metrics -----------------------------------------------------------------------
    def _record(self, outcomes: list[RequestOutcome], timings: Timings, total: float) -> None:
        if self.metrics is None:
            return
        for value in timings.decode:
            self._emit("msde_decode_seconds", value)
        for value in timings.detect:
            self._emit("msde_detect_seconds", value)
        if timings.forward:
            self._emit("msde_forward_seconds", timings.forward)
        self._emit("msde_handler_seconds", total)
        for outcome in outcomes:
            self._emit("msde_requests_total", 1, [str(outcome.status)])
            if outcome.error is not None:
                self._emit("msde_rejected_inputs_total", 1, [outcome.error.code])
                continue
            if outcome.status != 200:
                continue
            self._emit("msde_faces_per_request", len(outcome.faces))
            if not outcome.faces:
                self._emit("msde_requests_no_face_total", 1)
            for face in outcome.faces:
                state = face["mask"]["label"]
                self._emit("msde_faces_total", 1, [state])
                self._emit("msde_expressions_total", 1, [state, face["expression"]["label"]])

    def _emit(self, name: str, value: float, dims: list[str] | None = None) -> None:
        try:
            metric = self.metrics.get_metric(name, _metric_type(name))
            metric.add_or_update(value, [self._model_name(), *(dims or [])])
        except Exception:  # metrics must never fail a prediction
            LOG.warning("could not emit metric %s", name, exc_info=True)

    def _model_name(self) -> str:
        return self.pipeline.metadata.name if self.pipeline else "msde"


def _internal_errors(n: int, message: str) -> list[RequestOutcome]:
    body = {"error": {"code": "internal_error", "message": message}}
    return [RequestOutcome(500, body) for _ in range(n)]


def _metric_type(name: str) -> Any:
    from ts.metrics.metric_type_enum import MetricTypes

    if name.endswith("_seconds") or name == "msde_faces_per_request":
        return MetricTypes.HISTOGRAM
    if name == "msde_model_info":
        return MetricTypes.GAUGE
    return MetricTypes.COUNTER


def load_pipeline(
    model_dir: Path, config: ServingConfig, placement: Placement = CPU
) -> Pipeline:
    """Student (TorchScript only, never pickle) + metadata + detector from an unpacked archive,
    placed where ``placement`` says."""
    from handler.detect import DetectorConfig, FaceDetector

    extra = {METADATA_FILE: ""}
    model = torch.jit.load(str(model_dir / STUDENT_FILE), map_location=placement.torch_device,
                           _extra_files=extra)
    model.eval()
    if not extra[METADATA_FILE]:
        raise ValueError(f"{STUDENT_FILE} has no embedded {METADATA_FILE}")
    metadata = ModelMetadata.from_json(extra[METADATA_FILE])
    try:
        det_config = DetectorConfig.model_validate(config.detector)
    except ValidationError as exc:
        raise ValueError(f"invalid 'handler.detector' in model-config.yaml: {exc}") from None
    detector = FaceDetector(model_dir / DETECTOR_DIR, det_config, threads=config.threads,
                            providers=placement.detector_providers)
    return Pipeline(model, metadata, detector, config, device=placement.torch_device)
