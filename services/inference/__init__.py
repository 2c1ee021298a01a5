"""The inference service: PyTorch + PEFT and ONNX Runtime backends, streaming, evaluation."""
