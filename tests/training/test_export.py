"""msde-export: scripted student + embedded model card, verified against the eager model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from handler.contract import Calibration, read_metadata
from training.export import ParityError, check_parity, main, real_inputs, script_module
from training.models import create_student, default_input_spec


def _checkpoint(tmp_path: Path, name: str) -> Path:
    torch.manual_seed(3)
    student = create_student(name)
    path = tmp_path / f"{name}.pth"
    torch.save(
        {"model": student.state_dict(), "student": name,
         "input_spec": default_input_spec(name).model_dump(mode="json"),
         "config": {"paradigm": "contrastive", "data": {"layout": "synthetic", "seed": 0}},
         "epoch": 4, "metrics": {"val_acc_all": 0.5}},
        path,
    )
    return path


@pytest.mark.parametrize("name", ["mini_xception", "resnet18_narrow"])
def test_export_embeds_metadata_and_matches_eager_outputs(tmp_path: Path, name: str) -> None:
    calib = Calibration(temperature={"unmasked": 1.5, "masked": 2.0},
                        abstain_threshold={"unmasked": 0.3, "masked": 0.4})
    calib_path = tmp_path / "calibration.json"
    calib_path.write_text(calib.model_dump_json())
    out = tmp_path / "model.pt"
    assert main(["--checkpoint", str(_checkpoint(tmp_path, name)), "--out", str(out),
                 "--version", "2.1.0", "--trained-on", "unit-test faces",
                 "--calibration", str(calib_path)]) == 0

    meta = read_metadata(out)
    spec = default_input_spec(name)
    assert meta.version == "2.1.0" and meta.trained_on == "unit-test faces"
    assert meta.architecture == name and meta.input_size == spec.input_size
    assert tuple(meta.mean) == spec.mean and meta.crop == spec.crop
    assert meta.calibration == calib

    eager = create_student(name)
    eager.load_state_dict(torch.load(tmp_path / f"{name}.pth", weights_only=True)["model"])
    eager.eval()
    scripted = torch.jit.load(str(out))
    x = real_inputs(spec)
    with torch.no_grad():
        for a, b in zip(eager(x), scripted(x), strict=True):
            torch.testing.assert_close(b, a, atol=1e-5, rtol=0)
        assert scripted.embed(x).shape == (x.shape[0], eager.embed_dim)


def test_default_trained_on_describes_the_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "model.pt"
    main(["--checkpoint", str(_checkpoint(tmp_path, "resnet18_narrow")), "--out", str(out)])
    text = read_metadata(out).trained_on
    assert "synthetic" in text and "contrastive" in text and "epoch 4" in text


def test_parity_check_fails_loudly_when_outputs_differ() -> None:
    torch.manual_seed(0)
    a, b = create_student("resnet18_narrow").eval(), create_student("resnet18_narrow").eval()
    x = torch.randn(2, 3, 64, 64)
    with pytest.raises(ParityError, match="atol"):
        check_parity(a, torch.jit.script(b), {"random": x})


class _Unscriptable(nn.Module):
    """Uses a Python feature TorchScript rejects (a generator expression)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = sum(t for t in (self.linear(x), self.linear(x)))
        return y, y[:, :2]


def test_unscriptable_model_falls_back_to_trace_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    model = _Unscriptable().eval()
    x = torch.randn(2, 4)
    module, how = script_module(model, x)
    assert how == "trace"
    assert "falling back to torch.jit.trace" in caplog.text
    check_parity(model, module, {"random": x})


def test_real_parity_inputs_follow_the_input_spec() -> None:
    x = real_inputs(default_input_spec("mini_xception"))
    assert x.shape[1:] == (1, 64, 64) and x.dtype == torch.float32
    assert -1.0 - 1e-6 <= float(x.min()) and float(x.max()) <= 1.0 + 1e-6
    assert float(x.std()) > 0.05  # real pixels, not a constant image
