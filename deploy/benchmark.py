"""Latency benchmark of the project's models and any timm model on every backend of the runtime
registry (`deploy.runtimes`): torch eager, torch.compile, ONNX Runtime (and TensorRT where installed
with a GPU), ExecuTorch with the XNNPACK delegate, OpenVINO's CPU plugin and AOTInductor, fp32 and
(ExecuTorch, OpenVINO) int8, with parameters, GMACs and MES in the same table.

Two steps: `prepare(spec, backend, workdir, settings)` builds, exports and checks one model on one
backend (an `Entry`; it raises for that model alone), and `measure(entries)` times all entries
interleaved (`deploy.latency.measure_interleaved`) into `Record`s: compare latencies only inside
one `measure`. `run_benchmark` does both for a list of models and backends.

Models: a project variant (`efficientformerv2_s0`), any timm model (`mobilenetv2_100`),
`timm:NAME` for timm's implementation of a name the project also has (the reference graph), or
a `(label, module)` pair for a model built elsewhere (a searched or switched architecture).
"""
from __future__ import annotations

import csv
import json
import statistics
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Sequence, Union

import torch
from torch import nn

from backbones import create_model
from backbones.errors import FileFormatError, UsageError
from imagefolder import eval_transform

from .latency import Timed, measure_interleaved
from .mes import mobile_efficiency_score
from .models import build_model, deploy_form, is_project_model, model_data_config, replace_activations
from .profile import count_gmacs, count_params
from .runtimes import BACKENDS as _BACKENDS
from .runtimes import INT8_BACKENDS as _INT8_BACKENDS
from .runtimes import backend_runtime
from .runtimes.base import CompiledModel, as_tuple

__all__ = ["BACKENDS", "INT8_BACKENDS", "PAPER_TOP1", "ModelSpec", "CompiledModel", "compile_module",
           "Settings", "Subject", "Entry", "Record", "prepare_subject", "prepare", "measure", "run_benchmark", "format_table", "write_json", "write_csv", "plot_accuracy_latency",
           "available_backends", "build_named_model", "RANDOM_CALIBRATION_NOTE", "read_records", "spread",
           "format_spread"]

BACKENDS = _BACKENDS            # every backend of the runtime registry (deploy.runtimes)
INT8_BACKENDS = _INT8_BACKENDS  # backends with an int8 path (XNNPACK PT2E, NNCF)
# latency protocols: every activation replaced by this module (the paper's Pixel 6 figures: ReLU)
ACTIVATION_PROTOCOLS = {"relu": nn.ReLU}
RANDOM_CALIBRATION_NOTE = ("int8 is calibrated on random data, which gives a speed figure only: the latency "
                           "is meaningful, the int8 accuracy is not (pass --calibration DIR, an ImageNet-layout "
                           "folder, for that)")

# A model to benchmark: a name, or (label, module) for a model built elsewhere.
ModelSpec = Union[str, tuple[str, nn.Module]]

# ImageNet-1K top-1 (%) from the paper's Table 2 (300-epoch figures), keyed by timm/project name.
PAPER_TOP1 = {
    "efficientformerv2_s0": 75.7, "efficientformerv2_s1": 79.0, "efficientformerv2_s2": 81.6,
    "efficientformerv2_l": 83.3, "mobilenetv2_100": 71.8, "mobilenetv2_140": 74.7,
    "mobilevit_xs": 74.8, "mobilenetv3_large_100": 75.2, "efficientnet_b0": 77.1,
    "efficientnet_b3": 81.6, "deit_tiny_patch16_224": 74.5, "deit_small_patch16_224": 81.2,
    "levit_128s": 76.6, "levit_192": 80.0, "levit_256": 81.6, "levit_384": 82.6,
    "poolformer_s12": 77.2, "poolformer_s24": 80.3, "poolformer_s36": 81.4,
    "efficientformer_l1": 79.2, "efficientformer_l3": 82.4, "efficientformer_l7": 83.3,
    "resnet50": 78.5, "convnext_tiny": 82.1, "edgevit_xxs": 74.4,
}


