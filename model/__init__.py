"""The reference MoE-ViT: configs, the PyTorch model, data, training, metrics,
checkpoints and importers; the integer side in ``integer/``, ONNX in ``onnx/``."""
