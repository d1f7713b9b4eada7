"""Latency, parameters, GMACs and MES of the project's models and any timm model.

    python tools/benchmark.py --models efficientformerv2_s0 mobilenetv2_100 [timm:efficientformerv2_s0 ...]
                              [--backend onnxruntime [torch compile tensorrt executorch openvino litert aoti]]
                              [--threads 2] [--batch-size 1] [--resolution 224] [--runs 50] [--warmup 10]
                              [--int8 [--calibration DIR] [--calibration-count 32]]
                              [--baseline mobilenetv2_100] [--json OUT] [--csv OUT] [--plot OUT.png]
                              [--ort-profile] [--et-profile] [--ov-profile] [--thread-check]
                              [--activation relu]

All (model, backend, precision) triples are measured interleaved in one run (compare latencies
only inside a run). Project models run in their deploy form; `timm:NAME` is timm's
implementation (the reference graph). Every backend runs a graph exported at the benchmark's
batch and resolution (static shapes) and checked against PyTorch (max abs difference in the
table): ONNX Runtime with the shipped session options (`deploy.runtimes.onnxruntime`), ExecuTorch with the
XNNPACK delegate (`deploy.runtimes.executorch`; its threads are set once per process, so run each thread
count as its own command), OpenVINO's CPU plugin in f32 with the latency hint (`deploy.runtimes.openvino`),
LiteRT's interpreter with its XNNPACK delegate on --threads threads (`deploy.runtimes.litert`),
AOTInductor (`aoti`: the `torch.export` program compiled ahead of time into native code, run on
PyTorch's --threads; compiling takes about a minute per model). The backends are the runtime
registry's (`deploy.runtimes`).

`--int8` adds int8 programs for executorch and litert (PT2E) and openvino (NNCF),
calibrated on `--calibration DIR` (an ImageNet-layout folder) or, without it, on random data,
which gives a speed figure only. `--ort-profile` / `--et-profile` / `--ov-profile` then profile
each ONNX Runtime / ExecuTorch / OpenVINO program and print where its time goes (per op type, ms
per run; in the JSON as `ort_op_ms` / `et_op_ms` / `ov_op_ms`; OpenVINO names the activations it
runs inside a node, `Convolution+Gelu`). `--activation relu` replaces every model's activations
by ReLU before measuring: the protocol of the paper's Pixel 6 latencies (Sec. 5.1), a latency
figure only (the weights' accuracy does not carry over). `--thread-check` times ONNX Runtime and OpenVINO exports again with
one thread, interleaved with --threads, and reports the speed-up (whether a model uses its
threads). The plot draws the paper's Table 2 top-1 against the measured latency. The `--json`
records carry their provenance for the records page (`deploy.records`, `make records`): `command`,
`date`, `cpu`, and the load average before and after the run.
"""
from __future__ import annotations

import sys
from pathlib import Path

from _cli import ArgumentParser, check_writable, run

from deploy.runtimes import BACKENDS as BACKEND_CHOICES  # the registry's names: imports no torch
from deploy.runtimes import INT8_BACKENDS


def benchmark(models: list[str], backends: list[str], threads: int = 2, batch_size: int = 1,
              resolution: int = 224, runs: int = 50, warmup: int = 10, baseline: str | None = None,
              ort_profile: bool = False, int8: bool = False, calibration: Path | None = None,
              calibration_count: int = 32, et_profile: bool = False, thread_check: bool = False,
              ov_profile: bool = False, activation: str | None = None) -> list[dict]:
    """Run the interleaved benchmark; returns one record per (model, backend, precision)."""
    from deploy.benchmark import run_benchmark
    return run_benchmark(models, backends, batch_size=batch_size, threads=threads, resolution=resolution,
                         runs=runs, warmup=warmup, baseline=baseline, ort_profile=ort_profile, int8=int8,
                         calibration=calibration, calibration_count=calibration_count, et_profile=et_profile,
                         ov_profile=ov_profile, thread_check=thread_check, activation=activation,
                         log=lambda s: print(f"benchmark: {s}", file=sys.stderr, flush=True))


