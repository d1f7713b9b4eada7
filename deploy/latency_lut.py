"""Latency lookup table of the supernet's building blocks (paper Alg. 1, table T).

Every block type the search can change is timed on the device at hand, once per setting:

| key | module | input |
|---|---|---|
| `stem:<c_stem>-<c_1>` | the two stride-2 stem convs | image |
| `down<j>:<c_in>-<c_out>` | downsampling into stage j (j = 2, 3: conv; j = 4: conv + attention) | previous stage map |
| `ffn<j>:<c>x<e>` | residual FFN block of stage j, width c, expansion e | stage map |
| `mhsa<j>:<c>` | residual MHSA of stage j (j = 3 with stride attention, 4) | stage map |
| `head:<c>` | final norm, pooling and the classifier head(s) | last stage map |

Every entry is cut from a plain `EfficientFormerV2` and timed in its deploy form (after
`EfficientFormerV2.fuse()`: BatchNorm and layer scales folded, attention biases precomputed, heads
merged), which is what is exported and shipped; the whole-network check times fused models too.
A sub-network's latency is predicted as the sum of its modules' entries (`LatencyTable.predict`).
Backends (the runtime registry's latency-table backends, `deploy.runtimes.LUT_BACKENDS`): `torch`
(eager), `onnxruntime`, `executorch` (XNNPACK delegate) and `openvino` (CPU plugin, f32), so that
the search targets the runtime a model is deployed with; each entry is made runnable by its
runtime's `compile`, as the benchmark does (ONNX: the one exporter path of `--format onnx`). With the
three runtimes every timed graph also pays the runtime's fixed cost per run (the call, input and
output copies, the change into and out of the runtime's convolution layout), which a whole
network pays once: each entry has the time of a pass-through graph of its input shape (a
depth-wise 1x1 convolution with unit weights) subtracted, and the table's `overhead_ms` (the
pass-through at the image shape) is added once per prediction. Every timing goes through `deploy.latency.measure`. Tables
are stored as JSON with the conditions they were measured under.
"""
from __future__ import annotations

import json
import math
import platform
import random
import statistics
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Mapping

import torch
from torch import nn

from backbones import EfficientFormerV2
from backbones.arch import Arch, StageArch, stage_plans
from backbones.efficientformer_v2 import ClassifierForward, EfficientFormerV2Block
from backbones.errors import FileFormatError, UsageError
from backbones.supernet import SearchSpace, SubnetConfig, as_subnet_config

from .latency import measure
from .runtimes import LUT_BACKENDS, backend_runtime

__all__ = ["Backend", "LatencyTable", "build_latency_table", "measure_latency", "subnet_keys",
           "evaluate_table", "TableReport"]

BACKENDS = LUT_BACKENDS      # the registry's latency-table backends (deploy.runtimes)
Backend = Literal[BACKENDS]  # one of them


# --------------------------------------------------------------------------------------------
# Keys
# --------------------------------------------------------------------------------------------
def _fmt(e: float) -> str:
    return f"{e:g}"


def subnet_keys(config: SubnetConfig) -> list[str]:
    """Table keys whose entries sum to the latency of `config`."""
    s = config.stages
    keys = [f"stem:{config.stem_width}-{s[0].width}"]
    for j, stage in enumerate(s):
        if j > 0:
            keys.append(f"down{j + 1}:{s[j - 1].width}-{stage.width}")
        first_mhsa = stage.depth - stage.attention
        for k, e in enumerate(stage.expansions):
            if k >= first_mhsa:
                keys.append(f"mhsa{j + 1}:{stage.width}")
            keys.append(f"ffn{j + 1}:{stage.width}x{_fmt(e)}")
    keys.append(f"head:{s[3].width}")
    return keys


class _MhsaHalf(nn.Module):
    """x + layer_scale(MHSA(x)): the attention half of a plain block (entry `mhsa<j>:<c>`)."""

    def __init__(self, block: EfficientFormerV2Block) -> None:
        super().__init__()
        self.token_mixer, self.ls1 = block.token_mixer, block.ls1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.ls1(self.token_mixer(x))


class _Head(ClassifierForward, nn.Module):
    """Final norm, pooling and classifier head(s) of a plain model (entry `head:<c>`)."""

    def __init__(self, model: EfficientFormerV2) -> None:
        super().__init__()
        self.norm, self.head, self.head_dist = model.norm, model.head, model.head_dist
        self.distilled_training = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.norm(x))


PartFactory = Callable[..., nn.Module]


def _part_factory(arch: Arch, pick: Callable[[EfficientFormerV2], nn.Module], img_size: int, num_classes: int,
                  distillation: bool) -> PartFactory:
    """`factory(fused=False)`: the part `pick` selects of the plain model `arch` (a carrier with one
    block per stage), taken after `EfficientFormerV2.fuse()` when `fused` (the deploy form that is
    shipped and timed)."""

    def factory(fused: bool = False) -> nn.Module:
        model = EfficientFormerV2(arch, num_classes=num_classes, distillation=distillation, img_size=img_size)
        return pick(model.fuse() if fused else model).eval()

    return factory


