"""Shared test support: real mosquitto brokers, a throw-away PKI and small ONNX models."""
