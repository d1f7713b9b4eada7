"""The paper's design-space study as a library: parameters, GMACs, latency and (with data) top-1
of architecture configs side by side (tools/ablate.py is its command line; docs/ablations.md).

    from classification.ablation import ablate
    result = ablate(["configs/classification/ablations/table7_s1_attention-bias.yaml"], Path("runs/ablate"),
                    backends=("torch",), data=Path("data/toy_cls"), train_config=Path("configs/classification/toy.yaml"))

One concern per function: `read_config` (the architecture a classification config names),
`measure` (params, GMACs and interleaved latency, `deploy.benchmark`), `train_top1` (a short fit
with the classification CLI, in-process), `markdown_table` and `plot` (the outputs), `ablate`
(all of it, writing OUT/ablate.{md,json,png}); `PAPER` holds the paper's rows. Bad input (a
config naming no architecture, an unknown backend or baseline, a missing data folder) is an
`AblationError` (a ValueError) whose message says what to do; `option` names the argument it is
about, so a command line can use its own flag names.
"""
from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from backbones.errors import EfficientFormerV2Error

__all__ = ["AblationError", "ArchConfig", "PAPER", "read_config", "measure", "train_top1", "markdown_table", "plot",
           "check_data", "ablate"]


class AblationError(EfficientFormerV2Error, ValueError):
    """Bad input to the study; `option` is the argument it is about (None: the configs)."""

    def __init__(self, message: str, option: str | None = None) -> None:
        super().__init__(message)
        self.option = option


# The paper's figures for the configs of configs/classification/ablations/ (by file stem): table
# and row, params (M), GMACs, latency on iPhone 12 (ms), ImageNet-1K top-1 (%, 300 epochs).
# None: not given in the paper. Table 1's rows are on the paper's own baseline networks.
PAPER: dict[str, tuple[str, float | None, float | None, float | None, float | None]] = {
    "table1_0_no-local-v_no-talking-head": ("Tab. 1 Vary Depth and Width", 12.24, 1.20, 1.3, 80.5),
    "table1_1_local-v_talking-head": ("Tab. 1 Locality in V & Talking Head", 12.25, 1.21, 1.3, 80.8),
    "table1_2_attention-higher-resolution": ("Tab. 1 Attention at Higher Resolution", 13.10, 1.48, 3.5, 81.7),
    "table1_3_stride-attention": ("Tab. 1 Stride Attention", 13.10, 1.31, 1.5, 81.5),
    "table1_4_attention-downsampling": ("Tab. 1 Attention Downsampling", 13.18, 1.33, 1.6, 81.4),
    "table1_5_dual-path-downsampling": ("Tab. 1 Dual-Path Attention Downsampling", 13.40, 1.35, 1.6, 81.8),
    "table7_s1_attention-bias": ("Tab. 7 S1, attention bias Y", 6.10, None, None, 79.0),
    "table7_s1_no-attention-bias": ("Tab. 7 S1, attention bias N", 6.08, None, None, 78.8),
    "table8_expansion-4": ("Tab. 8 expansion ratio 4", 13.4, None, 1.6, 81.8),
    "table8_expansion-2": ("Tab. 8 expansion ratio 2", 13.4, None, 1.6, 81.6),
    "table8_expansion-1": ("Tab. 8 expansion ratio 1", 13.4, None, 1.6, 81.1),
}


@dataclass
class ArchConfig:
    """The architecture a classification config names.

    Args:
        path: the config file.
        label: its name in the table (the file stem).
        arch: `model.arch` (a dict for `Arch.from_dict`, e.g. with "base") or, for a variant config,
            the variant name from `model.model_name` ("s1").
    """

    path: Path
    label: str
    arch: dict[str, Any] | str

    def cli_args(self) -> list[str]:
        """Arguments that put this architecture into a `python -m classification` run."""
        if isinstance(self.arch, str):
            return ["--model.model_name", f"efficientformerv2_{self.arch}", "--model.arch", "null"]
        return ["--model.arch", json.dumps(self.arch)]