def _carrier(space: SearchSpace, stem: int | None = None, widths: Mapping[int, int] | None = None,
             expansion: tuple[int, float] | None = None, attention: int | None = None) -> Arch:
    """A plain architecture with one block per stage and the space's smallest settings, except
    the given stem width, stage widths, (stage, expansion) and stage whose block has MHSA."""
    widths = widths or {}
    stages = []
    for j in range(4):
        e = expansion[1] if expansion is not None and expansion[0] == j else space.expansions[0]
        stages.append(StageArch(widths.get(j, space.widths[j][0]), (e,), int(attention == j)))
    return Arch(tuple(stages), stem_width=stem if stem is not None else space.stem_widths[0])


def table_entries(space: SearchSpace, img_size: int, num_classes: int = 1000, distillation: bool = True
                  ) -> Iterator[tuple[str, PartFactory, tuple[int, int, int, int]]]:
    """(key, part factory, input shape) of every entry of `space`'s table. Each part is cut from
    a plain `EfficientFormerV2` (so it is exactly the shipped module); `factory(fused=True)` gives
    its deploy form, `factory()` the trainable form (whose parameters sum to the plain model's)."""
    plans = stage_plans(img_size)  # the model's own stage layout: grids, attention stages
    res = [p.grid for p in plans]
    w = space.widths

    def entry(key: str, arch: Arch, pick: Callable[[EfficientFormerV2], nn.Module], shape: tuple[int, ...]):
        return key, _part_factory(arch, pick, img_size, num_classes, distillation), shape

    for cs in space.stem_widths:
        for c1 in w[0]:
            yield entry(f"stem:{cs}-{c1}", _carrier(space, stem=cs, widths={0: c1}), lambda m: m.stem,
                        (1, 3, img_size, img_size))
    for j in range(1, 4):
        for cin in w[j - 1]:
            for cout in w[j]:
                yield entry(f"down{j + 1}:{cin}-{cout}", _carrier(space, widths={j - 1: cin, j: cout}),
                            lambda m, j=j: m.stages[j].downsample, (1, cin, res[j - 1], res[j - 1]))
    for j in range(4):
        for c in w[j]:
            for e in space.expansions:
                yield entry(f"ffn{j + 1}:{c}x{_fmt(e)}", _carrier(space, widths={j: c}, expansion=(j, e)),
                            lambda m, j=j: m.stages[j].blocks[0], (1, c, res[j], res[j]))
            if plans[j].attention:
                yield entry(f"mhsa{j + 1}:{c}", _carrier(space, widths={j: c}, attention=j),
                            lambda m, j=j: _MhsaHalf(m.stages[j].blocks[0]), (1, c, res[j], res[j]))
    for c in w[3]:
        yield entry(f"head:{c}", _carrier(space, widths={3: c}), _Head, (1, c, res[3], res[3]))


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------
def measure_latency(module: nn.Module, shape: tuple[int, ...], backend: Backend = "torch", threads: int = 1,
                    warmup: int = 5, runs: int = 20) -> float:
    """Median wall time of one forward pass of `module` (eval mode) on a random input, in ms
    (`deploy.latency.measure`).

    The module is timed as given: pass the deploy form (`fuse()`d) to time what is shipped, made
    runnable by its runtime exactly as `tools/benchmark.py` does (`Runtime.compile` of the
    registry, `deploy.runtimes`): torch: eager inference mode with `threads` intra-op threads;
    onnxruntime: the shipped ONNX exporter (dynamo, opset 20) and session options; executorch: the
    XNNPACK delegate, whose threadpool takes one thread count per process; openvino: the CPU
    plugin in f32.
    """
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}")
    if runs < 1:
        raise UsageError(f"runs must be >= 1, got {runs}")
    x = torch.randn(*shape)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with tempfile.TemporaryDirectory(prefix="efv2-lut-") as tmp:
            compiled = backend_runtime(backend, BACKENDS).compile(module.eval(), x, threads, tmp)
            return measure(compiled.run, runs, warmup).median
    finally:
        torch.set_num_threads(previous)


