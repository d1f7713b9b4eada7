"""TorchScript (legacy): a traced module saved with `torch.jit.save`, reloaded and compared.

TorchScript is deprecated in favour of `torch.export` in the PyTorch the suite pins: for servers
use `--format pt2` (an ExportedProgram) or `--format aoti` (AOTInductor-compiled). The traced graph
of the shape-generic deploy form also holds at other input sizes.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .base import Runtime, as_tuple, check_runtime

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["TORCHSCRIPT_ATOL", "export_torchscript", "check_torchscript", "TorchScript", "RUNTIMES"]

TORCHSCRIPT_ATOL = 1e-5


def export_torchscript(module: nn.Module, example: torch.Tensor, path: str | Path) -> Path:
    """Trace `module` at the example's size and save it (`torch.jit.load` reads it back)."""
    import torch
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        traced = torch.jit.trace(module.eval(), example)
    traced.save(str(path))
    return path


def _load(path: str | Path):
    import torch
    loaded = torch.jit.load(str(path))

    def run(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with torch.no_grad():
            return as_tuple(loaded(x))
    return run


def check_torchscript(path: str | Path, module: nn.Module, example: torch.Tensor,
                      atol: float = TORCHSCRIPT_ATOL) -> float:
    """Max abs difference of the reloaded TorchScript module against `module` on `example`."""
    return check_runtime(_load(path), module, [example], "TorchScript module", atol)


class TorchScript(Runtime):
    """Traced TorchScript (`.pt`), reloaded with `torch.jit.load` (legacy: prefer pt2 or aoti)."""

    name = "torchscript"
    order = 32
    what = "reloaded TorchScript"
    format = "torchscript"
    suffix = ".pt"
    dynamic_hw = True    # --features: the shape-generic deploy form is traced (checked at the example only)
    atol = TORCHSCRIPT_ATOL

    def export(self, module, example, path, *, dynamic_batch=False, dynamic_hw=False, calibration=None, **options):
        export_torchscript(module, example, path)
        return {}

    def load(self, path, threads=None):
        return _load(path)

    def check_inputs(self, example, features, generator, normalise):
        return [example]


RUNTIMES = (TorchScript(),)
