"""The reference MoE-ViT: configs, PyTorch model, data, training, quantization,
the integer golden model and ONNX export."""