def read_config(path: str | Path) -> ArchConfig:
    """The architecture of a classification config (with the configs it includes, as the CLI reads
    it); checks that it builds (`resolve_arch`), so an unknown switch or value is reported with the
    config's name."""
    from .search.io import read_config as resolved

    path = Path(path)
    try:  # the configs it includes merged in, dotted keys nested (as the CLI reads it)
        config = resolved(path, what="config")
    except ValueError as e:
        raise AblationError(str(e)) from None
    model = config.get("model")
    if not isinstance(model, dict) or not (model.get("arch") or model.get("model_name")):
        raise AblationError(f"{path} names no architecture: expected model.arch (e.g. {{base: s1, "
                         "attention_bias: false}) or model.model_name (a variant config)")
    arch = model.get("arch") or str(model["model_name"])
    if isinstance(arch, str):  # a variant: "s1" or "efficientformerv2_s1"
        arch = arch.lower().removeprefix("efficientformerv2_")
    elif not isinstance(arch, dict):
        raise AblationError(f"{path}: model.arch must be a mapping, not {type(arch).__name__}")
    from backbones import resolve_arch  # after the cheap checks: imports torch

    try:
        resolve_arch(arch)
    except (ValueError, TypeError) as e:
        raise AblationError(f"{path}: {e}") from None
    return ArchConfig(path, path.stem, arch)


def measure(configs: Sequence[ArchConfig], backends: Sequence[str], threads: int = 2, resolution: int = 224,
            runs: int = 20, warmup: int = 5, baseline: str | None = None,
            log: Callable[[str], None] = lambda s: None) -> list[dict]:
    """One row per config: params and GMACs at 224 of the released form (1000 classes,
    distillation head), and the median/p90 latency (ms) per backend, all measured interleaved.
    With `baseline` (a model name of the benchmark, e.g. mobilenetv2_100) that model is measured in
    the same run, as a last row, and every row carries `vs_baseline`: backend -> latency / the
    baseline's."""
    from backbones import EfficientFormerV2
    from deploy.benchmark import build_named_model, run_benchmark
    from deploy.profile import count_gmacs, count_params

    reference = None
    if baseline is not None:  # built first: an unknown name fails before anything is measured
        try:
            reference = build_named_model(baseline)  # at 224, as the rows are counted
        except ValueError as e:
            raise AblationError(f"{e}", option="baseline") from None
    log(f"measuring {len(configs)} architectures on {', '.join(backends)}")
    rows, models = [], []
    for c in configs:
        model = EfficientFormerV2(c.arch).eval()  # at 224: the bias tables' size depends on the grid
        # the latency model is built for the benchmark's input size (its deploy form precomputes
        # the attention biases of that grid), as the benchmark builds named models
        models.append((c.label, model if resolution == 224 else EfficientFormerV2(c.arch, img_size=resolution)))
        paper = PAPER.get(c.label)
        rows.append({"config": str(c.path), "label": c.label, "arch": c.arch, "params": count_params(model),
                     "gmacs": round(count_gmacs(model, 224), 4), "latency_ms": {}, "latency_ms_p90": {},
                     "top1": None,
                     "paper": None if paper is None else dict(zip(("row", "params_m", "gmacs", "latency_ms", "top1"),
                                                                  paper))})
    if reference is not None:
        models.append(baseline)  # the benchmark builds it by name, for its resolution
        rows.append({"config": None, "label": baseline, "arch": None, "params": count_params(reference),
                     "gmacs": round(count_gmacs(reference, 224), 4), "latency_ms": {}, "latency_ms_p90": {},
                     "top1": None, "paper": None, "baseline": True})
    records = run_benchmark(models, backends, threads=threads, resolution=resolution, runs=runs, warmup=warmup,
                            baseline=baseline, log=log)
    by_label = {r["label"]: r for r in rows}
    for rec in records:
        row = by_label[rec["model"]]
        row["latency_ms"][rec["backend"]] = rec["latency_ms_median"]
        row["latency_ms_p90"][rec["backend"]] = rec["latency_ms_p90"]
        if "vs_baseline" in rec:
            row.setdefault("vs_baseline", {})[rec["backend"]] = rec["vs_baseline"]
    return rows


