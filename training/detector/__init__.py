"""The masked-face detector: BlazeFace ported to PyTorch, distilled on synthetic masks, exported
back to ONNX for ``handler.detect`` (docs/detector.md)."""
