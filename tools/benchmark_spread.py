"""Run-to-run spread of repeated benchmark runs: median, minimum and maximum of each model's
latency and of its ratio to the baseline over several `tools/benchmark.py --json` files.

    for i in 1 2 3; do
        python tools/benchmark.py --models mobilenetv2_100 efficientformerv2_s0 --backend executorch \\
            --threads 1 --baseline mobilenetv2_100 --json artifacts/bench/repeat/xnnpack_1t_$i.json
    done
    python tools/benchmark_spread.py artifacts/bench/repeat/xnnpack_1t_*.json [--json OUT]

Each benchmark command measures its models interleaved in one process; repeating the command
shows how much a ratio moves between processes and over time on a shared machine, which one
run cannot. Rows are keyed by model, activation protocol, backend, precision, threads, batch
and resolution, so the files of several set-ups can be summarised together.
"""
from __future__ import annotations

import sys
from pathlib import Path

from _cli import ArgumentParser, check_writable, run


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="benchmark_spread", description=__doc__)
    parser.add_argument("files", nargs="+", type=Path, metavar="JSON", help="benchmark JSON files, one per run")
    parser.add_argument("--json", type=Path, help="write the summary rows here")
    args = parser.parse_args(argv)
    for f in args.files:
        if not f.is_file():
            parser.error(f"{f}: no such file (a JSON written by tools/benchmark.py --json)")
    if args.json is not None:
        check_writable(args.json, "--json")
    from deploy.benchmark import format_spread, read_records, spread, write_json
    rows = spread([read_records(f) for f in args.files])
    print(format_spread(rows))
    if args.json is not None:
        print(f"json: {write_json(rows, args.json)}")
    return 0


if __name__ == "__main__":
    sys.exit(run(main, "benchmark_spread"))
