"""Grad-CAM explanations of the served student: what ``POST /explanations/msde`` answers.

An explanation is a prediction (the same request formats, limits, errors and per-face
fields, produced by ``Pipeline.run``) whose faces also carry a heatmap: Grad-CAM of the
predicted expression, or of the expression named in the request, computed on the served
TorchScript student itself. Scripted modules take no forward hooks, so the student exports
two methods (``training.models.Student``): ``cam_features(x)``, the last spatial feature
map, and ``expression_from_features(fmap)``, the expression logits computed from it. The
map is detached and the head re-run on it, so only the small head is differentiated and
the served weights never need gradients. An archive whose student lacks the methods answers
501 with the error code ``explanations_unsupported``.

Grad-CAM costs a second pass and a backward per face, so at most ``MAX_EXPLAINED_FACES``
faces of a request (its best-scoring detections) get a heatmap; the others are answered
with ``heatmap: null``. The heatmap is drawn in image pixels over the crop the model saw
(``Heatmap.box``), at most ``HEATMAP_MAX_SIDE`` pixels a side: a client stretches it onto
that box without knowing the crop geometry.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch

from handler.align import crop_matrix, face_input, transform_points
from handler.decode import InputError
from handler.pipeline import Pipeline, RequestOutcome, Timings
from handler.schema import ErrorResponse, ExplanationResponse, Heatmap, KServeV1Explanations

LOG = logging.getLogger(__name__)

MAX_EXPLAINED_FACES = 8
HEATMAP_MAX_SIDE = 96
UNSUPPORTED = "explanations_unsupported"
CAM_METHODS = ("cam_features", "expression_from_features")


def supports_explanations(model: Any) -> bool:
    return all(callable(getattr(model, name, None)) for name in CAM_METHODS)


def grad_cam(model: Any, x: torch.Tensor, targets: Sequence[int]) -> np.ndarray:
    """Grad-CAM maps [N, h, w] (>= 0, unnormalised) of class ``targets[i]`` for face ``i``.

    ``relu(sum_k mean_xy(d logit / d A_k) * A_k)`` over the channels ``A_k`` of
    ``cam_features``: the definition ``pytorch_grad_cam.GradCAM`` implements with hooks.
    """
    device = _device(model)
    with torch.no_grad():
        fmap = model.cam_features(x.to(device)).float()
    fmap = fmap.detach().requires_grad_(True)
    index = torch.as_tensor(list(targets), dtype=torch.long, device=fmap.device)
    with torch.enable_grad():
        logits = model.expression_from_features(fmap)
        score = logits.gather(1, index[:, None]).sum()
        (grads,) = torch.autograd.grad(score, fmap)
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * fmap.detach()).sum(dim=1))
    return cam.cpu().numpy()


def _device(model: Any) -> torch.device:
    params = getattr(model, "parameters", None)
    first = next(iter(params()), None) if callable(params) else None
    return first.device if first is not None else torch.device("cpu")


def heatmap_image(
    cam: np.ndarray,
    matrix: np.ndarray,
    input_hw: tuple[int, int],
    image_hw: tuple[int, int],
    max_side: int = HEATMAP_MAX_SIDE,
) -> tuple[tuple[float, float, float, float], np.ndarray]:
    """A face's CAM in image pixels: (box, uint8 map) over the crop's bounding box.

    ``matrix`` maps image pixels to crop pixels (``handler.align.crop_matrix``); the map is
    the CAM upsampled to the crop (as Grad-CAM shows it), carried back through the crop's
    inverse affine (roll and scale included) and scaled so this face's peak is 255.
    """
    in_h, in_w = input_hw
    img_h, img_w = image_hw
    up = cv2.resize(np.asarray(cam, np.float32), (in_w, in_h), interpolation=cv2.INTER_LINEAR)
    corners = np.array([[0, 0], [in_w, 0], [in_w, in_h], [0, in_h]], dtype=np.float64)
    in_image = transform_points(corners, cv2.invertAffineTransform(matrix))
    x1, y1 = max(0.0, float(in_image[:, 0].min())), max(0.0, float(in_image[:, 1].min()))
    x2 = min(float(img_w), float(in_image[:, 0].max()))
    y2 = min(float(img_h), float(in_image[:, 1].max()))
    bw, bh = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
    scale = min(1.0, max_side / max(bw, bh))
    out_w, out_h = max(1, round(bw * scale)), max(1, round(bh * scale))
    sx, sy = bw / out_w, bh / out_h
    # heatmap pixel index -> image pixel index -> crop pixel index
    to_image = np.array([[sx, 0.0, x1 + 0.5 * sx - 0.5], [0.0, sy, y1 + 0.5 * sy - 0.5]])
    to_crop = np.hstack([matrix[:, :2] @ to_image[:, :2], (matrix[:, :2] @ to_image[:, 2:])
                         + matrix[:, 2:]])
    heat = cv2.warpAffine(
        up, to_crop, (out_w, out_h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT, borderValue=0.0,
    )
    peak = float(up.max())
    scaled = heat / peak * 255.0 if peak > 0 else np.zeros_like(heat)
    return (x1, y1, x2, y2), np.clip(scaled + 0.5, 0, 255).astype(np.uint8)


def encode_png(gray: np.ndarray) -> str:
    ok, buf = cv2.imencode(".png", gray)
    if not ok:
        raise RuntimeError("could not encode a heatmap PNG")
    return base64.b64encode(buf.tobytes()).decode("ascii")


def requested_target(raw: dict[str, Any], labels: Sequence[str]) -> str | None:
    """The expression the client asked to explain: ``"target"`` in a JSON body or form.

    TorchServe passes no query parameters of raw bodies to handlers, so a raw image body
    always explains the predicted expression.
    """
    value: Any = raw.get("target")
    body = raw.get("body")
    if value is None and isinstance(body, (bytes, bytearray, str)):
        if body[:64].lstrip()[:1] in (b"{", "{"):  # a JSON object sent without its type
            try:
                body = json.loads(body)
            except (ValueError, RecursionError):
                return None  # the pipeline answers the bad JSON itself
    if value is None and isinstance(body, dict):
        value = body.get("target")
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("utf-8", "replace")
    if not isinstance(value, str) or value.strip() not in labels:
        raise InputError(
            "bad_request", f"'target' must be one of {', '.join(labels)}; got {value!r:.40}"
        )
    return value.strip()


@dataclass(frozen=True)
class _Face:
    """One face picked for a heatmap: where it sits in the batch's answers."""

    outcome: int
    image: int
    face: int
    score: float


