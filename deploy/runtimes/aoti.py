"""AOTInductor: the `torch.export` program compiled ahead of time into a package (`.pt2`) of native
code (`torch._inductor.aoti_compile_and_package`), loaded with `torch._inductor.aoti_load_package`.

    python tools/export.py --model efficientformerv2_s0 --format aoti --out s0_aoti.pt2
    python tools/benchmark.py --models efficientformerv2_s0 --backend aoti onnxruntime openvino

Compiling needs a C++ compiler and takes a while (about a minute for S0 on two cores). The
exported package has a symbolic batch (and height and width with `--features`); the benchmark
compiles one at its fixed input shape. The compiled code runs on PyTorch's intra-op threads
(`torch.set_num_threads`, which the benchmark sets).
"""
from __future__ import annotations

from pathlib import Path

from backbones.errors import NotFoundError, UsageError

from .base import Runtime, inference_runner
from .pt2 import capture_program

__all__ = ["export_aoti", "load_aoti", "AOTInductor", "RUNTIMES"]


def export_aoti(module, example, path: str | Path, dynamic_batch: bool = True, dynamic_hw: bool = False) -> Path:
    """Capture `module` with `torch.export` and compile it with AOTInductor into the package `path`
    (which must end in `.pt2`)."""
    import torch
    path = Path(path)
    if path.suffix != ".pt2":
        raise UsageError(f"an AOTInductor package is saved as .pt2, got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    program = capture_program(module, example, dynamic_batch, dynamic_hw)
    with torch.no_grad():
        torch._inductor.aoti_compile_and_package(program, package_path=str(path))
    return path


def load_aoti(path: str | Path, threads: int | None = None):
    """The compiled package as a callable tensor -> tuple of tensors; `threads`: PyTorch's intra-op
    thread count, which the compiled code uses (None: as set)."""
    import torch
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"no AOTInductor package at {path}")
    if threads is not None:
        torch.set_num_threads(int(threads))
    return inference_runner(torch._inductor.aoti_load_package(str(path)))


class AOTInductor(Runtime):
    """An AOTInductor package (`.pt2`) of native CPU code (`--format aoti`, `--backend aoti`)."""

    name = "aoti"
    order = 80
    what = "AOTInductor package"
    format = "aoti"
    backend = "aoti"
    suffix = ".pt2"
    dynamic_batch = True
    dynamic_hw = True

    def unavailable(self) -> str:
        import shutil
        if not any(shutil.which(cc) for cc in ("c++", "g++", "clang++")):
            return "backend aoti compiles C++: install a C++ compiler (g++ or clang++)"
        return ""

    def unavailable_error(self, why: str) -> Exception:
        return UsageError(why)

    def require(self, int8: bool = False) -> None:
        why = self.unavailable()
        if why:
            raise UsageError(why.replace("backend aoti", "format aoti"))

    def export(self, module, example, path, *, dynamic_batch=False, dynamic_hw=False, calibration=None, **options):
        export_aoti(module, example, path, dynamic_batch, dynamic_hw)
        return {}

    def load(self, path, threads=None):
        return load_aoti(path, threads)


RUNTIMES = (AOTInductor(),)