def train_top1(config: ArchConfig, data: Path, out: Path, epochs: int, img_size: int, batch_size: int,
               train_config: Path, keep_checkpoints: bool = False) -> float:
    """Train `config`'s architecture on `data` with the classification CLI (in this process) and
    return the last epoch's validation top-1 in [0, 1]. `out` is the run folder: logs (tb/, csv/)
    and, with `keep_checkpoints`, checkpoints/last.ckpt."""
    import shutil

    from .__main__ import cli

    shutil.rmtree(out, ignore_errors=True)  # a fresh run, not a resume of an older one
    args = ["fit", "--config", str(train_config), *config.cli_args(), "--data.root", str(data),
            "--data.img_size", str(img_size), "--data.batch_size", str(batch_size),
            "--trainer.max_epochs", str(epochs), "--trainer.default_root_dir", str(out),
            "--trainer.enable_model_summary", "false",
            "--checkpoint.save_top_k", "0", "--checkpoint.save_last", "true" if keep_checkpoints else "false"]
    with warnings.catch_warnings():  # the tool's own argv is not the CLI's: passing `args` is intended
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        fitted = cli(args)
    metric = fitted.trainer.callback_metrics.get("val/top1")
    if metric is None:
        raise RuntimeError(f"training {config.label} logged no val/top1 (no validation epoch ran)")
    return float(metric)


