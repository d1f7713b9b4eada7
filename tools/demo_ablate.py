"""Ablation demo on the generated toy set: the rows of the paper's Table 7 (S1 with and without
attention bias) and Table 8 (expansion ratio 4, 2, 1 at the same parameter count), measured and
trained side by side on the CPU with `classification.ablation` (tools/ablate.py's library).

    python tools/demo_ablate.py [--data data] [--out artifacts/ablate_toy] [--epochs 4] [--img-size 32]

Generates DATA/toy_cls if missing, then for each row: parameters and GMACs at 224, latency
(torch, deploy form, batch 1, 224px, interleaved) and the top-1 after a short training at a small
image size. Writes OUT/ablate.md, OUT/ablate.json and OUT/ablate.png, prints the table.
Last line: `demo-ablate: <rows> rows in <seconds> s`.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from _cli import ArgumentParser, require_positive, run
from _demo import apply_threads

ROOT = Path(__file__).resolve().parents[1]
ABLATIONS = ROOT / "configs" / "classification" / "ablations"
ROWS = ("table7_s1_attention-bias", "table7_s1_no-attention-bias",
        "table8_expansion-4", "table8_expansion-2", "table8_expansion-1")


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="demo-ablate", description=__doc__)
    parser.add_argument("--data", type=Path, default=Path("data"), help="the toy set is DATA/toy_cls")
    parser.add_argument("--out", type=Path, default=Path("artifacts/ablate_toy"))
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--img-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads of the latency runs")
    parser.add_argument("--train-threads", type=int, default=None,
                        help="intra-op threads of the training runs (default: chosen for the machine)")
    args = parser.parse_args(argv)
    require_positive(epochs=args.epochs, img_size=args.img_size, threads=args.threads)
    start = time.perf_counter()
    train_threads = apply_threads(args.train_threads, workers=1)  # toy.yaml's loader workers

    from classification.ablation import ablate
    from classification.toy_data import make_toy_classification

    toy = args.data / "toy_cls"
    if not (toy / "train").is_dir() or not (toy / "val").is_dir():
        print(f"demo-ablate: generating the toy set in {toy}", flush=True)
        make_toy_classification(toy)
    result = ablate([ABLATIONS / f"{name}.yaml" for name in ROWS], args.out, backends=("torch",),
                    threads=args.threads, runs=10, warmup=3, data=toy, epochs=args.epochs, train_threads=train_threads,
                    img_size=args.img_size, batch_size=32, train_config=ROOT / "configs/classification/toy.yaml",
                    log=lambda s: print(f"demo-ablate: {s}", flush=True))
    print(result["markdown"])
    print(f"demo-ablate: table in {result['files']['markdown']}, plot in {result['files']['plot']}")
    print(f"demo-ablate: {len(result['rows'])} rows in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(run(main, "demo-ablate"))
