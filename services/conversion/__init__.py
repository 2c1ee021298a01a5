"""The conversion service: merge adapters, export ONNX, quantize, check parity."""
