"""Inference latency on an accelerator (or the CPU) with the runtimes a server uses: PyTorch
eager, `torch.compile`, AOTInductor (`torch._inductor.aoti_compile_and_package`, loaded with
`aoti_load_package`) and, where onnxruntime-gpu has it, TensorRT through ONNX Runtime's
`TensorrtExecutionProvider`.

Every runtime runs the same deploy-form model on the same input, already on the device (ONNX
Runtime through I/O binding, so no host copy is timed); each timed call ends with the device
synchronised, and the runtimes of one batch size are timed interleaved with the suite's one timer
(`deploy.latency.measure_interleaved`). A runtime that is not installed is reported as such, one
that fails with its error; neither stops the others.

    records = benchmark_accelerated("efficientformerv2_s0", batch_sizes=(1, 64), device="cuda")
"""
from __future__ import annotations

import copy
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from backbones import create_model
from backbones.errors import UsageError

from .latency import Timed, measure_interleaved

__all__ = ["RUNTIMES", "Prepared", "prepare", "runtime_unavailable", "benchmark_accelerated", "synchronize"]

RUNTIMES = ("eager", "compile", "aoti", "tensorrt")


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on a CUDA `device`; nothing to wait for on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Prepared:
    """A runtime made ready for one input: `run()` runs one inference and returns its output
    (the first output tensor, on the device); `prepare_s`: seconds spent exporting/compiling
    (compile: the first call, which compiles)."""

    run: Callable[[], torch.Tensor]
    prepare_s: float
    info: dict


def runtime_unavailable(runtime: str, device: torch.device) -> str:
    """"" if `runtime` can run on `device` here, else why not."""
    if runtime not in RUNTIMES:
        return f"unknown runtime {runtime!r}: choose from {', '.join(RUNTIMES)}"
    if runtime == "tensorrt":
        try:
            import onnxruntime
        except ImportError:
            return "not installed (onnxruntime is not installed)"
        if "TensorrtExecutionProvider" not in onnxruntime.get_available_providers():
            return ("not installed (TensorrtExecutionProvider is not among onnxruntime's providers: "
                    "install onnxruntime-gpu built with TensorRT, and TensorRT)")
        if device.type != "cuda":
            return "TensorRT needs a CUDA device"
    return ""


def _first(out) -> torch.Tensor:
    return out[0] if isinstance(out, (list, tuple)) else out


def _eager(model: nn.Module, x: torch.Tensor) -> Callable[[], torch.Tensor]:
    def run() -> torch.Tensor:
        with torch.inference_mode():
            return _first(model(x))
    return run


def _compiled(model: nn.Module, x: torch.Tensor, mode: str | None) -> Callable[[], torch.Tensor]:
    compiled = torch.compile(model, mode=mode, dynamic=False)  # one static graph per batch size

    def run() -> torch.Tensor:
        with torch.inference_mode():
            return _first(compiled(x))
    return run


def _aoti(model: nn.Module, x: torch.Tensor, workdir: Path, name: str) -> Callable[[], torch.Tensor]:
    with torch.no_grad():
        program = torch.export.export(model, (x,))
    path = torch._inductor.aoti_compile_and_package(program, package_path=str(workdir / f"{name}.pt2"))
    runner = torch._inductor.aoti_load_package(path)

    def run() -> torch.Tensor:
        with torch.inference_mode():
            return _first(runner(x))
    return run


def _ort(model: nn.Module, x: torch.Tensor, workdir: Path, name: str, providers: list) -> Callable[[], torch.Tensor]:
    """ONNX Runtime on `providers` with input and output bound on `x`'s device (I/O binding)."""
    import numpy as np
    import onnxruntime as ort
    path = workdir / f"{name}.onnx"
    cpu_model = copy.deepcopy(model).to("cpu")
    torch.onnx.export(cpu_model, (x.detach().cpu(),), str(path), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["output"])
    sess = ort.InferenceSession(str(path), providers=providers)
    with torch.inference_mode():
        shape = tuple(_first(model(x)).shape)
    out = torch.empty(shape, dtype=torch.float32, device=x.device)
    kind = "cuda" if x.device.type == "cuda" else "cpu"
    index = (x.device.index or 0) if kind == "cuda" else 0
    binding = sess.io_binding()
    xc = x.contiguous()
    binding.bind_input("input", kind, index, np.float32, tuple(xc.shape), xc.data_ptr())
    binding.bind_output(sess.get_outputs()[0].name, kind, index, np.float32, shape, out.data_ptr())

    def run() -> torch.Tensor:
        sess.run_with_iobinding(binding)
        return out
    run.session = sess  # keeps the session (and the bound buffers' owners) alive with the closure
    run.buffers = (xc, out)
    return run


