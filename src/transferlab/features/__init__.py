"""Feature extraction: a frozen trunk run by a runtime (ONNX Runtime or PyTorch) over image files, content-cached.

May import: core, data, backbones."""
