"""A stand-in for TorchServe's ``Context``: what ``handler.msde_handler`` reads and writes."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class FakeContext:
    """System properties and model config in; per-request headers in; statuses and types out.

    ``explain[i]`` is request ``i``'s ``explain`` header, as TorchServe's frontend sets it for
    ``POST /explanations/{model}`` (``True``) and predictions (``False``).
    """

    def __init__(
        self,
        model_dir: Path | None = None,
        gpu_id: int | None = None,
        explain: list[bool] | None = None,
        handler_config: dict[str, Any] | None = None,
    ) -> None:
        self.system_properties: dict[str, Any] = {
            "model_dir": str(model_dir) if model_dir is not None else None, "gpu_id": gpu_id,
        }
        self.model_yaml_config = {"handler": handler_config or {"threads": 1}}
        self.metrics = None
        self.explain = explain
        self.statuses: dict[int, int] = {}
        self.types: dict[int, str] = {}

    def get_request_header(self, idx: int, key: str) -> str | None:
        if key != "explain":
            return None
        return str(bool(self.explain and self.explain[idx]))

    def set_response_content_type(self, idx: int, value: str) -> None:
        self.types[idx] = value

    def set_response_status(self, code: int, phrase: str, idx: int) -> None:
        self.statuses[idx] = code
