"""Supernet search demo on the generated toy set, end to end on the CPU.

    python tools/demo_search.py [--data data/toy_cls] [--out artifacts/search_toy]

1. trains the toy supernet with the sandwich rule (configs/search/supernet_toy.yaml, Lightning CLI),
2. builds the latency table of its space on this machine (torch backend) and checks it,
3. runs the greedy MES search and the random baseline at the same MES (configs/search/search_toy.yaml),
4. compares the searched network with the random ones on an independent toy set (another seed):
   top-1 with inherited weights after BatchNorm recalibration.
Last line: `demo-search: searched top-1 <percent> vs random <percent> at MES <value> in <seconds> s`.
"""
from __future__ import annotations

import contextlib
import io
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

from _cli import ArgumentParser, UsageError, run
from _demo import add_threads_option, apply_threads

ROOT = Path(__file__).resolve().parents[1]


def check_supernet_config(supernet_config: Path) -> None:
    """Parse the supernet config with the supernet CLI (without training) so that an unknown key or
    a bad value fails now, in one line, not after the data is made."""
    from classification.supernet import main as supernet_cli

    if not supernet_config.is_file():
        raise UsageError(f"--supernet-config {supernet_config}: no such file")
    messages = io.StringIO()
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(messages):
            supernet_cli(["fit", "--config", str(supernet_config), "--print_config"])
    except SystemExit as e:
        if e.code:
            lines = [ln.strip() for ln in messages.getvalue().splitlines() if ln.strip()]
            problem = next((ln for ln in lines if "error:" in ln), lines[-1] if lines else f"exit status {e.code}")
            raise UsageError(f"--supernet-config {supernet_config}: {problem.split('error:', 1)[-1].strip()}") \
                from None


def run_demo(data: Path, out: Path, supernet_config: Path, search_config: Path, threads: int | None = None) -> dict:
    """Train, tabulate, search and compare; returns the figures of the summary line."""
    from backbones.supernet import SubnetConfig
    from classification.search import SubnetEvaluator, image_batches, load_settings, load_supernet, run_search
    from classification.supernet import main as supernet_cli
    from classification.toy_data import make_toy_classification
    from deploy.latency_lut import build_latency_table, evaluate_table

    settings = load_settings(search_config)   # a bad search config fails before anything runs
    check_supernet_config(supernet_config)
    apply_threads(threads, workers=1)
    if not (data / "train").is_dir() or not (data / "val").is_dir():
        print(f"demo-search: generating the toy set in {data}", flush=True)
        make_toy_classification(data)
    holdout = out / "holdout"
    if not (holdout / "val").is_dir():
        make_toy_classification(holdout, seed=1, train_per_class=1, val_per_class=30)

    ckpt_dir = out / "checkpoints"
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    t0 = time.perf_counter()
    supernet_cli(["fit", "--config", str(supernet_config), "--data.root", str(data),
                  "--checkpoint.dirpath", str(ckpt_dir)])
    supernet = load_supernet(ckpt_dir / "last.ckpt")
    print(f"demo-search: supernet trained in {time.perf_counter() - t0:.0f} s", flush=True)

    lut = settings.lut
    t0 = time.perf_counter()
    table = build_latency_table(supernet.space, supernet.img_size, lut.backend, lut.threads, lut.warmup,
                                lut.runs, supernet.num_classes, supernet.distillation)
    table.save(out / "lut.json")
    report = evaluate_table(table, lut.check_subnets, warmup=lut.warmup, runs=lut.runs)
    print(f"demo-search: latency table of {len(table.entries)} entries in {time.perf_counter() - t0:.0f} s; "
          f"{report.summary()}", flush=True)

    found = run_search(supernet, data, table, settings, out)
    result, randoms = found["result"], found["randoms"]

    s = settings.search
    test = image_batches(holdout, "val", supernet.img_size, s.batch_size)
    calib = image_batches(data, s.calib_split, supernet.img_size, s.batch_size)
    judge = SubnetEvaluator(supernet, table, test, calib, s.calib_batches, settings.mes)
    searched = judge.record(result.config)
    others = [judge.record(SubnetConfig.from_dict(r["config"])) for r in randoms]
    summary = {"searched_top1": searched["top1"], "random_top1_mean": statistics.fmean(o["top1"] for o in others),
               "random_top1": [o["top1"] for o in others], "random_mes": [o["mes"] for o in others],
               "mes": searched["mes"], "params": searched["params"], "latency_ms": searched["latency_ms"],
               "lut_pearson_r": report.pearson_r, "lut_mean_rel_error": report.mean_rel_error}
    (out / "demo_summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="demo_search", description=__doc__)
    parser.add_argument("--data", type=Path, default=Path("data/toy_cls"))
    parser.add_argument("--out", type=Path, default=Path("artifacts/search_toy"))
    parser.add_argument("--supernet-config", type=Path, default=ROOT / "configs/search/supernet_toy.yaml")
    parser.add_argument("--search-config", type=Path, default=ROOT / "configs/search/search_toy.yaml")
    add_threads_option(parser)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    s = run_demo(args.data, args.out, args.supernet_config, args.search_config, args.threads)
    print(f"demo-search: on the independent toy set, searched {s['searched_top1']:.1f} (params {s['params']}, "
          f"{s['latency_ms']:.2f} ms) vs random {s['random_top1_mean']:.1f} (each: "
          f"{', '.join(f'{a:.1f}' for a in s['random_top1'])})")
    print(f"demo-search: searched top-1 {s['searched_top1']:.1f} vs random {s['random_top1_mean']:.1f} "
          f"at MES {s['mes']:.1f} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(run(main, "demo_search"))
