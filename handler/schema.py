"""The response contract (clients depend on these names) and its published JSON Schema.

``python -m handler.schema`` prints the schema; docs/response.schema.json is its committed
copy (a test keeps the two equal).
"""

from __future__ import annotations

import json
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel

Probability = Annotated[float, Field(ge=0.0, le=1.0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MaskResult(_Strict):
    label: str = Field(description="'unmasked' or 'masked'")
    probability: Probability
    state_reliable: bool = Field(
        description="the mask head is confident enough that the state-specific calibration "
        "applies as is (otherwise the two states' calibrations are mixed)"
    )


class ExpressionResult(_Strict):
    label: str = Field(
        description="one of the seven expressions, or 'uncertain' when the calibrated "
        "probability is below the abstention threshold for this mask state"
    )
    probability: Probability = Field(description="probability of the most likely expression")
    probabilities: dict[str, Probability]
    calibrated: bool = Field(description="probabilities went through per-mask-state calibration")


class GroupResult(_Strict):
    label: str = Field(
        description="the most likely group of expressions (e.g. 'negative' = fear, disgust, "
        "sadness, anger; the model's groups are listed in the README), or 'uncertain' when "
        "its probability is below the group threshold of this mask state"
    )
    probability: Probability = Field(
        description="calibrated probability of the most likely group: the sum of its "
        "members' expression probabilities"
    )
    probabilities: dict[str, Probability] = Field(description="every group's probability")


class Answer(_Strict):
    """What to show for the face: the finest answer the model supports for it."""

    level: Literal["expression", "group", "uncertain"] = Field(
        description="'expression' when the seven-class answer passed its threshold, else "
        "'group' when the grouped answer passed its own, else 'uncertain'"
    )
    label: str = Field(description="the expression, the group, or 'uncertain'")
    probability: Probability = Field(
        description="calibrated probability of label (of the top expression when uncertain)"
    )


class FaceResult(_Strict):
    box: tuple[float, float, float, float] = Field(
        description="[x1, y1, x2, y2] in pixels of the original (EXIF-rotated) image"
    )
    score: Probability = Field(description="face detector confidence (1.0 when detect=false)")
    mask: MaskResult
    expression: ExpressionResult
    group: GroupResult | None = Field(
        description="the grouped answer; null when the served model has no grouping"
    )
    answer: Answer


class ImageInfo(_Strict):
    width: int = Field(ge=1)
    height: int = Field(ge=1)


class ModelInfo(_Strict):
    name: str
    version: str


class PredictionResponse(_Strict):
    faces: list[FaceResult]
    image: ImageInfo
    model: ModelInfo


class ErrorDetail(_Strict):
    code: str
    message: str


class ErrorResponse(_Strict):
    error: ErrorDetail


class KServeV1Response(_Strict):
    """Answer to a KServe v1 body ``{"instances": [...]}``: one prediction per instance."""

    predictions: list[PredictionResponse]


class Heatmap(_Strict):
    """Grad-CAM of one face, as a small picture laid over the image at ``box``."""

    target: str = Field(description="the expression explained (the predicted one by default)")
    box: tuple[float, float, float, float] = Field(
        description="[x1, y1, x2, y2] in pixels of the original image that the PNG covers: "
        "the face crop the model saw, clipped to the image (wider than the face box)"
    )
    width: int = Field(ge=1, description="PNG width in pixels (at most 96: stretch it to box)")
    height: int = Field(ge=1, description="PNG height in pixels")
    png: str = Field(
        description="base64 8-bit greyscale PNG: 0 = no evidence, 255 = this face's peak; "
        "all zero when nothing in the face raises the target's score"
    )


class FaceExplanation(FaceResult):
    heatmap: Heatmap | None = Field(
        description="null for faces beyond the per-request cap (the best-scoring faces of "
        "the request are explained first)"
    )


class ExplanationResponse(_Strict):
    """Answer to ``POST /explanations/msde``: a prediction whose faces carry heatmaps."""

    faces: list[FaceExplanation]
    image: ImageInfo
    model: ModelInfo


class KServeV1Explanations(_Strict):
    """Explanation of a KServe v1 body ``{"instances": [...]}``: one per instance."""

    explanations: list[ExplanationResponse]


class AnyResponse(
    RootModel[
        PredictionResponse
        | KServeV1Response
        | ExplanationResponse
        | KServeV1Explanations
        | ErrorResponse
    ]
):
    pass


def json_schema() -> dict[str, object]:
    schema = AnyResponse.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "msde POST /predictions/msde and /explanations/msde response"
    return schema


if __name__ == "__main__":
    print(json.dumps(json_schema(), indent=2, sort_keys=True))