def prepare(model: nn.Module, x: torch.Tensor, runtime: str, workdir: str | Path, name: str = "model",
            compile_mode: str | None = None, ort_providers: list | None = None) -> Prepared:
    """Make `runtime` ready to run the eval-mode `model` (on `x`'s device) on `x`.

    Args:
        runtime: one of `RUNTIMES`.
        workdir: where exported files go.
        compile_mode: `torch.compile`'s mode (None: default).
        ort_providers: ONNX Runtime providers for the "tensorrt" runtime (default: TensorRT, then
            CUDA as the fallback for nodes TensorRT does not take); tests pass the CPU provider.
    """
    workdir = Path(workdir)
    device = x.device
    t0 = time.perf_counter()
    if runtime == "eager":
        run = _eager(model, x)
    elif runtime == "compile":
        run = _compiled(model, x, compile_mode)
        run()  # compiles
    elif runtime == "aoti":
        run = _aoti(model, x, workdir, name)
    elif runtime == "tensorrt":
        providers = ort_providers or [("TensorrtExecutionProvider", {"device_id": device.index or 0,
                                                                    "trt_engine_cache_enable": False}),
                                      ("CUDAExecutionProvider", {"device_id": device.index or 0})]
        run = _ort(model, x, workdir, name, providers)
        run()  # TensorRT builds its engine on the first run
    else:
        raise UsageError(f"unknown runtime {runtime!r}: choose from {', '.join(RUNTIMES)}")
    synchronize(device)
    info = {"providers": run.session.get_providers()} if runtime == "tensorrt" else {}
    return Prepared(run, time.perf_counter() - t0, info)


def _synchronised(run: Callable[[], torch.Tensor], device: torch.device) -> Callable[[], None]:
    def call() -> None:
        run()
        synchronize(device)
    return call


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:500]


def benchmark_accelerated(model: str | nn.Module = "efficientformerv2_s0", batch_sizes: Sequence[int] = (1, 64),
                          runtimes: Sequence[str] = RUNTIMES, device: str | torch.device = "cuda",
                          resolution: int = 224, runs: int = 50, warmup: int = 10,
                          compile_mode: str | None = None, ort_providers: list | None = None,
                          log: Callable[[str], None] = lambda s: None) -> list[dict]:
    """Latency of `model` per runtime and batch size on `device`.

    Args:
        model: a project variant name (built for `resolution`, random weights, deploy form) or an
            eval-mode module (run as given).
        runtimes: from `RUNTIMES`; "eager" is the reference of every parity figure and is always
            prepared.
        runs, warmup: timed and untimed calls per runtime (after its preparation).

    Returns:
        One record per (runtime, batch size): `model`, `runtime`, `device`, `batch_size`,
        `resolution`, and either `latency_ms_median`/`_p90`/`_min`, `images_per_s`, `prepare_s`,
        `max_abs_diff` (against eager on the same input) or `skipped` (why it cannot run here) or
        `error` (what failed).
    """
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("device cuda asked for, but torch sees no CUDA device")
    unknown = [r for r in runtimes if r not in RUNTIMES]
    if unknown:
        raise UsageError(f"unknown runtime(s) {unknown}: choose from {', '.join(RUNTIMES)}")
    label = model if isinstance(model, str) else type(model).__name__
    if isinstance(model, str):
        model = create_model(model, img_size=resolution).eval().fuse()
    model = model.eval().to(device)
    runtimes = list(dict.fromkeys(["eager", *runtimes]))
    records: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="efv2-accel-") as tmp:
        for batch in batch_sizes:
            x = torch.randn(batch, 3, resolution, resolution, generator=torch.Generator().manual_seed(0)).to(device)
            base = {"model": label, "device": str(device), "batch_size": batch, "resolution": resolution}
            ready: dict[str, Prepared] = {}
            outcome: dict[str, dict] = {}
            for runtime in runtimes:
                why = runtime_unavailable(runtime, device) if not (runtime == "tensorrt" and ort_providers) else ""
                if why:
                    outcome[runtime] = {"skipped": why}
                    continue
                log(f"preparing {runtime} at batch {batch}")
                try:
                    ready[runtime] = prepare(model, x, runtime, tmp, f"{runtime}_b{batch}", compile_mode,
                                             ort_providers)
                except Exception as exc:  # noqa: BLE001 - one runtime's failure must not stop the others
                    outcome[runtime] = {"error": _one_line(exc)}
                    log(f"{runtime} at batch {batch}: {outcome[runtime]['error']}")
            if "eager" not in ready:
                raise RuntimeError(f"eager PyTorch failed at batch {batch}: {outcome['eager']['error']}")
            reference = ready["eager"].run().float().clone()
            for runtime, prepared in list(ready.items()):
                try:
                    got = prepared.run()
                    synchronize(device)
                    outcome[runtime] = {"max_abs_diff": float((got.float() - reference).abs().max())}
                except Exception as exc:  # noqa: BLE001
                    outcome[runtime] = {"error": _one_line(exc)}
                    del ready[runtime]
            log(f"timing {', '.join(ready)} at batch {batch}: {warmup} warm-up + {runs} runs each, interleaved")
            stats = measure_interleaved([Timed(r, _synchronised(p.run, device)) for r, p in ready.items()],
                                        runs=runs, warmup=warmup)
            for runtime in runtimes:
                rec = {**base, "runtime": runtime}
                if runtime in ready:
                    s = stats[runtime]
                    rec.update(latency_ms_median=round(s.median, 4), latency_ms_p90=round(s.p90, 4),
                               latency_ms_min=round(s.min, 4), runs=s.runs,
                               images_per_s=float(f"{1e3 * batch / s.median:.4g}"),
                               prepare_s=round(ready[runtime].prepare_s, 2), **ready[runtime].info)
                rec.update(outcome.get(runtime, {}))
                records.append(rec)
            del ready
    return records
