"""The interface every runtime implements, and what all runtimes share.

A runtime is one class (one module of `deploy.runtimes`): how a module in deploy form is exported
to its file format and checked against PyTorch (`export`, `export_checked`), how that file is loaded
and run (`load`), how a module is made runnable at a fixed input for the benchmark and the latency
table (`compile`), int8 where it has one (`int8`, `export(..., calibration=...)`), and where its time
goes (`profile`). Its class attributes say what it is: the `tools/export.py --format` name
(`format`), the `tools/benchmark.py --backend` name (`backend`), the file suffix, the stack it
needs (`deploy.stacks`), whether it is a latency-table backend.

This module imports no third-party package at import time (the tools' `--help` lists the
registry's names without loading torch); every method imports what it uses.
"""
from __future__ import annotations

import importlib
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Sequence

from ..stacks import STACKS, ExportStackError, require_stack

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["Runtime", "ExportResult", "CompiledModel", "Runner", "FP32_ATOL", "check_runtime", "as_tuple",
           "other_size", "shapes_text", "random_input", "dynamic_shapes", "bind"]

FP32_ATOL = 1e-4  # float32 parity bound of every runtime against PyTorch (never loosened)

Runner = Callable[["torch.Tensor"], tuple["torch.Tensor", ...]]


def as_tuple(out) -> tuple:
    return tuple(out) if isinstance(out, (list, tuple)) else (out,)


def inference_runner(call: Callable) -> Callable:
    """`call` (a loaded program) as a runner: tensor -> tuple of tensors, without autograd."""
    import torch

    def run(x):
        with torch.inference_mode():
            return as_tuple(call(x))
    return run


def calibrate_pt2e(captured: Any, quantizer: Any, calibration: Sequence[torch.Tensor], **convert_kwargs: Any) -> Any:
    """PT2E post-training quantization of a captured graph (`torch.export(...).module()`):
    `prepare_pt2e` for `quantizer`, one forward per calibration batch, `convert_pt2e`
    (`convert_kwargs`, e.g. fold_quantize)."""
    import torch
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    prepared = prepare_pt2e(captured, quantizer)
    with torch.no_grad():
        for x in calibration:
            prepared(x)
    return convert_pt2e(prepared, **convert_kwargs)


def other_size(size: tuple[int, int]) -> tuple[int, int]:
    """A second, non-square input size for checking a graph with symbolic height and width:
    taller by 37 and narrower by 29 pixels (at least 33), so neither side is a multiple of 32."""
    return size[0] + 37, max(size[1] - 29, 33)


def shapes_text(inputs: Sequence[torch.Tensor]) -> str:
    return ", ".join("x".join(map(str, x.shape)) for x in inputs)


def random_input(shape: Sequence[int], generator: torch.Generator | None, normalise: Callable | None = None):
    import torch
    x = torch.rand(*shape, generator=generator)
    return normalise(x) if normalise is not None else x


def dynamic_shapes(example: torch.Tensor, batch: bool, hw: bool) -> tuple[torch.Tensor, tuple | None]:
    """(example, `dynamic_shapes` argument of `torch.export.export`) for a symbolic batch and/or
    symbolic height and width. A size-1 batch would be specialised: the example is then expanded
    to 2 images."""
    import torch
    dims: dict[int, Any] = {}
    if batch:
        dims[0] = torch.export.Dim("batch", min=1, max=1024)
    if hw:
        dims[2] = torch.export.Dim.DYNAMIC
        dims[3] = torch.export.Dim.DYNAMIC
    if batch and example.shape[0] == 1:
        example = example.expand(2, *example.shape[1:]).contiguous()
    return example, ((dims,) if dims else None)


@dataclass
class ExportResult:
    """What an export produced and how it was checked."""

    format: str
    path: Path
    seconds: float
    checked: str                      # what the check did
    max_abs_diff: float | None = None  # runtime output vs PyTorch, where a runtime ran
    ok: bool = True                    # whether the check passed
    ops: dict[str, int] = field(default_factory=dict)
    note: str = ""                     # e.g. why no prediction parity was possible
    int8: bool = False
    undelegated: dict[str, int] | None = None  # ExecuTorch: operators outside the XNNPACK delegate
    top1_float: float | None = None    # percent, PyTorch float model on top1_split
    top1_exported: float | None = None  # percent, the export in its runtime on top1_split
    agreement: float | None = None     # fraction of images where both give the same top-1 class
    cosine: float | None = None        # mean cosine similarity of the export's and PyTorch's logits
    top1_images: int = 0
    top1_split: str = ""
    labels: str = ""                   # where the class names went (a file beside it, or the package)

    def summary(self) -> str:
        diff = f", max abs diff {self.max_abs_diff:.3g}" if self.max_abs_diff is not None else ""
        note = f" ({self.note})" if self.note else ""
        return (f"{self.format}{' int8' if self.int8 else ''}: {self.path} in {self.seconds:.1f} s; "
                f"{self.checked}{diff}: {'ok' if self.ok else 'FAILED'}{note}")

    def record(self) -> dict:
        """The check as a record for the records page (`deploy.records`): format, precision, what
        was checked and its figures; the caller adds the model, weights and provenance."""
        return {"format": self.format, "precision": "int8" if self.int8 else "fp32", "checked": self.checked,
                "ok": self.ok, "max_abs_diff": self.max_abs_diff, "images": self.top1_images or None,
                "split": self.top1_split or None, "top1_float": self.top1_float,
                "top1_exported": self.top1_exported, "agreement": self.agreement, "cosine": self.cosine}

    def details(self) -> list[str]:
        """Lines about undelegated operators, top-1 and class names, where they apply."""
        lines = []
        if self.undelegated is not None:
            ops = ", ".join(f"{k} x{v}" for k, v in self.undelegated.items()) or "none"
            lines.append(f"{self.format}: operators outside the XNNPACK delegate: {ops}")
        if self.agreement is not None:
            kind = "int8" if self.int8 else "exported"
            top1 = (f"top-1 float {self.top1_float:.2f}% vs {kind} {self.top1_exported:.2f}%; "
                    if self.top1_float is not None else "")
            cosine = f", mean cosine similarity of the logits {self.cosine:.4f}" if self.cosine is not None else ""
            lines.append(f"{self.format}: on {self.top1_split} ({self.top1_images} images): {top1}"
                         f"top-1 agreement {self.agreement:.1%}{cosine}")
        if self.labels:
            lines.append(f"{self.format}: class names: {self.labels}")
        return lines


