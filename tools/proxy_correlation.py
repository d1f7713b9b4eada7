"""The supernet as a proxy (paper Fig. 5): inherited against stand-alone accuracy of sub-networks.

    python tools/proxy_correlation.py --checkpoint artifacts/search_toy/checkpoints/last.ckpt \
        --data data/toy_cls [--count 10] [--epochs 8] [--base-config configs/classification/toy.yaml] \
        [--set data.num_workers=0 ...] --out artifacts/proxy_toy

Picks --count sub-networks spread over the supernet's space (the smallest, the largest and random
ones at evenly spaced size ranks), measures their top-1 on the val split with inherited weights
after BatchNorm recalibration, trains each from scratch for --epochs epochs with the
classification CLI (the base config with `model.arch`), and reports Pearson r^2 and Kendall tau.
Writes OUT/proxy.json and OUT/proxy.png (scatter).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from _cli import ArgumentParser, UsageError, run

ROOT = Path(__file__).resolve().parents[1]


def parse_override(text: str) -> tuple[str, object]:
    """KEY=VALUE with VALUE read as YAML (numbers, booleans, lists stay typed)."""
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--set takes KEY=VALUE (e.g. data.num_workers=0), got {text!r}")
    try:
        return key, yaml.safe_load(value)
    except yaml.YAMLError:
        raise argparse.ArgumentTypeError(f"--set {text!r}: the value is not valid YAML") from None


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="proxy_correlation", description=__doc__)
    parser.add_argument("--checkpoint", type=Path, required=True, help="SupernetModule Lightning checkpoint")
    parser.add_argument("--data", type=Path, required=True, help="ImageNet-layout data root (train/ and val/)")
    parser.add_argument("--count", type=int, default=10, help="sub-networks (>= 3)")
    parser.add_argument("--epochs", type=int, default=8, help="stand-alone training epochs per sub-network")
    parser.add_argument("--base-config", type=Path, default=ROOT / "configs/classification/toy.yaml",
                        help="classification config the stand-alone runs start from")
    parser.add_argument("--set", dest="overrides", type=parse_override, action="append", default=[],
                        metavar="KEY=VALUE", help="override a key of the stand-alone config (repeatable)")
    parser.add_argument("--calib-batches", type=int, default=4, help="BatchNorm recalibration batches")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sub-network draw")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--out", type=Path, default=Path("artifacts/proxy"))
    args = parser.parse_args(argv)
    if args.count < 3:
        raise UsageError(f"--count {args.count}: the proxy check needs at least 3 sub-networks")
    if args.epochs < 1 or args.threads < 1 or args.calib_batches < 1:
        raise UsageError("--epochs, --threads and --calib-batches take positive integers")
    if not args.data.is_dir():
        raise UsageError(f"--data {args.data}: no such folder (give an ImageNet-layout root with train/ and val/)")

    import torch

    from classification.proxy import run_proxy_check

    torch.set_num_threads(args.threads)
    result = run_proxy_check(args.checkpoint, args.data, args.out, args.base_config, count=args.count,
                             epochs=args.epochs, seed=args.seed, calib_batches=args.calib_batches,
                             overrides=dict(args.overrides))
    print(f"proxy: Pearson r^2 {result['pearson_r2']:.3f} (r {result['pearson_r']:.3f}), Kendall tau "
          f"{result['kendall_tau']:.3f} on {len(result['inherited'])} sub-networks, {args.epochs} epochs each, "
          f"in {result['seconds']:.0f} s; {args.out / 'proxy.json'}, {args.out / 'proxy.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(run(main, "proxy_correlation"))
