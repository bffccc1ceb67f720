"""MediaPipe BlazeFace (the "back" 256 model) as a PyTorch module, read from its ONNX file.

Why a port: fine-tuning needs gradients, and the registry ships only the ONNX graph. The
architecture is read from the graph's weights (32 residual blocks of depthwise 3x3 +
pointwise 1x1, four heads), so the port holds no copied numbers; ``skip`` drops residual
blocks to make a cheaper student that starts from the teacher's own weights. TensorFlow's
SAME padding is reproduced exactly, so the port matches the ONNX outputs to float precision
(``tests/training/test_detector.py``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# ONNX node names of the TF export: block k = depthwise_conv2d[_k] then conv2d_{k+1}; the
# stem is conv2d; the heads are conv2d_33 .. conv2d_36.
_DW = re.compile(r"functional_1/depthwise_conv2d(?:_(\d+))?/")
_PW = re.compile(r"functional_1/conv2d(?:_(\d+))?/")
# (head node index, role): 16x16 scores, 8x8 scores, 16x16 boxes, 8x8 boxes
_HEADS = {33: "scores16", 34: "scores8", 35: "boxes16", 36: "boxes8"}


@dataclass(frozen=True)
class BlockSpec:
    """One block: channels in/out, stride (2 = max-pool on the skip path), whether it has a
    skip path at all (the model's last block does not)."""

    cin: int
    cout: int
    stride: int
    residual: bool = True


class BlazeBlock(nn.Module):
    """relu(pointwise(depthwise(x)) + skip(x)); skip pads channels with zeros when they grow."""

    def __init__(self, spec: BlockSpec) -> None:
        super().__init__()
        self.spec = spec
        self.dw = nn.Conv2d(spec.cin, spec.cin, 3, spec.stride, padding=0, groups=spec.cin,
                            bias=False)
        self.pw = nn.Conv2d(spec.cin, spec.cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.spec.stride == 2:
            h = self.dw(F.pad(x, (0, 1, 0, 1)))  # TF SAME for stride 2 on even sizes
            skip = F.max_pool2d(x, 2)
        else:
            h = self.dw(F.pad(x, (1, 1, 1, 1)))
            skip = x
        if not self.spec.residual:
            return F.relu(self.pw(h))
        if self.spec.cout > self.spec.cin:
            skip = F.pad(skip, (0, 0, 0, 0, 0, self.spec.cout - self.spec.cin))
        return F.relu(self.pw(h) + skip)


class BlazeFaceNet(nn.Module):
    """NCHW float input in [-1, 1] -> (scores16, scores8, boxes16, boxes8) as NCHW maps.

    Strides 16 and 32: 2 anchors per cell on the fine map, 6 on the coarse one, 16
    regressed values per anchor, as the ONNX model (``handler.detect`` decodes them).
    """

    def __init__(self, blocks: Iterable[BlockSpec], stem_out: int = 24, width: int = 96,
                 origin: Iterable[int] | None = None) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, stem_out, 5, 2, padding=0)
        specs = list(blocks)
        self.blocks = nn.ModuleList(BlazeBlock(s) for s in specs)
        # each block's index in the full registry model (students skip some)
        self.origin = tuple(origin) if origin is not None else tuple(range(len(specs)))
        # the fine heads read the last stride-16 map, the coarse ones the stride-32 map
        self.split = max(i for i, s in enumerate(specs) if s.stride == 2)
        self.scores16 = nn.Conv2d(width, 2, 1)
        self.boxes16 = nn.Conv2d(width, 32, 1)
        self.scores8 = nn.Conv2d(width, 6, 1)
        self.boxes8 = nn.Conv2d(width, 96, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.forward_tapped(x, ())[0]

    def forward_tapped(self, x: torch.Tensor, taps: Iterable[int]
                       ) -> tuple[tuple[torch.Tensor, ...], dict[int, torch.Tensor]]:
        """The outputs, and the feature maps after the blocks numbered ``taps`` in the
        registry model (what a student is taught to reproduce)."""
        wanted = set(taps)
        feats: dict[int, torch.Tensor] = {}
        x = F.relu(self.stem(F.pad(x, (1, 2, 1, 2))))
        for i, block in enumerate(self.blocks):
            if i == self.split:
                fine = x
            x = block(x)
            if self.origin[i] in wanted:
                feats[self.origin[i]] = x
        return (self.scores16(fine), self.scores8(x), self.boxes16(fine), self.boxes8(x)), feats


def flatten_outputs(out: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, A) score logits and (N, A, 16) regressions, anchors in the ONNX model's order
    (fine grid then coarse, row-major, anchors of a cell adjacent)."""
    s16, s8, b16, b8 = out
    n = s16.shape[0]
    scores = torch.cat([s16.permute(0, 2, 3, 1).reshape(n, -1),
                        s8.permute(0, 2, 3, 1).reshape(n, -1)], dim=1)
    boxes = torch.cat([b16.permute(0, 2, 3, 1).reshape(n, -1, 16),
                       b8.permute(0, 2, 3, 1).reshape(n, -1, 16)], dim=1)
    return scores, boxes


def _onnx_weights(path: Path) -> dict[str, np.ndarray]:
    """Conv weights and biases by role ('stem', 'dw{k}', 'pw{k}', head names), with each
    depthwise conv's stride and whether each block's output is added to a skip path."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    added = {name for node in graph.node if node.op_type == "Add" for name in node.input}
    out: dict[str, np.ndarray] = {}
    for node in graph.node:
        if node.op_type != "Conv":
            continue
        w = inits[node.input[1]]
        b = inits[node.input[2]] if len(node.input) > 2 else None
        dw = _DW.search(node.input[1])
        pw = _PW.search(node.input[1])
        if dw:
            key = f"dw{int(dw.group(1) or 0)}"
        elif pw:
            index = int(pw.group(1) or 0)
            key = "stem" if index == 0 else _HEADS.get(index, f"pw{index - 1}")
        else:
            raise ValueError(f"{path.name}: unexpected conv weight {node.input[1]}")
        out[key + ".weight"] = w
        if b is not None:
            out[key + ".bias"] = b
        if pw and key.startswith("pw"):
            out[key + ".residual"] = np.array(node.output[0] in added)
        if dw:
            strides = [a.ints for a in node.attribute if a.name == "strides"][0]
            out[key + ".stride"] = np.array(strides[0])
    return out


def load_onnx(path: Path, skip: Iterable[int] = ()) -> BlazeFaceNet:
    """The back model from its ONNX file; blocks in ``skip`` (stride 1, same channels) left out."""
    w = _onnx_weights(path)
    count = sum(1 for k in w if k.startswith("dw") and k.endswith(".weight"))
    skip = set(skip)
    specs, keep = [], []
    for k in range(count):
        spec = BlockSpec(cin=int(w[f"dw{k}.weight"].shape[0]),
                         cout=int(w[f"pw{k}.weight"].shape[0]),
                         stride=int(w[f"dw{k}.stride"]),
                         residual=bool(w[f"pw{k}.residual"]))
        if k in skip:
            if spec.stride != 1 or spec.cin != spec.cout:
                raise ValueError(f"block {k} changes shape ({spec}); it cannot be skipped")
            continue
        specs.append(spec)
        keep.append(k)
    net = BlazeFaceNet(specs, stem_out=int(w["stem.weight"].shape[0]),
                       width=int(w["scores16.weight"].shape[1]), origin=keep)
    state = {"stem.weight": w["stem.weight"], "stem.bias": w["stem.bias"]}
    for i, k in enumerate(keep):
        state[f"blocks.{i}.dw.weight"] = w[f"dw{k}.weight"]
        state[f"blocks.{i}.pw.weight"] = w[f"pw{k}.weight"]
        state[f"blocks.{i}.pw.bias"] = w[f"pw{k}.bias"]
    for head in _HEADS.values():
        state[f"{head}.weight"] = w[f"{head}.weight"]
        state[f"{head}.bias"] = w[f"{head}.bias"]
    net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})
    return net.eval()