@dataclass
class CompiledModel:
    """A module made runnable on one backend with its input bound.

    Attributes:
        run: one inference on the bound input (what is timed).
        outputs: one inference, returning the outputs as a tuple of tensors.
        path: the exported file (ONNX, `.pte`, OpenVINO `.xml`, AOTInductor `.pt2`), None for eager.
        info: backend facts for the record (e.g. `undelegated_ops`, `ov_threads`).
        rebuild: `rebuild(threads)` gives the same export run with another thread count, for
            backends that allow several counts in one process (onnxruntime, openvino); else None.
    """

    run: Callable[[], object]
    outputs: Callable[[], tuple]
    path: Path | None = None
    info: dict = field(default_factory=dict)
    rebuild: Callable[[int], "CompiledModel"] | None = None


def bind(call: Callable[[torch.Tensor], object], x: torch.Tensor, path: Path | None = None,
         info: dict | None = None, rebuild: Callable[[int], CompiledModel] | None = None) -> CompiledModel:
    """A `CompiledModel` of `call` with the input `x` bound."""
    return CompiledModel(lambda: call(x), lambda: as_tuple(call(x)), path, info or {}, rebuild)


def check_runtime(runner: Runner, module: nn.Module, inputs: Sequence[torch.Tensor], what: str,
                  atol: float | None = FP32_ATOL) -> float:
    """Max abs difference between `runner` (an exported model in its runtime) and `module` over
    all outputs of every input; raises AssertionError on another output count or shape, or
    when the difference exceeds `atol` (None: no bound)."""
    import torch
    diff = 0.0
    for x in inputs:
        got = as_tuple(runner(x))
        with torch.no_grad():
            want = as_tuple(module(x))
        if len(got) != len(want):
            raise AssertionError(f"{what} has {len(got)} outputs, PyTorch {len(want)}")
        for g, w in zip(got, want):
            if tuple(g.shape) != tuple(w.shape):
                raise AssertionError(f"{what} output shape {tuple(g.shape)} != PyTorch {tuple(w.shape)} "
                                     f"on input {tuple(x.shape)}")
            diff = max(diff, float((g.float() - w.float()).abs().max()))
    if atol is not None and not diff <= atol:
        raise AssertionError(f"{what} differs from PyTorch by {diff:.3g} > {atol}")
    return diff


