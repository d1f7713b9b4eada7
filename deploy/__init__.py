"""Deployment: export (ONNX, CoreML, TorchScript), latency measurement, MES."""
