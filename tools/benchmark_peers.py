"""EfficientFormerV2 S0..L against the mobile backbones timm ships, side by side on each runtime.

    python tools/benchmark_peers.py [--runtimes executorch openvino onnxruntime] [--threads 1]
                                    [--models NAME ...] [--families FAMILY ...] [--batch-size 1]
                                    [--runs 50] [--warmup 10] [--out-dir benchmarks/records] [--list]

Each model runs at its native resolution with random weights (latency does not depend on them),
in its deploy form (re-parameterised where it has one), measured interleaved per runtime and
resolution (`deploy.peers`), and is placed against the ImageNet-1K top-1 its authors or timm
published (the source is in each record and in `--list`). Per runtime it writes, under
--out-dir: `peers_<runtime>.json` (tools/benchmark.py's record format, each record with its
command, date and CPU for the records page, `make records`; the models the runtime could not take
are records without a latency whose note gives the reason) and `peers_<runtime>.png` (top-1
against latency, Pareto frontier marked). A model a runtime cannot take does not stop the run.
ExecuTorch sizes its threadpool once per process: one --threads per command. `--list` prints the
models and their figures without measuring.
"""
from __future__ import annotations

import sys
from pathlib import Path

from _cli import ArgumentParser, check_writable, positive_int, run

RUNTIME_CHOICES = ["torch", "compile", "onnxruntime", "tensorrt", "executorch", "openvino", "litert"]
DEFAULT_RUNTIMES = ["executorch", "openvino", "onnxruntime"]


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="benchmark_peers", description=__doc__)
    parser.add_argument("--runtimes", nargs="+", default=DEFAULT_RUNTIMES, choices=RUNTIME_CHOICES)
    parser.add_argument("--models", nargs="+", metavar="NAME", help="only these models (default: all)")
    parser.add_argument("--families", nargs="+", metavar="FAMILY",
                        help="only these families, e.g. MobileNetV4 RepViT EfficientFormerV2")
    parser.add_argument("--threads", type=positive_int, default=1)
    parser.add_argument("--batch-size", type=positive_int, default=1)
    parser.add_argument("--runs", type=positive_int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--out-dir", type=Path, default=Path("benchmarks/records"))
    parser.add_argument("--list", action="store_true", help="print the models and their top-1 sources, measure nothing")
    args = parser.parse_args(argv)
    if args.warmup < 0:
        parser.error(f"--warmup must be 0 or more, got {args.warmup}")
    from deploy.peers import format_failures, measure_peers, plot_pareto, select_peers
    peers = select_peers(args.models, args.families)
    if args.list:
        for p in peers:
            print(f"{p.name:28s} {p.family:26s} {p.resolution:4d} px  top-1 {p.top1:6.2f}  {p.source}")
        return 0
    runtimes = list(dict.fromkeys(args.runtimes))
    for runtime in runtimes:
        for suffix in (".json", ".png"):
            check_writable(args.out_dir / f"peers_{runtime}{suffix}", "--out-dir")
    from deploy.benchmark import format_table, write_json
    from deploy.records import load_average, provenance
    prov = provenance(None if argv is None else ["tools/benchmark_peers.py", *argv])
    load_before = load_average()  # other work on the machine, for the records page
    records, failures = measure_peers(peers, runtimes, threads=args.threads, batch_size=args.batch_size,
                                      runs=args.runs, warmup=args.warmup,
                                      log=lambda s: print(f"benchmark_peers: {s}", file=sys.stderr, flush=True))
    prov.update(load_average_before=load_before, load_average_after=load_average())
    for r in records:
        r.update(prov)
    for runtime in runtimes:
        mine = [r for r in records if r["backend"] == runtime]
        lost = [f for f in failures if f["backend"] == runtime]
        print(f"== {runtime}")
        table = format_table(mine) if mine else "(no model could be measured)"
        print(table)
        if lost:
            print("not measured:\n" + format_failures(lost))
        out = args.out_dir
        # the models it could not take go into the same file, so the records page lists them
        not_measured = [{"model": f["model"], "backend": runtime, "resolution": f["resolution"],
                         "batch_size": args.batch_size, "threads": args.threads,
                         "latency_ms_median": None, "note": f"not measured: {f['reason']}", **prov} for f in lost]
        if mine or not_measured:
            print(f"json: {write_json(mine + not_measured, out / f'peers_{runtime}.json')}")
        if mine:
            print(f"plot: {plot_pareto(mine, out / f'peers_{runtime}.png', runtime, lost)}")
    measured = len({r["model"] for r in records})
    print(f"benchmark_peers: {len(records)} records of {measured}/{len(peers)} models on {', '.join(runtimes)}; "
          f"{len(failures)} model/runtime pairs not measured")
    return 0


if __name__ == "__main__":
    sys.exit(run(main, "benchmark_peers"))
