"""A small reader of TensorFlow Lite model files: tensors (with their weights) and operators.

A ``.tflite`` file is a FlatBuffer following TFLite's ``schema.fbs``. We need only the graph
of one subgraph and the constant tensors, so instead of a TensorFlow or a generated-schema
dependency this module decodes the few tables involved (Model, SubGraph, Tensor, Operator,
OperatorCode, Buffer and the options of the operators we port) with ``struct``. Field
numbers below are the field order of ``schema.fbs``, which the format keeps stable.

FlatBuffer layout used here: a table starts with an int32 offset back to its vtable; the
vtable holds uint16 byte offsets of each field inside the table (0 = absent, use the
default); references to tables, vectors and strings are uint32 offsets relative to where
they are stored; a vector is a uint32 length followed by its elements.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# schema.fbs enum BuiltinOperator (the operators a ported network may contain)
BUILTIN_OPERATORS: dict[int, str] = {
    0: "ADD", 1: "AVERAGE_POOL_2D", 2: "CONCATENATION", 3: "CONV_2D",
    4: "DEPTHWISE_CONV_2D", 6: "DEQUANTIZE", 9: "FULLY_CONNECTED", 14: "LOGISTIC",
    17: "MAX_POOL_2D", 18: "MUL", 19: "RELU", 21: "RELU6", 22: "RESHAPE", 25: "SOFTMAX",
    34: "PAD", 40: "MEAN", 41: "SUB",
}
# schema.fbs enum TensorType -> numpy little-endian dtype
TENSOR_TYPES: dict[int, str] = {0: "<f4", 1: "<f2", 2: "<i4", 3: "u1", 4: "<i8", 9: "i1"}
PADDINGS = ("SAME", "VALID")
ACTIVATIONS = ("NONE", "RELU", "RELU_N1_TO_1", "RELU6", "TANH", "SIGN_BIT")

# per options table: (field name, struct format, default) in schema field order
_OPTIONS: dict[str, tuple[tuple[str, str, object], ...]] = {
    "CONV_2D": (("padding", "b", 0), ("stride_w", "i", 0), ("stride_h", "i", 0),
                ("activation", "b", 0), ("dilation_w", "i", 1), ("dilation_h", "i", 1)),
    "DEPTHWISE_CONV_2D": (("padding", "b", 0), ("stride_w", "i", 0), ("stride_h", "i", 0),
                          ("depth_multiplier", "i", 0), ("activation", "b", 0),
                          ("dilation_w", "i", 1), ("dilation_h", "i", 1)),
    "FULLY_CONNECTED": (("activation", "b", 0), ("weights_format", "b", 0),
                        ("keep_num_dims", "?", False)),
    "ADD": (("activation", "b", 0),),
    "MEAN": (("keep_dims", "?", False),),
    "SOFTMAX": (("beta", "f", 0.0),),
    "AVERAGE_POOL_2D": (("padding", "b", 0), ("stride_w", "i", 0), ("stride_h", "i", 0),
                        ("filter_width", "i", 0), ("filter_height", "i", 0),
                        ("activation", "b", 0)),
}
_OPTIONS["MAX_POOL_2D"] = _OPTIONS["AVERAGE_POOL_2D"]


@dataclass(frozen=True)
class Tensor:
    """A tensor of the graph; ``data`` holds its constant value (None for activations).

    Quantised constants keep their stored integers in ``data`` and the affine parameters
    (one scale / zero point per tensor, or per slice along ``quantized_dimension``).
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    data: np.ndarray | None
    scale: tuple[float, ...] = ()
    zero_point: tuple[int, ...] = ()
    quantized_dimension: int = 0

    def value(self) -> np.ndarray:
        """The constant as float32: ``(q - zero_point) * scale`` for quantised integers."""
        if self.data is None:
            raise ValueError(f"tensor {self.name!r} holds no constant")
        if not self.scale or self.data.dtype.kind == "f":
            return self.data.astype(np.float32)
        zero = self._per_axis(self.zero_point or (0,) * len(self.scale))
        return ((self.data.astype(np.float64) - zero) * self._per_axis(self.scale)).astype(
            np.float32
        )

    def hybrid_value(self) -> np.ndarray:
        """The float weights a hybrid kernel (float activations, quantised weights) uses.

        The legacy weight-only quantiser stored symmetric int8 weights in UINT8-typed
        tensors with zero point 0, and TFLite's hybrid CONV_2D / FULLY_CONNECTED kernels read
        those bytes as int8: value = int8(byte) * scale.
        """
        if self.data is None or self.data.dtype != np.uint8:
            return self.value()
        if any(self.zero_point):
            raise ValueError(f"hybrid weights {self.name!r} have zero points {self.zero_point}")
        return (self.data.view(np.int8).astype(np.float64) * self._per_axis(self.scale)).astype(
            np.float32
        )

    def _per_axis(self, values: tuple[float, ...] | tuple[int, ...]) -> np.ndarray:
        """Quantisation parameters shaped to broadcast over ``data`` (per tensor or axis)."""
        assert self.data is not None
        shape = [1] * self.data.ndim
        if len(values) > 1:
            shape[self.quantized_dimension] = len(values)
        return np.asarray(values, np.float64).reshape(shape)


