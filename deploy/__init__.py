"""Deployment: the deploy form, export (ONNX, CoreML, TorchScript, ExecuTorch with XNNPACK,
OpenVINO; int8 through PT2E and NNCF) with parity checks, the benchmark and its one timer,
per-operator profiles, latency tables for the search, and the MES."""
