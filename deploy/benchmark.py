"""Latency benchmark of the project's models and any timm model: torch eager, torch.compile,
ONNX Runtime (and TensorRT where installed with a GPU), with parameters, GMACs and MES in the
same table. All (model, backend) pairs of one table are measured interleaved
(`deploy.latency.measure_interleaved`): compare latencies only inside one run.

Model names: a project variant (`efficientformerv2_s0`), any timm model (`mobilenetv2_100`),
or `timm:NAME` for timm's implementation of a name the project also has (the reference graph).
"""
from __future__ import annotations

import csv
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from .latency import Timed, measure_interleaved
from .mes import mobile_efficiency_score
from .models import build_model, deploy_form, is_project_model
from .profile import count_gmacs, count_params

__all__ = ["BACKENDS", "PAPER_TOP1", "run_benchmark", "format_table", "write_json", "write_csv",
           "plot_accuracy_latency", "available_backends"]

BACKENDS = ("torch", "compile", "onnxruntime", "tensorrt")

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


@dataclass
class _Entry:
    label: str              # model as given on the command line
    backend: str
    timed: Timed
    model: nn.Module        # the trainable-form model (params, GMACs)
    max_abs_diff: float | None
    onnx_path: Path | None = None   # the exported graph (ONNX backends)


def _resolve(name: str) -> tuple[str, bool]:
    """(model name, from timm?) for a command-line name."""
    if name.startswith("timm:"):
        return name[5:], True
    return name, not is_project_model(name)


def available_backends() -> dict[str, str]:
    """Backend -> "" if usable here, else why not."""
    import importlib.util
    status = {"torch": "", "compile": ""}
    if importlib.util.find_spec("onnxruntime") is None:
        status["onnxruntime"] = "onnxruntime is not installed (make install)"
        status["tensorrt"] = status["onnxruntime"]
    else:
        import onnxruntime as ort
        status["onnxruntime"] = ""
        if "TensorrtExecutionProvider" not in ort.get_available_providers() or not torch.cuda.is_available():
            status["tensorrt"] = "needs onnxruntime-gpu with TensorRT and a CUDA GPU"
        else:
            status["tensorrt"] = ""
    return status


def _build(name: str, resolution: int) -> nn.Module:
    model_name, from_timm = _resolve(name)
    if from_timm:
        import timm
        if model_name not in timm.list_models():
            return build_model(model_name)  # raises the helpful unknown-model error
        try:  # models with a fixed token grid (ViTs, timm's EfficientFormerV2) take the size here
            return timm.create_model(model_name, pretrained=False, img_size=resolution).eval()
        except TypeError:
            return timm.create_model(model_name, pretrained=False).eval()
    return build_model(model_name)


def _prepare(label: str, model: nn.Module, backend: str, x: torch.Tensor, threads: int, workdir: Path) -> _Entry:
    net = deploy_form(model)
    key = f"{label}|{backend}"
    if backend == "torch":
        def run() -> None:
            with torch.inference_mode():
                net(x)
        return _Entry(label, backend, Timed(key, run), model, None)
    if backend == "compile":
        compiled = torch.compile(net)
        with torch.inference_mode():  # compiles now, and checks the compiled graph against eager
            diff = float((compiled(x) - net(x)).abs().max())

        def run() -> None:
            with torch.inference_mode():
                compiled(x)
        return _Entry(label, backend, Timed(key, run), model, diff)
    from .export import check_onnx, export_onnx
    from .ort import create_session
    path = workdir / (label.replace(":", "_").replace("/", "_") + ".onnx")
    export_onnx(net, x, path, dynamic_batch=False)
    if backend == "onnxruntime":
        sess = create_session(path, threads=threads)
    else:
        sess = create_session(path, threads=threads, providers=["TensorrtExecutionProvider", "CUDAExecutionProvider"])
    diff = check_onnx(path, net, x, session=sess)
    feed = {sess.get_inputs()[0].name: x.numpy()}

    def run() -> None:
        sess.run(None, feed)
    return _Entry(label, backend, Timed(key, run), model, diff, path)