def compile_module(module: nn.Module, x: torch.Tensor, backend: str, threads: int, workdir: str | Path,
                   name: str = "model", calibration: Sequence[torch.Tensor] | None = None) -> CompiledModel:
    """`module` (eval mode, as given: pass the deploy form to run what is shipped) made runnable
    on `backend` at the input `x`, the shape fixed.

    Args:
        backend: one of `BACKENDS` (the runtime registry's `deploy.runtimes.backend_runtime`).
        threads: intra-op threads. torch backends (eager, compile, aoti): set with
            `torch.set_num_threads` by the caller; executorch: the process's XNNPACK threadpool
            (`deploy.runtimes.executorch.set_threads`, one count per process).
        workdir: folder for the exported file (`name` + suffix).
        calibration: int8 calibration inputs (each of `x`'s shape), executorch and openvino only;
            None: fp32.
    """
    runtime = backend_runtime(backend)
    if calibration is not None and not runtime.int8:
        raise ValueError(f"int8 is available on {', '.join(INT8_BACKENDS)}, not on {backend}")
    return runtime.compile(module.eval(), x, threads, workdir, name, calibration=calibration)


def _resolve(name: str) -> tuple[str, bool]:
    """(model name, from timm?) for a command-line name."""
    if name.startswith("timm:"):
        return name[5:], True
    return name, not is_project_model(name)


def available_backends(backends: Sequence[str] = BACKENDS) -> dict[str, str]:
    """Backend -> "" if usable here, else why not (importing each runtime it needs)."""
    return {b: backend_runtime(b).unavailable() for b in backends}


def build_named_model(name: str, resolution: int = 224) -> nn.Module:
    """The eval-mode model a benchmark builds for a name: a project variant (built for `resolution`,
    random weights), `timm:NAME` (timm's implementation of it) or any timm model.

    Raises:
        ValueError: an unknown name, with the closest known ones.
    """
    model_name, from_timm = _resolve(name)
    if from_timm:
        import timm
        if model_name not in timm.list_models():
            return build_model(model_name)  # raises the helpful unknown-model error
        try:  # models with a fixed token grid (ViTs, timm's EfficientFormerV2) take the size here
            return timm.create_model(model_name, pretrained=False, img_size=resolution).eval()
        except TypeError:
            return timm.create_model(model_name, pretrained=False).eval()
    # built for the benchmark's input size, as timm's graph is: the deploy form precomputes the
    # attention biases for that token grid
    return create_model(model_name, img_size=resolution).eval()


def _calibration_batches(subject: Subject) -> list[torch.Tensor]:
    """Int8 calibration batches of the subject's input shape, prepared as the benchmarked graphs
    take them (normalised tensors): images of the settings' folder through the model's own
    evaluation transform (`imagefolder.data_config`), or standard-normal noise without a folder.
    Read once per subject (every int8 backend calibrates on the same batches)."""
    if subject.calibration is None:
        subject.calibration = _read_calibration(subject)
    return subject.calibration


