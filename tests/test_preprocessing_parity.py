"""What the student sees in training is exactly what it sees in production."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from handler.pipeline import Pipeline
from handler.contract import read_metadata
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


def test_training_and_serving_give_the_model_identical_tensors(
    tiny_student_pt: Path, astronaut: np.ndarray, tmp_path: Path
) -> None:
    from handler.detect import FaceDetector
    from training.assets import fetch

    detector = FaceDetector(fetch("blazeface") / "ONNX")
    meta = read_metadata(tiny_student_pt)
    model = RecordingModel(torch.jit.load(str(tiny_student_pt)))
    png = encode(astronaut, "PNG")  # lossless: both paths decode the same pixels
    (tmp_path / "astronaut.png").write_bytes(png)

    (outcome,) = Pipeline(model, meta, detector).run([{"body": png}])
    assert outcome.status == 200 and outcome.body["faces"]
    served = model.seen[0][0]  # the first (best-scoring) face

    detection = detector.detect(astronaut)[0]
    record = FaceRecord(label=3, subject="astronaut", image_path=tmp_path / "astronaut.png",
                        detection=detection)
    item = PairedFaceDataset([record], meta.input_spec(), augment=False)[0]
    assert item["unmasked"].shape == served.shape
    assert torch.equal(item["unmasked"], served)
