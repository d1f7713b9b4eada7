"""Backbone forward time and peak memory at a detection size (default 1333x800) on the CPU.

    python tools/mm_benchmark_backbone.py [--variants s0 s1 s2 l] [--height 800 --width 1333]
                                          [--repeats 3] [--threads 2]
"""
from __future__ import annotations

import argparse

from detection.benchmark import benchmark_backbone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=["s0", "s1", "s2", "l"])
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1333)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    print("| backbone | input | params | forward (median) | peak RSS | forward peak |")
    print("|---|---|---|---|---|---|")
    for v in args.variants:
        r = benchmark_backbone(v, args.height, args.width, args.repeats, args.threads)
        print(f"| EfficientFormerV2-{v.upper()} | {args.width}x{args.height} | {r['params'] / 1e6:.2f} M | "
              f"{r['forward_ms_median']:.0f} ms | {r['peak_rss_mib']:.0f} MiB | {r['forward_peak_mib']:.0f} MiB |",
              flush=True)


if __name__ == "__main__":
    main()
