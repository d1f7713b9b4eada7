"""Backbone forward time and peak memory at a detection size (default 1333x800) on the CPU.

    python tools/mm_benchmark_backbone.py [--variants s0 s1 s2 l] [--height 800 --width 1333]
                                          [--repeats 3] [--threads 2]

Each variant runs in a fresh process; one that dies (e.g. killed when out of memory) is reported
in one line with its exit code (exit status 2).
"""
from __future__ import annotations

import sys
import warnings

from _cli import ArgumentParser, positive_int, run

# mmengine imports pkg_resources, which the setuptools that builds mmcv (< 82) deprecates: a warning
# on every run that says nothing to the user of this tool (main() imports mmengine, after this filter)
warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)

VARIANTS = ("s0", "s1", "s2", "l")


def main(argv: list[str] | None = None) -> int:
    from openmmlab.benchmark import benchmark_backbone

    parser = ArgumentParser(prog="mm_benchmark_backbone", description=__doc__)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--height", type=positive_int, default=800)
    parser.add_argument("--width", type=positive_int, default=1333)
    parser.add_argument("--repeats", type=positive_int, default=3, help="timed forward passes after one warm-up")
    parser.add_argument("--threads", type=positive_int, default=2)
    args = parser.parse_args(argv)
    print("| backbone | input | params | forward (median) | peak RSS | forward peak |")
    print("|---|---|---|---|---|---|")
    for v in args.variants:
        r = benchmark_backbone(v, args.height, args.width, args.repeats, args.threads)
        print(f"| EfficientFormerV2-{v.upper()} | {args.width}x{args.height} | {r['params'] / 1e6:.2f} M | "
              f"{r['forward_ms_median']:.0f} ms | {r['peak_rss_mib']:.0f} MiB | {r['forward_peak_mib']:.0f} MiB |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run(main, "mm_benchmark_backbone"))