class Runtime:
    """One runtime: export with its parity check, load and run, int8 where it has one, profile.

    Subclasses set the class attributes and implement `export` and `load` (file formats) or
    `compile` (in-process backends such as eager PyTorch).
    """

    name: ClassVar[str]                      # registry key
    order: ClassVar[int] = 100               # position in the listings (formats, backends)
    what: ClassVar[str] = ""                 # how checks name it, e.g. "ONNX Runtime"
    format: ClassVar[str | None] = None      # tools/export.py --format name, None: not a file format
    backend: ClassVar[str | None] = None     # tools/benchmark.py --backend name, None: not benchmarked
    suffix: ClassVar[str] = ""               # the export's file suffix (checked: the output path must end in it)
    stack: ClassVar[str | None] = None       # deploy.stacks key of what it needs installed
    int8_stack: ClassVar[str | None] = None  # ... and for int8
    imports: ClassVar[tuple[str, ...]] = ()  # modules the backend imports (probed before a benchmark)
    int8: ClassVar[bool] = False             # has an int8 path (export and benchmark)
    latency_table: ClassVar[bool] = False    # a backend of the search's latency table
    dynamic_batch: ClassVar[bool] = False    # exported files take any batch size
    dynamic_hw: ClassVar[bool] = False       # --features files take any height and width
    atol: ClassVar[float] = FP32_ATOL        # fp32 parity bound of the export check
    profile_key: ClassVar[str | None] = None  # record key of `profile`'s result in the benchmark
    embeds_labels: ClassVar[bool] = False    # class names go into the file itself, not beside it
    writes_folder: ClassVar[bool] = False    # the export is a folder (a CoreML package)

    # ---------------------------------------------------------------- availability
    def require(self, int8: bool = False) -> None:
        """Raise `ExportStackError` naming what to install when this runtime's packages are missing."""
        stack = self.int8_stack if int8 and self.int8_stack else self.stack
        if stack:
            require_stack(stack)

    def unavailable(self) -> str:
        """"" if this backend can run here, else why not and what to do (imports its modules)."""
        for module in self.imports:
            try:
                importlib.import_module(module)
            except ImportError as e:
                pip = STACKS[self.stack][1] if self.stack in STACKS else module
                return (f"backend {self.backend} needs {module}, which is not installed or cannot be imported "
                        f"({e}): run `make install` (or `pip install -e .[export]`, i.e. {pip})")
        return ""

    def unavailable_error(self, why: str) -> Exception:
        return ExportStackError(why)

    # ---------------------------------------------------------------- export
    def configure(self, features: bool, size: tuple[int, int], **options) -> dict:
        """The export options this runtime takes (e.g. CoreML's precision and sizes), resolved."""
        return {}

    def any_size(self, features: bool, options: dict) -> bool:
        """Whether the exported graph must hold at every input size (the deploy form is then made
        shape-generic before export)."""
        return features and self.dynamic_hw

    def export(self, module: nn.Module, example: torch.Tensor, path: Path, *, dynamic_batch: bool = False,
               dynamic_hw: bool = False, calibration: Sequence[torch.Tensor] | None = None, **options) -> dict:
        """Write `module` (eval mode) at `path`; returns extra `ExportResult` fields (may be empty)."""
        raise NotImplementedError(f"{self.name} has no file format")

    def load(self, path: str | Path, threads: int | None = None) -> Runner:
        """The exported file loaded in its runtime: a callable tensor -> tuple of tensors."""
        raise NotImplementedError(f"{self.name} has no runtime for files")

    def check_inputs(self, example: torch.Tensor, features: bool, generator: torch.Generator | None,
                     normalise: Callable | None) -> list[torch.Tensor]:
        """Inputs the export check runs: the example, a second random input (of batch 2 for a
        symbolic batch) and, for feature maps of symbolic size, a non-square other size."""
        n, c, h, w = example.shape
        checks = [example, random_input((2 if self.dynamic_batch else n, c, h, w), generator, normalise)]
        if features and self.dynamic_hw:
            checks.append(random_input((1, c, *other_size((h, w))), generator, normalise))
        return checks

    def export_checked(self, module: nn.Module, example: torch.Tensor, path: Path, *, features: bool = False,
                       calibration: Sequence[torch.Tensor] | None = None, generator: torch.Generator | None = None,
                       normalise: Callable | None = None, **options) -> ExportResult:
        """Export and compare the file in its runtime with PyTorch: fp32 within `atol`; int8
        (`calibration` given) measured, not bounded. Raises AssertionError when the check fails."""
        int8 = calibration is not None
        extra = self.export(module, example, path, dynamic_batch=self.dynamic_batch,
                            dynamic_hw=features and self.dynamic_hw, calibration=calibration, **options) or {}
        checks = self.check_inputs(example, features, generator, normalise)
        diff = check_runtime(self.load(path), module, checks, self.what, atol=None if int8 else self.atol)
        bound = "int8: difference not bounded" if int8 else f"bound {self.atol}"
        return ExportResult(self.format or self.name, path, 0.0,
                            f"{self.what} vs PyTorch on {shapes_text(checks)} ({bound})", max_abs_diff=diff,
                            int8=int8, **extra)

    # ---------------------------------------------------------------- benchmark
    def compile(self, module: nn.Module, x: torch.Tensor, threads: int, workdir: str | Path | None = None,
                name: str = "model", calibration: Sequence[torch.Tensor] | None = None) -> CompiledModel:
        """`module` (eval mode) made runnable at the input `x`, the shape fixed: exported into
        `workdir` (a temporary folder when None) and loaded with `threads` threads.
        torch backends take their threads from `torch.set_num_threads`, set by the caller."""
        if calibration is not None and not self.int8:
            raise ValueError(f"int8 is not available on {self.backend or self.name}")
        workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix=f"efv2-{self.name}-"))
        path = workdir / f"{name}{self.suffix}"
        self.export(module.eval(), x, path, calibration=calibration)
        return self.bound(path, x, threads)

    def bound(self, path: Path, x: torch.Tensor, threads: int) -> CompiledModel:
        """The file at `path` loaded with `threads` threads, `x` bound."""
        return bind(self.load(path, threads), x, path)

    def profile(self, compiled: CompiledModel, x: torch.Tensor, threads: int, runs: int,
                warmup: int) -> dict[str, float]:
        """Where the time of a compiled model goes: ms per run by operator type, largest first."""
        raise NotImplementedError(f"{self.name} has no profile")