class _PassThrough(nn.Module):
    """The cheapest graph that enters and leaves a runtime's convolution layout: a depth-wise 1x1
    convolution with unit weights on `channels` channels. Its time is the runtime's fixed cost per
    run including the layout changes at the graph's ends (NCHW to NHWC for XNNPACK, to blocked
    layouts for OpenVINO and ONNX Runtime), which every timed block pays but a network pays once.
    (A ReLU pass-through leaves the layout changes in the entries: on the toy space the ExecuTorch
    table's sums were then 28% above the measured networks, 3% with this one.)"""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 1, groups=channels, bias=False)
        nn.init.ones_(self.conv.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


# --------------------------------------------------------------------------------------------
# Table
# --------------------------------------------------------------------------------------------
def host_cpu() -> str:
    """The CPU a table is measured on: its model name where the OS tells it (Linux), else the
    platform's processor or machine string."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name") and ":" in line:
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


@dataclass
class LatencyTable:
    """Latency (ms) per block setting, measured under the stated conditions."""

    backend: str
    img_size: int
    threads: int
    entries: dict[str, float]
    space: dict[str, Any]
    num_classes: int = 1000
    distillation: bool = True
    device: str = field(default_factory=host_cpu)
    overhead_ms: float = 0.0   # fixed cost per run, paid once per network (runtime tables)

    def predict(self, config: SubnetConfig | Mapping[str, Any]) -> float:
        """Predicted latency (ms) of a sub-network: the sum of its modules' entries, plus the
        runtime's fixed cost per run (`overhead_ms`)."""
        config = as_subnet_config(config)
        missing = [k for k in subnet_keys(config) if k not in self.entries]
        if missing:
            raise KeyError(f"the latency table has no entries {missing[:5]}: it was built for another "
                           "search space or input size; rebuild it with tools/build_latency_lut.py")
        return sum(self.entries[k] for k in subnet_keys(config)) + self.overhead_ms

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1, sort_keys=True))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "LatencyTable":
        """Read a table written by `save` (plain JSON, no code)."""
        try:
            data = json.loads(Path(path).read_text())
            table = cls(**data)
        except (OSError, json.JSONDecodeError, TypeError) as e:
            raise FileFormatError(f"{path} is not a latency table written by tools/build_latency_lut.py: {e}") from e
        bad = [k for k, v in table.entries.items() if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0)]
        if bad:
            raise FileFormatError(f"{path}: entries {bad[:5]} are not non-negative latencies in ms")
        return table


def build_latency_table(space: SearchSpace, img_size: int = 224, backend: Backend = "torch", threads: int = 1,
                        warmup: int = 5, runs: int = 20, num_classes: int = 1000, distillation: bool = True,
                        progress: Callable[[int, int, str, float], None] | None = None) -> LatencyTable:
    """Time the deploy form (`fuse()`d) of every entry of `space` (see the module docstring) and
    return the table. Entries of a runtime (onnxruntime, executorch, openvino) are net of its fixed
    cost per run, which the table keeps once as `overhead_ms`."""
    entries = list(table_entries(space, img_size, num_classes, distillation))
    fixed: dict[tuple[int, ...], float] = {}

    def fixed_cost(shape: tuple[int, ...]) -> float:
        if backend == "torch":
            return 0.0  # eager PyTorch pays its per-module cost inside a network as well
        if shape not in fixed:
            fixed[shape] = measure_latency(_PassThrough(shape[1]), shape, backend, threads, warmup, runs)
        return fixed[shape]

    table: dict[str, float] = {}
    for i, (key, factory, shape) in enumerate(entries):
        measured = measure_latency(factory(fused=True), shape, backend, threads, warmup, runs)
        table[key] = max(measured - fixed_cost(tuple(shape)), 0.0)
        if progress is not None:
            progress(i + 1, len(entries), key, table[key])
    return LatencyTable(backend, img_size, threads, table, space.to_dict(), num_classes, distillation,
                        overhead_ms=fixed_cost((1, 3, img_size, img_size)))


@dataclass
class TableReport:
    """How well the table's sums predict measured whole-network latency."""

    predicted_ms: list[float]
    measured_ms: list[float]
    pearson_r: float
    mean_abs_error_ms: float
    mean_rel_error: float

    def summary(self) -> str:
        return (f"LUT vs measured on {len(self.measured_ms)} random sub-networks: Pearson r {self.pearson_r:.3f}, "
                f"mean abs error {self.mean_abs_error_ms:.3f} ms ({100 * self.mean_rel_error:.1f}%)")


def evaluate_table(table: LatencyTable, num_subnets: int = 10, seed: int = 0, warmup: int = 5,
                   runs: int = 20) -> TableReport:
    """Measure `num_subnets` sub-networks (the largest, the smallest, then random ones) whole, as
    plain models in deploy form (`fuse()`d, as the table's entries), and compare with the table."""
    space = SearchSpace.from_dict(table.space)
    rng = random.Random(seed)
    configs = [space.largest(), space.smallest()] + [space.sample(rng) for _ in range(max(num_subnets - 2, 0))]
    predicted, measured = [], []
    for config in configs[:max(num_subnets, 2)]:
        model = EfficientFormerV2(config.to_arch(), num_classes=table.num_classes,
                                  distillation=table.distillation, img_size=table.img_size).fuse()
        measured.append(measure_latency(model, (1, 3, table.img_size, table.img_size), table.backend,
                                        table.threads, warmup, runs))
        predicted.append(table.predict(config))
    errors = [abs(p - m) for p, m in zip(predicted, measured)]
    r = max(-1.0, min(1.0, statistics.correlation(predicted, measured)))  # rounding can pass +-1
    return TableReport(predicted, measured, r,
                       statistics.fmean(errors), statistics.fmean(e / m for e, m in zip(errors, measured)))
