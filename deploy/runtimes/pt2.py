"""`torch.export` for servers: an ExportedProgram saved with `torch.export.save` (`.pt2`).

    from deploy.runtimes.pt2 import capture_program
    program = capture_program(net, example, dynamic_batch=True, dynamic_hw=False)
    torch.export.save(program, "s0.pt2"); torch.export.load("s0.pt2").module()(x)

The program has a symbolic batch and, for feature maps (`--features`), a symbolic height and
width (the deploy form is made shape-generic first). It is loaded back with `torch.export.load`
and compared with PyTorch within 1e-4. This replaces TorchScript, which the pinned PyTorch
deprecates; `deploy.runtimes.aoti` compiles the same program ahead of time with AOTInductor.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from backbones.errors import NotFoundError

from .base import Runtime, dynamic_shapes, inference_runner

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["capture_program", "export_pt2", "load_pt2", "PT2", "RUNTIMES"]


def capture_program(module: nn.Module, example: torch.Tensor, dynamic_batch: bool = True,
                    dynamic_hw: bool = False) -> torch.export.ExportedProgram:
    """`torch.export.export` of `module` (eval mode) with a symbolic batch and/or height and width."""
    import torch
    example, dims = dynamic_shapes(example, dynamic_batch, dynamic_hw)
    with torch.no_grad():
        return torch.export.export(module.eval(), (example,), dynamic_shapes=dims)


def export_pt2(module: nn.Module, example: torch.Tensor, path: str | Path, dynamic_batch: bool = True,
               dynamic_hw: bool = False) -> Path:
    """Capture `module` and save the ExportedProgram at `path` (`.pt2`)."""
    import torch
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(capture_program(module, example, dynamic_batch, dynamic_hw), str(path))
    return path


def load_pt2(path: str | Path):
    """The saved program as a callable tensor -> tuple of tensors (`torch.export.load(...).module()`)."""
    import torch
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"no exported program at {path}")
    return inference_runner(torch.export.load(str(path)).module())


class PT2(Runtime):
    """A `torch.export` ExportedProgram (`.pt2`), run in PyTorch after `torch.export.load`."""

    name = "pt2"
    order = 70
    what = "reloaded ExportedProgram"
    format = "pt2"
    suffix = ".pt2"
    dynamic_batch = True
    dynamic_hw = True

    def export(self, module, example, path, *, dynamic_batch=False, dynamic_hw=False, calibration=None, **options):
        export_pt2(module, example, path, dynamic_batch, dynamic_hw)
        return {}

    def load(self, path, threads=None):
        return load_pt2(path)


RUNTIMES = (PT2(),)
