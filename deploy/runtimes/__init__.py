"""The runtimes, registered once: each module of this package defines `RUNTIMES`, a tuple of
`Runtime` objects (`deploy.runtimes.base`), and is found here by its name; adding a runtime
means adding one module.

    from deploy.runtimes import FORMATS, BACKENDS, format_runtime, backend_runtime
    backend_runtime("openvino").compile(net, x, threads=1)       # a CompiledModel, timed by the benchmark
    format_runtime("onnx").export_checked(net, example, path)     # file written and checked

| runtime | `--format` | `--backend` | int8 | latency table |
|---|---|---|---|---|
| `torch` (eager), `compile` | | torch, compile | | torch |
| `onnxruntime`, `tensorrt` | onnx | onnxruntime, tensorrt | | onnxruntime |
| `coreml` | coreml | | | |
| `torchscript` (legacy) | torchscript | | | |
| `executorch` (XNNPACK) | executorch | executorch | PT2E | executorch |
| `litert` (XNNPACK) | litert | litert | PT2E | litert |
| `openvino` | openvino | openvino | NNCF | openvino |
| `pt2` (`torch.export`) | pt2 | | | |
| `aoti` (AOTInductor) | aoti | aoti | | |

Importing this package loads no third-party module (the tools list its names without torch).
"""
from __future__ import annotations

import importlib
import pkgutil

from backbones.errors import UsageError

from .base import CompiledModel, ExportResult, Runtime

__all__ = ["RUNTIMES", "FORMATS", "BACKENDS", "INT8_FORMATS", "INT8_BACKENDS", "LUT_BACKENDS", "Runtime",
           "CompiledModel", "ExportResult", "format_runtime", "backend_runtime"]


def _discover() -> dict[str, Runtime]:
    found: list[Runtime] = []
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_") or info.name == "base":
            continue
        found += importlib.import_module(f"{__name__}.{info.name}").RUNTIMES
    return {r.name: r for r in sorted(found, key=lambda r: (r.order, r.name))}


RUNTIMES: dict[str, Runtime] = _discover()
FORMATS = tuple(r.format for r in RUNTIMES.values() if r.format)
BACKENDS = tuple(r.backend for r in RUNTIMES.values() if r.backend)
INT8_FORMATS = tuple(r.format for r in RUNTIMES.values() if r.format and r.int8)
INT8_BACKENDS = tuple(r.backend for r in RUNTIMES.values() if r.backend and r.int8)
LUT_BACKENDS = tuple(r.backend for r in RUNTIMES.values() if r.backend and r.latency_table)


def format_runtime(fmt: str) -> Runtime:
    """The runtime of an export format; ValueError naming the formats for another name."""
    for r in RUNTIMES.values():
        if r.format == fmt:
            return r
    raise UsageError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")


def backend_runtime(backend: str, choices: tuple[str, ...] = BACKENDS) -> Runtime:
    """The runtime of a benchmark backend (one of `choices`); ValueError naming them for another name."""
    for r in RUNTIMES.values():
        if r.backend == backend and backend in choices:
            return r
    raise UsageError(f"unknown backend {backend!r}; choose from {', '.join(choices)}")
