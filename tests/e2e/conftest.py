"""Session fixtures: a real archive built with torch-model-archiver, served by real TorchServe."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testkit.server import ServedModel, start_server


@pytest.fixture(scope="session")
def model_store(scaled_down_build: dict[str, Any]) -> Path:
    return Path(scaled_down_build["archive"]).parent


@pytest.fixture(scope="session")
def served_model(model_store: Path, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[ServedModel]:
    served = start_server(model_store, tmp_path_factory.mktemp("torchserve"))
    try:
        yield served
    finally:
        served.stop()
