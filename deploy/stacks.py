"""Which packages each export format and runtime needs, and the error that says what to install.

Every deploy module that uses an optional runtime calls `require_stack(name)` before importing it,
so a missing package is one `ExportStackError` (an ImportError) naming the packages to install,
never a bare ModuleNotFoundError from deep inside an exporter.
"""
from __future__ import annotations

import importlib.util

from backbones.errors import EfficientFormerV2Error

__all__ = ["ExportStackError", "STACKS", "require_stack"]

# stack name -> (importable modules, what to pip install)
STACKS: dict[str, tuple[tuple[str, ...], str]] = {
    "onnx": (("onnx", "onnxscript", "onnxruntime"), "onnx onnxscript onnxruntime"),
    "coreml": (("coremltools",), "coremltools"),
    "executorch": (("executorch",), "executorch"),
    "openvino": (("openvino",), "openvino"),
    "nncf": (("openvino", "nncf"), "openvino nncf"),
    "litert": (("litert_torch", "ai_edge_litert"), "litert-torch ai-edge-litert"),
}


class ExportStackError(EfficientFormerV2Error, ImportError):
    """A package the chosen export format or runtime needs is not installed."""


def require_stack(name: str) -> None:
    """Raise `ExportStackError` naming what to install when the stack `name` (a key of `STACKS`;
    other names need nothing beyond torch) is missing."""
    modules, pip_names = STACKS.get(name, ((), ""))
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ExportStackError(f"{name} needs {', '.join(missing)}, which is not installed: run "
                               f"`make install` (or `pip install -e .[export]`, i.e. {pip_names})")
