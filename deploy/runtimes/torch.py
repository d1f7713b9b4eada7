"""PyTorch in this process: eager (`--backend torch`) and `torch.compile` (`--backend compile`).

Both take their threads from `torch.set_num_threads`, which the benchmark and the latency table
set; nothing is written to a file.
"""
from __future__ import annotations

from .base import Runtime, bind

__all__ = ["Eager", "Compiled", "RUNTIMES"]


class Eager(Runtime):
    """The module as given, in inference mode."""

    name = "torch"
    order = 10
    what = "PyTorch eager"
    backend = "torch"
    latency_table = True

    def compile(self, module, x, threads, workdir=None, name="model", calibration=None):
        import torch
        if calibration is not None:
            raise ValueError(f"int8 is not available on {self.backend}")
        module = module.eval()

        def eager(inp: torch.Tensor):
            with torch.inference_mode():
                return module(inp)
        return bind(eager, x)


class Compiled(Runtime):
    """`torch.compile` of the module (Inductor, compiled at the first call)."""

    name = "compile"
    order = 20
    what = "torch.compile"
    backend = "compile"

    def compile(self, module, x, threads, workdir=None, name="model", calibration=None):
        import torch
        if calibration is not None:
            raise ValueError(f"int8 is not available on {self.backend}")
        compiled = torch.compile(module.eval())

        def run_compiled(inp: torch.Tensor):
            with torch.inference_mode():
                return compiled(inp)
        return bind(run_compiled, x)


RUNTIMES = (Eager(), Compiled())
