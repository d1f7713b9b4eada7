"""Edge demo: the toy-trained S0 classifier to ExecuTorch (XNNPACK delegate) in fp32 and int8, and
S0 against MobileNetV2 on XNNPACK.

    python tools/demo_edge.py [--data data] [--checkpoint artifacts/cls_toy/efficientformerv2_s0.safetensors]
                              [--out artifacts/edge] [--threads 1] [--runs 30]

Starts from the classifier `make demo` writes (trained first with tools/demo_cls.py when
missing). Exports its deploy form at its training size to a `.pte` (checked in ExecuTorch's
runtime against PyTorch, every operator outside the delegate listed), then to an int8 `.pte`
(XNNPACK quantizer through PT2E, calibrated on DATA/toy_cls/train; top-1 of the float and the
int8 classifier on DATA/toy_cls/val), and finally measures EfficientFormerV2-S0 against
MobileNetV2 (`mobilenetv2_100`) at 224x224, batch 1, fp32, on ExecuTorch with XNNPACK, interleaved
(`deploy.benchmark.run_benchmark`; random weights: speed does not depend on them).
Last line: `demo-edge: executorch max diff <value>; int8 top-1 <percent> vs float <percent>;
S0/MobileNetV2 xnnpack <ratio>x in <seconds> s`.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from _cli import ArgumentParser, run
from _demo import TOY_CLASSIFIER, ensure_toy_classifier

NAME = "efficientformerv2_s0"


def summary_line(max_diff: float, top1_int8: float | None, top1_float: float | None, ratio: float,
                 seconds: float) -> str:
    """The demo's last line."""
    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.1f}"
    return (f"demo-edge: executorch max diff {max_diff:.2e}; int8 top-1 {pct(top1_int8)} vs float "
            f"{pct(top1_float)}; S0/MobileNetV2 xnnpack {ratio:.2f}x in {seconds:.1f} s")


def run_demo(data: Path, checkpoint: Path, out: Path, threads: int = 1, runs: int = 30) -> tuple:
    """Export fp32 and int8 programs and benchmark; returns (fp32 max abs diff, int8 top-1,
    float top-1, S0/MobileNetV2 latency ratio)."""
    import torch

    from deploy.benchmark import format_table, run_benchmark
    from deploy.runtimes.executorch import set_threads
    from deploy.export import export_model
    from deploy.models import build_model

    set_threads(threads)  # the process's XNNPACK threadpool, before any program runs
    torch.set_num_threads(threads)
    model = build_model(NAME, checkpoint)
    size = (model.img_size, model.img_size)  # the training input size of the checkpoint
    fp32 = export_model(NAME, "executorch", out / "s0_toy.pte", model=model, size=size)
    print(fp32.summary(), *fp32.details(), sep="\n", flush=True)
    int8 = export_model(NAME, "executorch", out / "s0_toy_int8.pte", model=model, size=size, int8=True,
                        calibration=data / "toy_cls")
    print(int8.summary(), *int8.details(), sep="\n", flush=True)
    print(f"demo-edge: S0 and MobileNetV2 at 224x224 on ExecuTorch + XNNPACK, {threads} thread(s), "
          f"{runs} interleaved runs", flush=True)
    records = run_benchmark([NAME, "mobilenetv2_100"], ["executorch"], threads=threads, resolution=224, runs=runs,
                            warmup=5, baseline="mobilenetv2_100")
    print(format_table(records))
    return fp32.max_abs_diff, int8.top1_exported, int8.top1_float, records[0]["vs_baseline"]


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="demo-edge", description=__doc__)
    parser.add_argument("--data", type=Path, default=Path("data"))
    parser.add_argument("--checkpoint", type=Path, default=TOY_CLASSIFIER)
    parser.add_argument("--out", type=Path, default=Path("artifacts/edge"))
    parser.add_argument("--threads", type=int, default=1, help="XNNPACK threads (one count per process)")
    parser.add_argument("--runs", type=int, default=30, help="timed runs of each model")
    args = parser.parse_args(argv)
    if args.threads < 1 or args.runs < 1:
        parser.error("--threads and --runs must be at least 1")
    start = time.perf_counter()
    checkpoint = ensure_toy_classifier(args.checkpoint, args.data, "demo-edge")
    args.out.mkdir(parents=True, exist_ok=True)
    diff, top1_int8, top1_float, ratio = run_demo(args.data, checkpoint, args.out, args.threads, args.runs)
    print(summary_line(diff, top1_int8, top1_float, ratio, time.perf_counter() - start))
    return 0


if __name__ == "__main__":
    sys.exit(run(main, "demo-edge"))
