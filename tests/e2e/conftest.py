"""Session fixtures: a real archive built with torch-model-archiver, served by real TorchServe."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.e2e.server import ServedModel, start_server

REPO = Path(__file__).resolve().parents[2]


def test_model_config(path: Path) -> Path:
    """deploy/model-config.yaml with one worker and a batch window wide enough to batch."""
    config = yaml.safe_load((REPO / "deploy" / "model-config.yaml").read_text())
    config.update(minWorkers=1, maxWorkers=1, batchSize=4, maxBatchDelay=300)
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="session")
def model_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.e2e.student import build_test_student
    from training.archive import build_archive

    root = tmp_path_factory.mktemp("store")
    student = build_test_student(root / "student")
    build_archive(student, root / "model_store",
                  model_config=test_model_config(root / "model-config.yaml"))
    return root / "model_store"


@pytest.fixture(scope="session")
def served_model(model_store: Path, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[ServedModel]:
    served = start_server(model_store, tmp_path_factory.mktemp("torchserve"))
    try:
        yield served
    finally:
        served.stop()