@dataclass(frozen=True)
class Operator:
    """One node: operator name, input / output tensor indices (-1 = omitted), its options."""

    op: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    options: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class Graph:
    """The first subgraph of a model: what a port walks, in execution order."""

    tensors: tuple[Tensor, ...]
    operators: tuple[Operator, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]


class _Table:
    """A FlatBuffer table at byte ``pos`` of ``buf``."""

    def __init__(self, buf: bytes, pos: int) -> None:
        self.buf, self.pos = buf, pos
        vtable = pos - struct.unpack_from("<i", buf, pos)[0]
        vsize = struct.unpack_from("<H", buf, vtable)[0]
        self.slots = struct.unpack_from(f"<{(vsize - 4) // 2}H", buf, vtable + 4)

    def _at(self, slot: int) -> int | None:
        if slot >= len(self.slots) or self.slots[slot] == 0:
            return None
        return self.pos + self.slots[slot]

    def scalar(self, slot: int, fmt: str, default: object) -> object:
        at = self._at(slot)
        return default if at is None else struct.unpack_from("<" + fmt, self.buf, at)[0]

    def _ref(self, slot: int) -> int | None:
        at = self._at(slot)
        return None if at is None else at + struct.unpack_from("<I", self.buf, at)[0]

    def table(self, slot: int) -> _Table | None:
        ref = self._ref(slot)
        return None if ref is None else _Table(self.buf, ref)

    def vector(self, slot: int) -> tuple[int, int]:
        """(start of the elements, length); (0, 0) when absent."""
        ref = self._ref(slot)
        if ref is None:
            return 0, 0
        return ref + 4, struct.unpack_from("<I", self.buf, ref)[0]

    def ints(self, slot: int, fmt: str = "i") -> tuple[int, ...]:
        start, n = self.vector(slot)
        return tuple(struct.unpack_from(f"<{n}{fmt}", self.buf, start)) if n else ()

    def floats(self, slot: int) -> tuple[float, ...]:
        return self.ints(slot, "f")  # type: ignore[return-value]

    def bytes_(self, slot: int) -> bytes:
        start, n = self.vector(slot)
        return self.buf[start:start + n]

    def string(self, slot: int) -> str:
        return self.bytes_(slot).decode("utf-8")

    def tables(self, slot: int) -> list[_Table]:
        start, n = self.vector(slot)
        out = []
        for i in range(n):
            at = start + 4 * i
            out.append(_Table(self.buf, at + struct.unpack_from("<I", self.buf, at)[0]))
        return out


def _options(op: str, table: _Table | None) -> dict[str, object]:
    fields = _OPTIONS.get(op, ())
    values = {name: (default if table is None else table.scalar(i, fmt, default))
              for i, (name, fmt, default) in enumerate(fields)}
    if "padding" in values:
        values["padding"] = PADDINGS[int(values["padding"])]  # type: ignore[call-overload]
    if "activation" in values:
        values["activation"] = ACTIVATIONS[int(values["activation"])]  # type: ignore[call-overload]
    return values


def read_tflite(path: Path) -> Graph:
    """Decode the first subgraph of a ``.tflite`` file (raises on an unknown operator)."""
    buf = Path(path).read_bytes()
    if buf[4:8] != b"TFL3":
        raise ValueError(f"{path} is not a TFLite model (file identifier {buf[4:8]!r})")
    model = _Table(buf, struct.unpack_from("<I", buf, 0)[0])
    codes = []
    for code in model.tables(1):
        # builtin_code (field 3) superseded the int8 deprecated_builtin_code (field 0)
        builtin = max(int(code.scalar(0, "b", 0)), int(code.scalar(3, "i", 0)))  # type: ignore[call-overload]
        if builtin not in BUILTIN_OPERATORS:
            raise ValueError(f"{path}: operator code {builtin} is not supported")
        codes.append(BUILTIN_OPERATORS[builtin])
    buffers = [b.bytes_(0) for b in model.tables(4)]
    subgraphs = model.tables(2)
    if not subgraphs:
        raise ValueError(f"{path} holds no subgraph")
    graph = subgraphs[0]
    tensors = []
    for t in graph.tables(0):
        shape = t.ints(0)
        dtype = TENSOR_TYPES[int(t.scalar(1, "b", 0))]  # type: ignore[call-overload]
        raw = buffers[int(t.scalar(2, "I", 0))]  # type: ignore[call-overload]
        data = np.frombuffer(raw, dtype).reshape(shape).copy() if raw else None
        quant = t.table(4)  # QuantizationParameters: min, max, scale, zero_point, ..., axis
        scale = quant.floats(2) if quant is not None else ()
        zero = quant.ints(3, "q") if quant is not None else ()
        axis = int(quant.scalar(6, "i", 0)) if quant is not None else 0  # type: ignore[call-overload]
        tensors.append(Tensor(t.string(3), tuple(shape), dtype, data, scale, zero, axis))
    operators = []
    for o in graph.tables(3):
        op = codes[int(o.scalar(0, "I", 0))]  # type: ignore[call-overload]
        operators.append(Operator(op, o.ints(1), o.ints(2), _options(op, o.table(4))))
    return Graph(tuple(tensors), tuple(operators), graph.ints(1), graph.ints(2))