OUTPUT_NAMES = ("scores_fine", "scores_coarse", "boxes_fine", "boxes_coarse")


def export_onnx(net: BlazeFaceNet, path: Path, taps: Iterable[int] = ()) -> Path:
    """Write ``net`` as an ONNX graph for ``handler.detect``: NHWC float input in [-1, 1]
    of any batch and any height and width divisible by 32, the four outputs laid out as the
    registry's model (scores (N, A, 1), regressions (N, A, 16), fine grid then coarse).

    The graph is written node by node rather than traced: TensorFlow's asymmetric SAME
    padding then stays inside each Conv (a traced ``F.pad`` becomes separate Pad nodes that
    onnxruntime does not fuse, measured 1.6x slower), and the file is byte-identical for
    identical weights. ``taps`` (registry block numbers) add those blocks' feature maps as
    outputs ``feature<k>`` (NCHW), for distillation.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def conv(name: str, x: str, layer: nn.Conv2d, pads: tuple[int, int, int, int]) -> str:
        inputs = [x, const(f"{name}.w", layer.weight.detach().numpy().astype(np.float32))]
        if layer.bias is not None:
            inputs.append(const(f"{name}.b", layer.bias.detach().numpy().astype(np.float32)))
        nodes.append(helper.make_node(
            "Conv", inputs, [name], strides=list(layer.stride), pads=list(pads),
            group=layer.groups, kernel_shape=list(layer.kernel_size)))
        return name

    def relu(name: str, x: str) -> str:
        nodes.append(helper.make_node("Relu", [x], [name]))
        return name

    nodes.append(helper.make_node("Transpose", ["input"], ["nchw"], perm=[0, 3, 1, 2]))
    x = relu("stem.relu", conv("stem", "nchw", net.stem, (1, 1, 2, 2)))
    fine = x
    for i, block in enumerate(net.blocks):
        if i == net.split:
            fine = x
        spec = block.spec
        pads = (0, 0, 1, 1) if spec.stride == 2 else (1, 1, 1, 1)
        h = conv(f"b{i}.pw", conv(f"b{i}.dw", x, block.dw, pads), block.pw, (0, 0, 0, 0))
        if spec.residual:
            skip = x
            if spec.stride == 2:
                skip = f"b{i}.pool"
                nodes.append(helper.make_node("MaxPool", [x], [skip], kernel_shape=[2, 2],
                                              strides=[2, 2]))
            if spec.cout > spec.cin:
                grow = const(f"b{i}.grow", np.array([0, 0, 0, 0, 0, spec.cout - spec.cin, 0, 0],
                                                    np.int64))
                nodes.append(helper.make_node("Pad", [skip, grow], [f"b{i}.padded"]))
                skip = f"b{i}.padded"
            nodes.append(helper.make_node("Add", [h, skip], [f"b{i}.add"]))
            h = f"b{i}.add"
        x = relu(f"b{i}.relu", h)
        if net.origin[i] in set(taps):
            nodes.append(helper.make_node("Identity", [x], [f"feature{net.origin[i]}"]))
    width = {"scores": 1, "boxes": 16}
    for out_name, (head, source) in zip(OUTPUT_NAMES, [("scores16", fine), ("scores8", x),
                                                       ("boxes16", fine), ("boxes8", x)]):
        y = conv(head, source, getattr(net, head), (0, 0, 0, 0))
        nodes.append(helper.make_node("Transpose", [y], [f"{head}.nhwc"], perm=[0, 2, 3, 1]))
        shape = const(f"{head}.shape", np.array([0, -1, width[out_name.split("_")[0]]], np.int64))
        nodes.append(helper.make_node("Reshape", [f"{head}.nhwc", shape], [out_name]))
    graph = helper.make_graph(
        nodes, "blazeface_masked",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", "height", "width", 3])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", "anchors", width[n.split("_")[0]]])
         for n in OUTPUT_NAMES]
        + [helper.make_tensor_value_info(f"feature{k}", TensorProto.FLOAT,
                                         ["batch", "channels", "rows", "columns"])
           for k in net.origin if k in set(taps)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="msde training.detector")
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path
