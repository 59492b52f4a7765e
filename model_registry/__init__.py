"""The central service: build, quantize, sign, version and deploy ONNX models."""

__version__ = "0.1.0"