def _profile_line(r: dict, key: str, what: str) -> str:
    ops = r[key]
    total = sum(ops.values())
    top = ", ".join(f"{op} {ms:.2f} ({100 * ms / total:.0f}%)" for op, ms in list(ops.items())[:8])
    return f"{r['model']} {r['backend']} {r.get('precision', 'fp32')} {what} {total:.2f} ms/run: {top}"


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="benchmark", description=__doc__)
    parser.add_argument("--models", nargs="+", required=True, metavar="NAME")
    parser.add_argument("--backend", nargs="+", default=["onnxruntime"], choices=BACKEND_CHOICES)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--int8", action="store_true", help=f"also int8 programs on {' and '.join(INT8_BACKENDS)}")
    parser.add_argument("--calibration", type=Path, metavar="DIR",
                        help="ImageNet-layout folder for int8 calibration (default: random data, speed only)")
    parser.add_argument("--calibration-count", type=int, default=32, help="calibration batches")
    parser.add_argument("--baseline", help="report each latency relative to this model (same backend)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--csv", type=Path)
    parser.add_argument("--plot", type=Path, help="PNG: paper top-1 against measured latency")
    parser.add_argument("--ort-profile", action="store_true",
                        help="print each ONNX Runtime graph's kernel time per op type")
    parser.add_argument("--et-profile", action="store_true",
                        help="print each ExecuTorch program's time per operator (ETDump)")
    parser.add_argument("--activation", choices=["relu"],
                        help="replace every model's activations (GELU, ReLU6, SiLU, ...) by this one before "
                             "measuring: the paper's Pixel 6 protocol (Sec. 5.1, relu); latency only")
    parser.add_argument("--ov-profile", action="store_true",
                        help="print each OpenVINO model's time per node type (fused activations named)")
    parser.add_argument("--thread-check", action="store_true",
                        help="ONNX Runtime and OpenVINO: also time 1 thread, report the speed-up of --threads")
    args = parser.parse_args(argv)
    for name, value in [("--threads", args.threads), ("--batch-size", args.batch_size), ("--runs", args.runs),
                        ("--calibration-count", args.calibration_count)]:
        if value < 1:
            parser.error(f"{name} must be at least 1, got {value}")
    if args.resolution < 32 or args.warmup < 0:
        parser.error("--resolution must be at least 32 and --warmup at least 0")
    if args.calibration is not None and not args.int8:
        parser.error("--calibration is only used with --int8")
    if args.int8 and not set(INT8_BACKENDS) & set(args.backend):
        parser.error(f"--int8 needs --backend {' or '.join(INT8_BACKENDS)}")
    if args.calibration is not None and not args.calibration.is_dir():
        parser.error(f"--calibration {args.calibration}: no such folder (an ImageNet-layout folder with "
                     "train/<class>/<image>)")
    for option in ("json", "csv", "plot"):
        if getattr(args, option) is not None:
            check_writable(getattr(args, option), f"--{option}")
    from deploy.benchmark import format_table, plot_accuracy_latency, write_csv, write_json
    from deploy.records import load_average, provenance
    load_before = load_average()
    records = benchmark(args.models, args.backend, args.threads, args.batch_size, args.resolution, args.runs,
                        args.warmup, args.baseline, args.ort_profile, args.int8, args.calibration,
                        args.calibration_count, args.et_profile, args.thread_check, args.ov_profile,
                        args.activation)
    print(format_table(records))
    for r in records:
        if r.get("undelegated_ops"):
            ops = ", ".join(f"{k} x{v}" for k, v in r["undelegated_ops"].items())
            print(f"{r['model']} executorch {r['precision']}: outside the XNNPACK delegate: {ops}")
        if "ov_threads" in r and r["ov_threads"] != r["threads"]:
            print(f"{r['model']} openvino {r['precision']}: compiled with {r['ov_threads']} threads, "
                  f"asked for {r['threads']}")
        if "ort_op_ms" in r:
            print(_profile_line(r, "ort_op_ms", "kernels"))
        if "et_op_ms" in r:
            print(_profile_line(r, "et_op_ms", "operators"))
        if "ov_op_ms" in r:
            print(_profile_line(r, "ov_op_ms", "nodes"))
    if args.int8 and args.calibration is None:
        from deploy.benchmark import RANDOM_CALIBRATION_NOTE
        print(f"note: {RANDOM_CALIBRATION_NOTE}")
    if args.json:
        # provenance for the records page (deploy.records): the command, the date, the CPU, the load
        run = {**provenance(["tools/benchmark.py", *(sys.argv[1:] if argv is None else map(str, argv))]),
               "load_average_before": load_before, "load_average_after": load_average()}
        print(f"json: {write_json([{**r, **run} for r in records], args.json)}")
    if args.csv:
        print(f"csv: {write_csv(records, args.csv)}")
    if args.plot:
        print(f"plot: {plot_accuracy_latency(records, args.plot)}")
    return 0


if __name__ == "__main__":
    sys.exit(run(main, "benchmark"))
