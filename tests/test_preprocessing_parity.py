"""What the student sees in training is exactly what it sees in production.

Serving decodes request bytes (``handler.decode``), crops (``handler.align.face_input``) and
batches; training reads every image file through the same decoder and crops with the same
function. These tests run a photo through both and compare the tensors bit for bit: a plain
PNG, a photo that needs EXIF rotation and alpha compositing, and a face of the face pool
through the data source the served model is trained and evaluated on.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from handler.contract import read_metadata
from handler.decode import decode_image
from handler.faces import Detection
from handler.pipeline import Pipeline
from testkit.imaging import encode
from training.data import FaceRecord, PairedFaceDataset


class RecordingModel(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.seen.append(x.clone())
        return self.inner(x)


class GivenFaces:
    """A detector that answers what it is told: both paths crop the same detection."""

    def __init__(self, faces: list[Detection]) -> None:
        self.faces = faces

    def detect(self, image: np.ndarray) -> list[Detection]:
        return self.faces


def served_tensor(student_pt: Path, body: bytes, detector: object) -> torch.Tensor:
    meta = read_metadata(student_pt)
    model = RecordingModel(torch.jit.load(str(student_pt)))
    (outcome,) = Pipeline(model, meta, detector).run([{"body": body}])  # type: ignore[arg-type]
    assert outcome.status == 200 and outcome.body["faces"]
    return model.seen[0][0]  # the first (best-scoring) face


def trained_tensor(student_pt: Path, record: FaceRecord) -> torch.Tensor:
    return PairedFaceDataset([record], read_metadata(student_pt).input_spec())[0]["unmasked"]


@pytest.fixture(scope="module")
def detector() -> object:
    from handler.detect import FaceDetector
    from training.assets import fetch

    return FaceDetector(fetch("blazeface") / "ONNX")


def test_training_and_serving_give_the_model_identical_tensors(
    tiny_student_pt: Path, astronaut: np.ndarray, tmp_path: Path, detector: object
) -> None:
    png = encode(astronaut, "PNG")  # lossless: both paths decode the same pixels
    (tmp_path / "astronaut.png").write_bytes(png)
    served = served_tensor(tiny_student_pt, png, detector)
    record = FaceRecord(label=3, subject="astronaut", image_path=tmp_path / "astronaut.png",
                        detection=detector.detect(astronaut)[0])  # type: ignore[attr-defined]
    assert torch.equal(trained_tensor(tiny_student_pt, record), served)


def test_exif_rotation_and_transparency_are_undone_the_same_way(
    tiny_student_pt: Path, astronaut: np.ndarray, tmp_path: Path, detector: object
) -> None:
    upright = astronaut[:, :400]  # not square, so a missed rotation shows in the shape
    stored = np.dstack([np.rot90(upright), np.full((400, 512), 255, np.uint8)])
    stored[-30:, :, 3] = 0  # transparent: the upright image's left band, composited on white
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    buf = io.BytesIO()
    Image.fromarray(stored, "RGBA").save(buf, "WEBP", lossless=True, exif=exif.tobytes())
    photo = tmp_path / "rotated.webp"
    photo.write_bytes(buf.getvalue())

    decoded = decode_image(buf.getvalue())
    assert decoded.shape == upright.shape and (decoded[:, :30] == 255).all()
    np.testing.assert_array_equal(decoded[:, 30:], upright[:, 30:])
    face = detector.detect(decoded)[0]  # type: ignore[attr-defined]
    served = served_tensor(tiny_student_pt, buf.getvalue(), GivenFaces([face]))
    record = FaceRecord(label=3, subject="astronaut", image_path=photo, detection=face)
    assert torch.equal(trained_tensor(tiny_student_pt, record), served)


def test_the_face_pool_trains_and_evaluates_on_the_served_tensor(
    tiny_student_pt: Path, astronaut: np.ndarray, tmp_path: Path
) -> None:
    """Face pool -> records -> model input, as the served default model is built."""
    from training.config import TrainConfig
    from training.data import DataConfig, load_records
    from training.evaluate.run import eval_dataset

    data = DataConfig(layout="face_pool", root=tmp_path / "pool", sources=("astronaut",))
    (record,) = load_records(data)
    assert record.split == "test" and record.subject == "person/eileen_collins"
    served = served_tensor(tiny_student_pt, encode(astronaut, "PNG"),
                           GivenFaces([record.detection]))  # type: ignore[list-item]
    assert torch.equal(trained_tensor(tiny_student_pt, record), served)
    spec = read_metadata(tiny_student_pt).input_spec()
    evaluated = eval_dataset([record], spec, TrainConfig(data=data))[0]["unmasked"]
    assert torch.equal(evaluated, served)