class Explainer:
    """Explanations over a loaded ``Pipeline``: its answers, plus a heatmap per face."""

    def __init__(self, pipeline: Pipeline, max_faces: int = MAX_EXPLAINED_FACES) -> None:
        self.pipeline = pipeline
        self.max_faces = max_faces

    def run(
        self, inputs: Sequence[dict[str, Any]], timings: Timings | None = None
    ) -> list[RequestOutcome]:
        if not supports_explanations(self.pipeline.model):
            err = ErrorResponse.model_validate({"error": {
                "code": UNSUPPORTED,
                "message": "this model archive's student exports no Grad-CAM methods "
                f"({', '.join(CAM_METHODS)}); re-export it with the current training package",
            }}).model_dump(mode="json")
            return [RequestOutcome(501, err) for _ in inputs]
        labels = self.pipeline.metadata.labels
        targets: list[str | None] = []
        outcomes: list[RequestOutcome | None] = []
        for raw in inputs:
            try:
                targets.append(requested_target(raw, labels))
                outcomes.append(None)
            except InputError as err:
                targets.append(None)
                outcomes.append(RequestOutcome(err.status, err.body(), error=err))
        todo = [i for i, o in enumerate(outcomes) if o is None]
        answered = self.pipeline.run([inputs[i] for i in todo], timings, keep_images=True)
        for i, outcome in zip(todo, answered):
            outcomes[i] = outcome
        done = [o for o in outcomes if o is not None]  # every request has its outcome now
        self._add_heatmaps(done, targets)
        return done

    def _add_heatmaps(self, outcomes: list[RequestOutcome], targets: list[str | None]) -> None:
        picked: list[_Face] = []
        for r, outcome in enumerate(outcomes):
            if outcome.status != 200:
                continue
            faces = [
                _Face(r, j, k, det.score)
                for j, kept in enumerate(outcome.images)
                for k, det in enumerate(kept.detections)
            ]
            picked += sorted(faces, key=lambda f: -f.score)[: self.max_faces]
        heatmaps = self._heatmaps(outcomes, targets, picked)
        for r, outcome in enumerate(outcomes):
            if outcome.status != 200:
                continue
            explained = [
                ExplanationResponse.model_validate({**answer, "faces": [
                    {**face, "heatmap": heatmaps.get((r, j, k))}
                    for k, face in enumerate(answer["faces"])
                ]})
                for j, answer in enumerate(_answers(outcome.body))
            ]
            outcome.body = (
                KServeV1Explanations(explanations=explained)
                if "predictions" in outcome.body else explained[0]
            ).model_dump(mode="json")
            outcome.images = []  # the pixels are no longer needed

    def _heatmaps(
        self, outcomes: list[RequestOutcome], targets: list[str | None], picked: list[_Face]
    ) -> dict[tuple[int, int, int], Heatmap]:
        if not picked:
            return {}
        spec = self.pipeline.spec
        labels = self.pipeline.metadata.labels
        _, in_h, in_w = spec.input_size
        rows, classes, geometry = [], [], []
        for f in picked:
            kept = outcomes[f.outcome].images[f.image]
            image, det = kept.array, kept.detections[f.face]
            face = _answers(outcomes[f.outcome].body)[f.image]["faces"][f.face]
            target = targets[f.outcome] or _top_expression(face)
            rows.append(face_input(image, det, spec))
            classes.append(labels.index(target))
            geometry.append((image, det, target, kept.scale))
        chunk = self.pipeline.config.max_faces_per_batch
        batch = torch.from_numpy(np.stack(rows))
        cams = np.concatenate([
            grad_cam(self.pipeline.model, batch[s : s + chunk], classes[s : s + chunk])
            for s in range(0, len(rows), chunk)
        ])
        out: dict[tuple[int, int, int], Heatmap] = {}
        for f, cam, (image, det, target, (sx, sy)) in zip(picked, cams, geometry):
            matrix = crop_matrix(det, (in_h, in_w), spec.crop)
            (x1, y1, x2, y2), gray = heatmap_image(cam, matrix, (in_h, in_w), image.shape[:2])
            box = (x1 * sx, y1 * sy, x2 * sx, y2 * sy)  # into the client's pixels
            out[(f.outcome, f.image, f.face)] = Heatmap(
                target=target,
                box=tuple(round(v, 1) for v in box),  # type: ignore[arg-type]
                width=gray.shape[1],
                height=gray.shape[0],
                png=encode_png(gray),
            )
        return out


def _answers(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The prediction(s) in a 200 body: one, or a KServe v1 envelope's list."""
    return body["predictions"] if "predictions" in body else [body]


def _top_expression(face: dict[str, Any]) -> str:
    """The predicted expression, also when the answer abstained ('uncertain')."""
    probabilities: dict[str, float] = face["expression"]["probabilities"]
    return max(probabilities, key=lambda name: probabilities[name])
