"""Latency, parameters, GMACs and MES of the project's models and any timm model.

    python tools/benchmark.py --models efficientformerv2_s0 mobilenetv2_100 [timm:efficientformerv2_s0 ...]
                              [--backend onnxruntime [torch compile tensorrt]] [--threads 2]
                              [--batch-size 1] [--resolution 224] [--runs 50] [--warmup 10]
                              [--baseline mobilenetv2_100] [--json OUT] [--csv OUT]
                              [--plot OUT.png] [--ort-profile]

All (model, backend) pairs are measured interleaved in one run (compare latencies only inside a
run). Project models run in their deploy form; `timm:NAME` is timm's implementation (the
reference graph). ONNX Runtime runs every exported graph (static shapes at the benchmark's
batch and resolution) with the same session options (`deploy.ort`), and each is checked against
PyTorch (max abs difference in the table). The plot draws the paper's Table 2 top-1 against the
measured latency. `--ort-profile` then profiles each ONNX Runtime graph and prints where its
time goes (kernel time per op type, ms per run; also in the JSON as `ort_op_ms`).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def benchmark(models: list[str], backends: list[str], threads: int = 2, batch_size: int = 1,
              resolution: int = 224, runs: int = 50, warmup: int = 10, baseline: str | None = None,
              ort_profile: bool = False) -> list[dict]:
    """Run the interleaved benchmark; returns one record per (model, backend)."""
    from deploy.benchmark import run_benchmark
    return run_benchmark(models, backends, batch_size=batch_size, threads=threads, resolution=resolution,
                         runs=runs, warmup=warmup, baseline=baseline, ort_profile=ort_profile,
                         log=lambda s: print(f"benchmark: {s}", file=sys.stderr, flush=True))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", required=True, metavar="NAME")
    parser.add_argument("--backend", nargs="+", default=["onnxruntime"],
                        choices=["torch", "compile", "onnxruntime", "tensorrt"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--baseline", help="report each latency relative to this model (same backend)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--csv", type=Path)
    parser.add_argument("--plot", type=Path, help="PNG: paper top-1 against measured latency")
    parser.add_argument("--ort-profile", action="store_true",
                        help="print each ONNX Runtime graph's kernel time per op type")
    args = parser.parse_args(argv)
    from deploy.benchmark import format_table, plot_accuracy_latency, write_csv, write_json
    try:
        records = benchmark(args.models, args.backend, args.threads, args.batch_size, args.resolution,
                            args.runs, args.warmup, args.baseline, args.ort_profile)
    except (ValueError, RuntimeError, ImportError) as e:
        print(f"benchmark: error: {e}", file=sys.stderr)
        return 2
    print(format_table(records))
    for r in records:
        if "ort_op_ms" in r:
            total = sum(r["ort_op_ms"].values())
            top = ", ".join(f"{op} {ms:.2f} ({100 * ms / total:.0f}%)" for op, ms in list(r["ort_op_ms"].items())[:6])
            print(f"{r['model']} onnxruntime kernels {total:.2f} ms/run: {top}")
    if args.json:
        print(f"json: {write_json(records, args.json)}")
    if args.csv:
        print(f"csv: {write_csv(records, args.csv)}")
    if args.plot:
        print(f"plot: {plot_accuracy_latency(records, args.plot)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
