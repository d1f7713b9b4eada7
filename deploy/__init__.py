"""Deployment: the deploy form, the runtime registry (`deploy.runtimes`: one module per runtime,
export with its parity check, load and run, int8, profile: ONNX Runtime, CoreML, TorchScript,
ExecuTorch with XNNPACK, OpenVINO, torch.export programs and AOTInductor packages, eager and
compiled PyTorch), export (`deploy.export`), the benchmark and its one timer, latency tables for
the search, and the MES."""