def run_benchmark(models: Sequence[str], backends: Sequence[str] = ("onnxruntime",), batch_size: int = 1,
                  threads: int = 2, resolution: int = 224, runs: int = 50, warmup: int = 10,
                  baseline: str | None = None, ort_profile: bool = False,
                  log: Callable[[str], None] = lambda s: None) -> list[dict]:
    """Measure every (model, backend) pair interleaved and return one record per pair.

    Records carry model, backend, batch_size, threads, resolution, latency_ms_median/_p90/_mean/
    _min, runs, params (all parameters of the trainable form), gmacs (per image), mes (paper
    eq. 7 with this machine's latency), top1_paper (Table 2 where known), max_abs_diff (exported
    graph vs PyTorch, ONNX backends) and vs_baseline (latency / the baseline model's latency on
    the same backend, when `baseline` is given). With `ort_profile`, ONNX Runtime records also
    carry `ort_op_ms`: kernel time per op type in ms per run (`deploy.ort.op_time_profile`, after
    the timed runs, same threads).
    """
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise ValueError(f"unknown backend(s) {unknown}; choose from {', '.join(BACKENDS)}")
    status = available_backends()
    skipped = {b: status[b] for b in backends if status[b]}
    for b, why in skipped.items():
        log(f"skipping backend {b}: {why}")
    backends = [b for b in backends if b not in skipped]
    if not backends:
        raise RuntimeError(f"no usable backend among the requested ones: {skipped}")
    if baseline is not None and baseline not in models:
        raise ValueError(f"baseline {baseline!r} is not among the models {list(models)}")
    torch.set_num_threads(threads)
    x = torch.randn(batch_size, 3, resolution, resolution, generator=torch.Generator().manual_seed(0))
    entries: list[_Entry] = []
    info: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="efv2-bench-") as tmp:
        for name in models:
            model = _build(name, resolution)
            info[name] = {"params": count_params(model), "gmacs": count_gmacs(model, resolution)}
            for backend in backends:
                log(f"preparing {name} on {backend}")
                entries.append(_prepare(name, model, backend, x, threads, Path(tmp)))
        log(f"measuring {len(entries)} model/backend pairs interleaved: {warmup} warm-up + {runs} runs each")
        stats = measure_interleaved([e.timed for e in entries], runs=runs, warmup=warmup)
        op_ms: dict[str, dict[str, float]] = {}
        if ort_profile:
            from .ort import op_time_profile
            for e in entries:
                if e.backend == "onnxruntime":
                    log(f"profiling {e.label} on onnxruntime")
                    op_ms[e.timed.key] = {k: round(v, 4) for k, v in
                                          op_time_profile(e.onnx_path, threads, runs, warmup).items()}
    records = []
    for e in entries:
        s = stats[e.timed.key]
        model_name, _ = _resolve(e.label)
        rec = {"model": e.label, "backend": e.backend, "batch_size": batch_size, "threads": threads,
               "resolution": resolution, "latency_ms_median": round(s.median, 4),
               "latency_ms_p90": round(s.p90, 4), "latency_ms_mean": round(s.mean, 4),
               "latency_ms_min": round(s.min, 4), "runs": s.runs, "params": info[e.label]["params"],
               "gmacs": round(info[e.label]["gmacs"], 4),
               "mes": round(mobile_efficiency_score(info[e.label]["params"], s.median / batch_size), 4),
               "top1_paper": PAPER_TOP1.get(model_name), "max_abs_diff": e.max_abs_diff}
        if e.timed.key in op_ms:
            rec["ort_op_ms"] = op_ms[e.timed.key]
        records.append(rec)
    if baseline is not None:
        base = {r["backend"]: r["latency_ms_median"] for r in records if r["model"] == baseline}
        for r in records:
            r["vs_baseline"] = round(r["latency_ms_median"] / base[r["backend"]], 3)
    return records


def format_table(records: Sequence[dict]) -> str:
    """A fixed-width text table of benchmark records."""
    has_base = any("vs_baseline" in r for r in records)
    head = ["model", "backend", "batch", "threads", "params(M)", "GMACs", "median ms", "p90 ms", "MES",
            "top-1 paper"] + (["x baseline"] if has_base else []) + ["max diff"]
    rows = []
    for r in records:
        row = [r["model"], r["backend"], str(r["batch_size"]), str(r["threads"]), f"{r['params'] / 1e6:.2f}",
               f"{r['gmacs']:.3f}", f"{r['latency_ms_median']:.2f}", f"{r['latency_ms_p90']:.2f}", f"{r['mes']:.1f}",
               "-" if r.get("top1_paper") is None else f"{r['top1_paper']:.1f}"]
        if has_base:
            row.append(f"{r['vs_baseline']:.2f}")
        row.append("-" if r.get("max_abs_diff") is None else f"{r['max_abs_diff']:.1e}")
        rows.append(row)
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def write_json(records: Sequence[dict], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(list(records), indent=2) + "\n")
    return path


def write_csv(records: Sequence[dict], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fields: list[str] = []
    for r in records:
        fields += [k for k in r if k not in fields]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(records)
    return path


def plot_accuracy_latency(records: Sequence[dict], path: str | Path, backend: str | None = None) -> Path:
    """PNG of the paper's Table 2 top-1 against measured latency (the picture of its Figure 1),
    for the models with a known accuracy on `backend` (default: the first backend)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    backend = backend or records[0]["backend"]
    pts = [r for r in records if r["backend"] == backend and r.get("top1_paper") is not None]
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
    ax.set_xlabel(f"latency (ms, median; {backend}, batch {first['batch_size']}, {first['threads']} threads, "
                  f"{first['resolution']}px)")
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