def _read_calibration(subject: Subject) -> list[torch.Tensor]:
    settings, x = subject.settings, subject.x
    n, count = x.shape[0], settings.calibration_count
    if settings.calibration is None:
        g = torch.Generator().manual_seed(1)
        return [torch.randn(x.shape, generator=g) for _ in range(count)]
    from .calibration import calibration_images
    images = torch.cat(calibration_images(settings.calibration, eval_transform(subject.data_config),
                                          count=count * n))
    reps = -(-count * n // len(images))   # too few images: reuse them
    images = images.repeat(reps, 1, 1, 1)[:count * n]
    return list(images.split(n))


def _max_abs_diff(got: Sequence[torch.Tensor], want: Sequence[torch.Tensor]) -> float:
    if len(got) != len(want):
        raise AssertionError(f"the runtime gave {len(got)} outputs, PyTorch {len(want)}")
    return max(float((g.float() - w.float()).abs().max()) for g, w in zip(got, want))


@dataclass(frozen=True)
class Settings:
    """What the entries of one table share: the input and the protocol.

    Attributes:
        batch_size, threads, resolution: the bound input (batch_size, 3, resolution, resolution)
            and the intra-op threads of every backend. ExecuTorch's XNNPACK threadpool takes one
            count per process (RuntimeError for a second one): run other counts in a new process.
        activation: "relu": every model's activations replaced by ReLU before it is measured
            (`deploy.models.replace_activations`), the protocol of the paper's Pixel 6 latencies
            (Sec. 5.1); a latency figure only. None: the models as built.
        calibration: int8 calibration folder (ImageNet layout), read with each model's own
            evaluation transform (`imagefolder.data_config`); None: random data
            (`RANDOM_CALIBRATION_NOTE`).
        calibration_count: int8 calibration batches.
    """

    batch_size: int = 1
    threads: int = 2
    resolution: int = 224
    activation: str | None = None
    calibration: str | Path | None = None
    calibration_count: int = 32

    def __post_init__(self) -> None:
        if self.activation is not None and self.activation not in ACTIVATION_PROTOCOLS:
            raise UsageError(f"activation must be None (models as built) or one of {sorted(ACTIVATION_PROTOCOLS)}, "
                             f"got {self.activation!r}")

    def example(self) -> torch.Tensor:
        """The input every model is measured on (seeded: the same for every entry)."""
        return torch.randn(self.batch_size, 3, self.resolution, self.resolution,
                           generator=torch.Generator().manual_seed(0))


@dataclass
class Subject:
    """A model ready to be compiled for any backend: its deploy form, its PyTorch outputs on the
    settings' input and the figures of its record (`prepare_subject`)."""

    label: str
    net: nn.Module                 # deploy form, activations replaced by the settings' protocol
    settings: Settings
    x: torch.Tensor
    reference: tuple[torch.Tensor, ...]
    params: int                    # of the trainable form
    gmacs: float
    top1_paper: float | None
    data_config: dict              # its evaluation transform (int8 calibration images)
    activations_replaced: int | None = None
    calibration: list[torch.Tensor] | None = field(default=None, repr=False)  # int8 batches, read once

    @property
    def output_abs_max(self) -> float:
        # random weights can give huge logits (MobileOne's): the difference relative to them too
        return max(float(t.float().abs().max()) for t in self.reference)


@dataclass
class Entry:
    """A subject compiled on one backend at one precision: what `measure` times."""

    subject: Subject
    backend: str
    precision: str                 # fp32 or int8
    compiled: CompiledModel
    max_abs_diff: float | None     # against the PyTorch fp32 deploy form (None on torch itself)

    @property
    def key(self) -> str:
        return f"{self.subject.label}|{self.backend}|{self.precision}"


@dataclass
class Record:
    """One measured (model, backend, precision): the fields of a benchmark JSON record
    (`as_dict`, the keys `tools/benchmark.py --json` writes)."""

    model: str
    backend: str
    precision: str
    batch_size: int
    threads: int
    resolution: int
    latency_ms_median: float
    latency_ms_p90: float
    latency_ms_mean: float
    latency_ms_min: float
    runs: int
    params: int
    gmacs: float
    mes: float
    top1_paper: float | None
    max_abs_diff: float | None
    output_abs_max: float
    max_rel_diff: float | None = None  # max_abs_diff / output_abs_max
    details: dict = field(default_factory=dict)  # runtime facts, protocol, calibration, thread check, profiles
    vs_baseline: float | None = None

    def as_dict(self) -> dict:
        """The JSON record: the fixed fields, then the optional ones where set, then the details."""
        out = {f.name: getattr(self, f.name) for f in fields(self)
               if f.name not in ("max_rel_diff", "details", "vs_baseline")}
        if self.max_rel_diff is not None:
            out["max_rel_diff"] = self.max_rel_diff
        out.update(self.details)
        if self.vs_baseline is not None:
            out["vs_baseline"] = self.vs_baseline
        return out


def prepare_subject(spec: ModelSpec, settings: Settings = Settings()) -> Subject:
    """Build the model of `spec` (a name or a (label, module) pair; a module given is left as it
    was), its deploy form and its PyTorch outputs. Raises for this model alone."""
    label, module = (spec, None) if isinstance(spec, str) else spec
    model = build_named_model(label, settings.resolution) if module is None else module.eval()
    net = deploy_form(model)  # a copy: a module given by the caller is left as it was
    replaced = None
    if settings.activation is not None:
        replaced = replace_activations(net, ACTIVATION_PROTOCOLS[settings.activation])
    x = settings.example()
    with torch.inference_mode():
        reference = as_tuple(net(x))
    return Subject(label, net, settings, x, reference, count_params(model), count_gmacs(model, settings.resolution),
                   PAPER_TOP1.get(_resolve(label)[0]) if module is None else None,
                   model_data_config(model, settings.resolution), replaced)


def prepare(spec: ModelSpec | Subject, backend: str, workdir: str | Path, settings: Settings = Settings(),
            precision: str = "fp32") -> Entry:
    """`spec` compiled on `backend` at `precision` (fp32, or int8 on `INT8_BACKENDS`), run once
    and compared with PyTorch. Raises for this model alone (an export or a run that fails).

    Args:
        spec: a model name, a (label, module) pair, or a `Subject` prepared once for several
            backends (its own settings then apply).
        workdir: folder for the exported file; it must outlive the `measure` of the entry.
    """
    subject = spec if isinstance(spec, Subject) else prepare_subject(spec, settings)
    calibration = _calibration_batches(subject) if precision == "int8" else None
    stem = subject.label.replace(":", "_").replace("/", "_")
    compiled = compile_module(subject.net, subject.x, backend, subject.settings.threads, workdir,
                              f"{stem}_{backend}_{precision}", calibration=calibration)
    diff = None if backend == "torch" else _max_abs_diff(compiled.outputs(), subject.reference)
    return Entry(subject, backend, precision, compiled, diff)


def measure(entries: Sequence[Entry], runs: int = 50, warmup: int = 10, thread_check: bool = False,
            profile: Sequence[str] = (), log: Callable[[str], None] = lambda s: None) -> list[Record]:
    """Time every entry interleaved (`deploy.latency.measure_interleaved`) and return one
    `Record` each, in order.

    Args:
        runs, warmup: timed and untimed runs of each entry.
        thread_check: entries whose backend can run another thread count in this process (ONNX
            Runtime, OpenVINO), with `threads` > 1, also carry `latency_ms_median_1_thread` and
            `speedup_vs_1_thread` (the same export with 1 thread, timed interleaved with it after
            the table): whether the model uses its threads.
        profile: backends whose entries also carry where their time goes (the runtime's
            `profile_key`: `ort_op_ms`, `et_op_ms`, `ov_op_ms`; ms per run per op type).
    """
    log(f"measuring {len(entries)} model/backend pairs interleaved: {warmup} warm-up + {runs} runs each")
    stats = measure_interleaved([Timed(e.key, e.compiled.run) for e in entries], runs=runs, warmup=warmup)
    records = []
    for e in entries:
        s, subject, settings = stats[e.key], e.subject, e.subject.settings
        details = dict(e.compiled.info)
        if settings.activation is not None:
            details.update(activation=settings.activation, activations_replaced=subject.activations_replaced)
        if e.precision == "int8":
            details["calibration"] = str(settings.calibration) if settings.calibration is not None else "random"
        if thread_check:
            details.update(_thread_use(e, runs, warmup, log))
        runtime = backend_runtime(e.backend)
        if e.backend in profile and runtime.profile_key:
            log(f"profiling {subject.label} on {e.backend} ({e.precision})")
            details[runtime.profile_key] = {k: round(v, 4) for k, v in runtime.profile(
                e.compiled, subject.x, settings.threads, runs, warmup).items()}
        scale = subject.output_abs_max
        records.append(Record(
            subject.label, e.backend, e.precision, settings.batch_size, settings.threads, settings.resolution,
            round(s.median, 4), round(s.p90, 4), round(s.mean, 4), round(s.min, 4), s.runs, subject.params,
            round(subject.gmacs, 4), round(mobile_efficiency_score(subject.params, s.median / settings.batch_size), 4),
            subject.top1_paper, e.max_abs_diff, scale,
            e.max_abs_diff / scale if e.max_abs_diff is not None and scale > 0 else None, details))
    return records


def _thread_use(e: Entry, runs: int, warmup: int, log: Callable[[str], None]) -> dict:
    """For an entry that can run with another thread count in this process: its latency with 1
    thread, timed interleaved with the settings' count, and the speed-up; {} otherwise."""
    threads = e.subject.settings.threads
    if e.compiled.rebuild is None or threads < 2:
        return {}
    log(f"thread check: {e.subject.label} on {e.backend} ({e.precision}), 1 vs {threads} threads")
    single = e.compiled.rebuild(1)
    stats = measure_interleaved([Timed("n", e.compiled.run), Timed("1", single.run)], runs=runs, warmup=warmup)
    return {"latency_ms_median_1_thread": round(stats["1"].median, 4),
            "speedup_vs_1_thread": round(stats["1"].median / stats["n"].median, 3)}


def _check_request(labels: Sequence[str], backends: Sequence[str], settings: Settings, int8: bool,
                   baseline: str | None) -> None:
    """Refuse a benchmark that cannot run, before anything is built."""
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise UsageError(f"unknown backend(s) {unknown}; choose from {', '.join(BACKENDS)}")
    if len(set(labels)) != len(labels):
        raise UsageError(f"model labels must be unique, got {list(labels)}")
    if baseline is not None and baseline not in labels:
        raise UsageError(f"baseline {baseline!r} is not among the models {list(labels)}")
    if int8 and not set(backends) & set(INT8_BACKENDS):
        raise UsageError(f"int8 needs a backend with an int8 path: {', '.join(INT8_BACKENDS)}")
    if settings.calibration is not None and not int8:
        raise UsageError("a calibration folder is only used for int8: pass int8=True (--int8)")
    for b, why in available_backends(backends).items():
        if why:
            raise backend_runtime(b).unavailable_error(why)
    if int8:
        for b in backends:  # int8's own packages (NNCF), before anything is built
            backend_runtime(b).require(int8=backend_runtime(b).int8)


def run_benchmark(models: Sequence[ModelSpec], backends: Sequence[str] = ("onnxruntime",), *, int8: bool = False,
                  runs: int = 50, warmup: int = 10, baseline: str | None = None, ort_profile: bool = False,
                  et_profile: bool = False, ov_profile: bool = False, thread_check: bool = False,
                  log: Callable[[str], None] = lambda s: None, **settings: object) -> list[dict]:
    """Measure every (model, backend, precision) triple interleaved and return one record each
    (`Record.as_dict`): `prepare` each, then one `measure` of all.

    Args:
        models: names (a project variant, a timm model, `timm:NAME`) or `(label, module)` pairs
            for models built elsewhere (e.g. `EfficientFormerV2(arch)` of a switched or searched
            architecture); a pair's module is benchmarked like a named one (deploy form, params
            and GMACs of the module as given) and its label names it in the records.
        backends: from `BACKENDS`; each must be usable here (`available_backends`), else
            `ExportStackError` (a runtime not installed) or `UsageError` says what to do.
        int8: also measure int8 programs on the backends of `INT8_BACKENDS` (XNNPACK PT2E,
            NNCF), calibrated as `Settings.calibration` says.
        runs, warmup, thread_check: as for `measure`.
        baseline: a model label; records then carry `vs_baseline` (latency / the baseline's
            latency on the same backend and precision).
        ort_profile, et_profile, ov_profile: ONNX Runtime, ExecuTorch, OpenVINO records also carry
            `ort_op_ms`, `et_op_ms`, `ov_op_ms` (time per op type, ms per run; the runtime's
            `profile`, after the timed runs).
        **settings: the fields of `Settings` (batch_size, threads, resolution, activation,
            calibration, calibration_count).

    Records carry model, backend, precision (fp32 or int8), batch_size, threads, resolution,
    latency_ms_median/_p90/_mean/_min, runs, params (all parameters of the trainable form),
    gmacs (per image), mes (paper eq. 7 with this machine's latency), top1_paper (Table 2 where
    known), max_abs_diff (the backend's output against the PyTorch fp32 deploy form; max_rel_diff
    the same divided by the largest PyTorch output value; for int8 the
    quantization error, not a parity bound), vs_baseline (with `baseline`); ExecuTorch records
    `undelegated_ops` (operator -> count outside the XNNPACK delegate) and `delegate_calls`;
    OpenVINO records `ov_threads` and `ov_precision` (the compiled model's properties); int8
    records `calibration` (the folder, or "random"); with `activation`, records carry
    `activation` and `activations_replaced` (how many modules were swapped).
    """
    setup = Settings(**settings)
    specs = [m if isinstance(m, str) else (m[0], m[1]) for m in models]
    labels = [s if isinstance(s, str) else s[0] for s in specs]
    _check_request(labels, backends, setup, int8, baseline)
    torch.set_num_threads(setup.threads)
    if int8 and setup.calibration is None:
        log(RANDOM_CALIBRATION_NOTE)
    with tempfile.TemporaryDirectory(prefix="efv2-bench-") as tmp:
        entries = []
        for spec in specs:
            subject = prepare_subject(spec, setup)
            for backend in backends:
                for precision in ["fp32"] + (["int8"] if int8 and backend in INT8_BACKENDS else []):
                    log(f"preparing {subject.label} on {backend} ({precision})")
                    entries.append(prepare(subject, backend, tmp, precision=precision))
        profile = [b for b, wanted in (("onnxruntime", ort_profile), ("executorch", et_profile),
                                       ("openvino", ov_profile)) if wanted]
        records = measure(entries, runs, warmup, thread_check, profile, log)
    if baseline is not None:
        base = {(r.backend, r.precision): r.latency_ms_median for r in records if r.model == baseline}
        for r in records:
            r.vs_baseline = round(r.latency_ms_median / base[r.backend, r.precision], 3)
    return [r.as_dict() for r in records]


def format_table(records: Sequence[dict]) -> str:
    """A fixed-width text table of benchmark records."""
    has_base = any("vs_baseline" in r for r in records)
    has_check = any("speedup_vs_1_thread" in r for r in records)
    has_act = any("activation" in r for r in records)
    head = (["model"] + (["activation"] if has_act else [])
            + ["backend", "prec", "batch", "threads", "params(M)", "GMACs", "median ms", "p90 ms", "MES", "top-1 paper"]
            + (["x baseline"] if has_base else []) + (["x 1 thread"] if has_check else []) + ["max diff"])
    rows = []
    for r in records:
        row = [r["model"]] + ([r.get("activation", "as built")] if has_act else []) + [
               r["backend"], r.get("precision", "fp32"), str(r["batch_size"]), str(r["threads"]),
               f"{r['params'] / 1e6:.2f}", f"{r['gmacs']:.3f}", f"{r['latency_ms_median']:.2f}",
               f"{r['latency_ms_p90']:.2f}", f"{r['mes']:.1f}",
               "-" if r.get("top1_paper") is None else f"{r['top1_paper']:.1f}"]
        if has_base:
            row.append(f"{r['vs_baseline']:.2f}")
        if has_check:
            row.append(f"{r['speedup_vs_1_thread']:.2f}" if "speedup_vs_1_thread" in r else "-")
        row.append("-" if r.get("max_abs_diff") is None else f"{r['max_abs_diff']:.1e}")
        rows.append(row)
    return _fixed_width(head, rows)


def _fixed_width(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell, a dashed rule under the header."""
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip(), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


_SPREAD_KEY = ("model", "activation", "backend", "precision", "threads", "batch_size", "resolution")


def read_records(path: str | Path) -> list[dict]:
    """The records of one benchmark JSON (`--json` of `tools/benchmark.py`); ValueError for a
    file that is not one."""
    path = Path(path)
    try:
        records = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FileFormatError(f"{path} is not a benchmark JSON file (written by tools/benchmark.py --json): {exc}") from None
    needed = {"model", "backend", "threads", "latency_ms_median"}
    if (not isinstance(records, list) or not records
            or not all(isinstance(r, dict) and needed <= r.keys() for r in records)):
        raise FileFormatError(f"{path} is not a benchmark JSON file (written by tools/benchmark.py --json): "
                              f"expected a list of records with {sorted(needed)}")
    return records


def spread(runs: Sequence[Sequence[dict]]) -> list[dict]:
    """Run-to-run spread of benchmark runs of one set-up (e.g. one command repeated, each in its
    own process): per (model, activation, backend, precision, threads, batch, resolution), the
    median latency of each run and, where the runs have a baseline, each run's ratio to it,
    with their median, minimum and maximum. Rows keep the order of first appearance.

    Args:
        runs: the records of each run (`run_benchmark`'s list, or `read_records` of its JSON).
    Returns dicts with the key fields, `runs` (how many runs have the row), `latency_ms` and
    `vs_baseline` (lists in run order; `vs_baseline` empty without a baseline) and
    `latency_ms_median/_min/_max`, `vs_baseline_median/_min/_max` (None without a baseline).
    """
    if not runs:
        raise ValueError("no benchmark runs to summarise")
    rows: dict[tuple, dict] = {}
    for records in runs:
        seen: set[tuple] = set()
        for r in records:
            key = tuple(r.get(k, "fp32" if k == "precision" else None) for k in _SPREAD_KEY)
            if key in seen:
                raise FileFormatError(f"one run has two records of {dict(zip(_SPREAD_KEY, key))}")
            seen.add(key)
            row = rows.setdefault(key, {**dict(zip(_SPREAD_KEY, key)), "latency_ms": [], "vs_baseline": []})
            row["latency_ms"].append(r["latency_ms_median"])
            if "vs_baseline" in r:
                row["vs_baseline"].append(r["vs_baseline"])
    out = []
    for row in rows.values():
        row["runs"] = len(row["latency_ms"])
        for name in ("latency_ms", "vs_baseline"):
            values = row[name]
            row[f"{name}_median"] = statistics.median(values) if values else None
            row[f"{name}_min"] = min(values) if values else None
            row[f"{name}_max"] = max(values) if values else None
        out.append(row)
    return out


def format_spread(rows: Sequence[dict]) -> str:
    """A fixed-width text table of `spread` rows: median [min-max] over the runs."""
    def cell(row: dict, name: str, fmt: str) -> str:
        if row[f"{name}_median"] is None:
            return "-"
        lo, mid, hi = (format(row[f"{name}_{s}"], fmt) for s in ("min", "median", "max"))
        return mid if row["runs"] == 1 else f"{mid} [{lo}-{hi}]"
    # batch and resolution are columns only where the rows differ in them
    varying = [k for k in ("batch_size", "resolution") if len({r[k] for r in rows}) > 1]
    head = (["model", "activation", "backend", "prec", "threads"] + [{"batch_size": "batch", "resolution": "px"}[k]
                                                                    for k in varying]
            + ["runs", "median ms [min-max]", "x baseline [min-max]"])
    body = [[r["model"], r["activation"] or "as built", r["backend"], r["precision"], str(r["threads"])]
            + [str(r[k]) for k in varying]
            + [str(r["runs"]), cell(r, "latency_ms", ".2f"), cell(r, "vs_baseline", ".2f")] for r in rows]
    return _fixed_width(head, body)


def write_json(records: Sequence[dict], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(list(records), indent=2) + "\n")
    return path


def write_csv(records: Sequence[dict], path: str | Path) -> Path:
    """One row per record; nested values (profiles, operator counts) as JSON text."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fields: list[str] = []
    for r in records:
        fields += [k for k in r if k not in fields]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows({k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in r.items()}
                         for r in records)
    return path


def plot_accuracy_latency(records: Sequence[dict], path: str | Path, backend: str | None = None,
                          precision: str = "fp32") -> Path:
    """PNG of the paper's Table 2 top-1 against measured latency (the picture of its Figure 1),
    for the models with a known accuracy on `backend` (default: the first backend) at `precision`."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    backend = backend or records[0]["backend"]
    pts = [r for r in records if r["backend"] == backend and r.get("precision", "fp32") == precision
           and r.get("top1_paper") is not None]
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    ours = sorted((r for r in pts if is_project_model(r["model"])), key=lambda r: r["latency_ms_median"])
    reference = [r for r in pts if r["model"].startswith("timm:")]
    others = [r for r in pts if r not in ours and r not in reference]
    if reference:
        ax.plot([r["latency_ms_median"] for r in reference], [r["top1_paper"] for r in reference], "x",
                color="gray", label="same models, timm's graph")
    if ours:
        ax.plot([r["latency_ms_median"] for r in ours], [r["top1_paper"] for r in ours], "o-", color="tab:red",
                label="EfficientFormerV2 (this project)")
    if others:
        ax.plot([r["latency_ms_median"] for r in others], [r["top1_paper"] for r in others], "s",
                color="tab:blue", label="other models")
    for r in pts:
        if r not in reference:
            ax.annotate(r["model"], (r["latency_ms_median"], r["top1_paper"]), fontsize=7, xytext=(4, -10),
                        textcoords="offset points")
    first = records[0]
    ax.set_xlabel(f"latency (ms, median; {backend} {precision}, batch {first['batch_size']}, "
                  f"{first['threads']} threads, {first['resolution']}px)")
    ax.set_ylabel("ImageNet top-1 (%, paper Table 2)")
    ax.set_title("Accuracy vs measured latency")
    ax.grid(alpha=0.3)
    if pts:
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
