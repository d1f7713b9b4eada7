"""Build the latency lookup table of a supernet's search space on this device.

    python tools/build_latency_lut.py --space configs/search/supernet_toy.yaml --img-size 64 \
        --backend torch|onnxruntime|executorch|openvino [--threads 1] [--runs 20] [--check 10] --out lut.json

--space takes a search-space YAML/JSON (a supernet config's `model.space`, or the dict itself;
"default": the paper-scale space). Every block type and (width, expansion) setting is timed in
its deploy form (`fuse()`d, as exported; batch 1, median of --runs) on the runtime the searched
network will be deployed with, and stored as JSON: eager PyTorch, ONNX Runtime, ExecuTorch with
the XNNPACK delegate, or OpenVINO's CPU plugin (f32); the runtimes' fixed cost per run is taken
out of each entry and added once per network. Then --check sub-networks (the largest, the
smallest, random ones) are timed whole, fused too, and compared with the table's sums (Pearson
r and mean error are printed and stored in *.check.json).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from _cli import ArgumentParser, UsageError, check_writable, run

from deploy.runtimes import LUT_BACKENDS as BACKENDS  # the registry's names: imports no torch


def load_space(spec: str):
    """A SearchSpace from "default", a YAML/JSON file holding the space, or a supernet config
    (its `model.space`)."""
    import yaml

    from backbones.supernet import SearchSpace

    if spec == "default":
        return SearchSpace.default()
    path = Path(spec)
    if not path.is_file():
        raise UsageError(f"--space {spec!r}: no such file (give a supernet config, a space YAML/JSON or 'default')")
    try:
        data = yaml.safe_load(path.read_text())
        if isinstance(data, dict) and "model" in data:
            data = (data["model"] or {}).get("space") or SearchSpace.default().to_dict()
        return SearchSpace.from_dict(data)
    except (yaml.YAMLError, TypeError, KeyError, AttributeError, ValueError) as e:
        raise UsageError(f"--space {spec}: not a search space ({e}); give a supernet config such as "
                         "configs/search/supernet_toy.yaml") from e


def build(space_spec: str, img_size: int, backend: str, threads: int, warmup: int, runs: int, check: int,
          num_classes: int, distillation: bool, out: Path) -> dict:
    """Build, check and save the table; return the check report as a dict."""
    from dataclasses import asdict

    import torch

    from deploy.latency_lut import build_latency_table, evaluate_table

    torch.manual_seed(0)
    space = load_space(space_spec)

    def progress(i: int, n: int, key: str, ms: float) -> None:
        if i % 50 == 0 or i == n:
            print(f"  {i}/{n} entries timed ({key}: {ms:.3f} ms)", flush=True)

    table = build_latency_table(space, img_size, backend, threads, warmup, runs, num_classes, distillation, progress)
    table.save(out)
    report = evaluate_table(table, num_subnets=check, warmup=warmup, runs=runs) if check >= 2 else None
    result = {"table": str(out), "entries": len(table.entries)}
    if report is not None:
        result["check"] = asdict(report)
        out.with_suffix(".check.json").write_text(json.dumps(result["check"], indent=1))
        print(report.summary())
    return result


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="build_latency_lut", description=__doc__)
    parser.add_argument("--space", default="default", help="supernet config, space YAML/JSON, or 'default'")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--backend", choices=BACKENDS, default="torch")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--check", type=int, default=10, help="sub-networks timed whole to check the table: the largest, the smallest, then random "
                             "ones (0: skip; otherwise at least 2)")
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--no-distillation", action="store_true", help="the head has no distillation branch")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.img_size < 32 or args.threads < 1 or args.runs < 1 or args.warmup < 0 or args.num_classes < 1:
        parser.error("--img-size must be at least 32, --threads, --runs and --num-classes at least 1, "
                     "--warmup at least 0")
    if args.check < 0 or args.check == 1:
        parser.error(f"--check takes 0 (no check) or at least 2 sub-networks, got {args.check}")
    check_writable(args.out, "--out")
    load_space(args.space)  # bad input is refused before any runtime loads
    from deploy.benchmark import available_backends
    from deploy.stacks import ExportStackError
    why = available_backends([args.backend])[args.backend]
    if why:
        raise ExportStackError(why)
    result = build(args.space, args.img_size, args.backend, args.threads, args.warmup, args.runs, args.check,
                   args.num_classes, not args.no_distillation, args.out)
    print(f"latency table: {result['entries']} entries written to {result['table']}")
    return 0


if __name__ == "__main__":
    sys.exit(run(main, "build_latency_lut"))