def markdown_table(rows: Sequence[dict]) -> str:
    """The rows as a Markdown table: measured figures, then the paper's."""
    backends = list(dict.fromkeys(b for r in rows for b in r["latency_ms"]))
    trained = any(r["top1"] is not None for r in rows)
    baseline = next((r["label"] for r in rows if r.get("baseline")), None)
    ratios = [f"{b} / {baseline}" for b in backends] if baseline is not None else []
    head = ["config", "params (M)", "GMACs"] + [f"{b} ms" for b in backends] + ratios \
        + (["top-1 (%)"] if trained else []) + ["paper row", "paper params (M)", "paper iPhone ms", "paper top-1 (%)"]
    text_columns = {"config", "paper row"}
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" if h in text_columns else "---:" for h in head) + "|"]

    def fmt(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    for r in rows:
        p = r["paper"] or {}
        cells = [r["label"], f"{r['params'] / 1e6:.3f}", f"{r['gmacs']:.3f}"]
        cells += [fmt(r["latency_ms"].get(b), ".2f") for b in backends]
        if baseline is not None:
            cells += [fmt(r.get("vs_baseline", {}).get(b), ".2f") for b in backends]
        if trained:
            cells.append(fmt(None if r["top1"] is None else 100 * r["top1"], ".1f"))
        cells += [p.get("row", "-"), fmt(p.get("params_m"), ".2f"), fmt(p.get("latency_ms"), ".1f"),
                  fmt(p.get("top1"), ".1f")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: Sequence[dict], path: Path, backend: str, settings: dict) -> Path:
    """PNG of measured top-1 (or, without training, parameters) against latency on `backend`."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trained = any(r["top1"] is not None for r in rows)
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    markers = "osD^vP*X<>"
    for i, r in enumerate(rows):
        x = r["latency_ms"].get(backend)
        y = (100 * r["top1"] if r["top1"] is not None else None) if trained else r["params"] / 1e6
        if x is None or y is None:
            continue
        # one marker and colour per row, named in the legend (labels next to close points overlap)
        ax.plot(x, y, markers[i % len(markers)], color=f"C{i % 10}", label=r["label"], markersize=7)
    threads = settings["threads"]
    ax.set_xlabel(f"latency (ms, median; {backend}, batch 1, {threads} thread{'s' if threads != 1 else ''}, "
                  f"{settings['resolution']}px)")
    if trained:
        ax.set_ylabel(f"top-1 (%) after {settings['epochs']} epochs at {settings['img_size']}px")
        ax.set_title("Ablations: accuracy vs latency")
    else:
        ax.set_ylabel("parameters (M)")
        ax.set_title("Ablations: size vs latency")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def check_data(data: Path) -> None:
    """Fail early (before any measurement) when `data` is not an ImageNet-layout folder."""
    if not data.is_dir():
        raise AblationError(f"data folder {data} does not exist: pass an ImageNet-layout folder "
                            "(ROOT/train/<class>/*, ROOT/val/<class>/*); a toy set is made by "
                            "`python tools/make_toy_data.py --task cls --out DIR`")
    from imagefolder import find_classes

    find_classes(data / "train")
    find_classes(data / "val")


def ablate(config_paths: Sequence[str | Path], out: Path, backends: Sequence[str] = ("torch",), threads: int = 2,
           resolution: int = 224, runs: int = 20, warmup: int = 5, data: Path | None = None, epochs: int = 5,
           img_size: int = 64, batch_size: int = 32, train_config: Path | None = None,
           keep_checkpoints: bool = False, train_threads: int = 1, baseline: str | None = None,
           log: Callable[[str], None] = lambda s: None) -> dict:
    """Measure (and with `data`, train) every config; write OUT/ablate.{md,json,png}. `baseline`:
    a model name of the benchmark (timm or project) measured in the same run, for ratios.

    `train_config`: the recipe (a classification config) the architectures are trained with when
    `data` is given (tools/ablate.py passes configs/classification/toy.yaml).

    Returns {"settings": ..., "rows": [...], "markdown": table, "files": {kind: path}}.
    """
    if data is not None:
        if train_config is None:
            raise AblationError("training needs a recipe: pass train_config (a classification config such as "
                                "configs/classification/toy.yaml)", option="train_config")
        check_data(data)
        train_config = Path(train_config)
        if not train_config.is_file():
            raise AblationError(f"training config {train_config} does not exist", option="train_config")
    configs = [read_config(p) for p in config_paths]
    labels = [c.label for c in configs]
    if len(set(labels)) != len(labels):
        raise AblationError(f"config names must differ (they label the rows): {labels}")
    if baseline is not None and baseline in labels:
        raise AblationError(f"the baseline {baseline!r} has the name of a config; rename one of them")
    import torch

    from deploy.benchmark import BACKENDS

    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise AblationError(f"unknown backend(s) {unknown}; choose from {', '.join(BACKENDS)}")
    settings: dict[str, Any] = {"backends": list(backends), "threads": threads, "resolution": resolution,
                                "runs": runs, "warmup": warmup, "data": None if data is None else str(data),
                                "baseline": baseline}
    if data is not None:
        settings.update(epochs=epochs, img_size=img_size, batch_size=batch_size, train_config=str(train_config),
                        train_threads=train_threads)
    torch.set_num_threads(threads)
    rows = measure(configs, backends, threads, resolution, runs, warmup, baseline, log)
    if data is not None:
        for c, row in zip(configs, rows[:len(configs)]):  # the baseline (last row) is not trained
            log(f"training {c.label}: {epochs} epochs at {img_size}px on {data}")
            torch.set_num_threads(train_threads)
            start = time.perf_counter()
            row["top1"] = round(train_top1(c, data, out / "train" / c.label, epochs, img_size, batch_size,
                                           train_config, keep_checkpoints), 4)
            row["train_seconds"] = round(time.perf_counter() - start, 1)
            log(f"{c.label}: top-1 {100 * row['top1']:.1f} in {row['train_seconds']:.0f} s")
    table = markdown_table(rows)
    out.mkdir(parents=True, exist_ok=True)
    files = {"markdown": out / "ablate.md", "json": out / "ablate.json", "plot": out / "ablate.png"}
    files["markdown"].write_text(table + "\n")
    files["json"].write_text(json.dumps({"settings": settings, "rows": rows}, indent=1) + "\n")
    plot(rows, files["plot"], backends[0], settings)
    return {"settings": settings, "rows": rows, "markdown": table, "files": files}
