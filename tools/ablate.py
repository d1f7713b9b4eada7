"""Rerun rows of the paper's design-space study: parameters, GMACs, latency and (with --data) top-1
of architecture configs side by side.

    python tools/ablate.py CONFIG [CONFIG ...] [--backend torch [onnxruntime compile ...]]
                           [--threads 2] [--runs 20] [--warmup 5] [--resolution 224]
                           [--data DIR [--epochs 5] [--img-size 64] [--batch-size 32]
                            [--train-config configs/classification/toy.yaml] [--keep-checkpoints]]
                           [--baseline mobilenetv2_100] [--out runs/ablate]

Each CONFIG is a classification config that names an architecture: an ablation config
(configs/classification/ablations/*.yaml, `model.arch`, e.g. `{base: s1, attention_bias: false}`)
or a variant config (`model.model_name`). For each one the model is built as released (1000 classes,
distillation head) and the tool reports its parameters, GMACs at 224x224
(`deploy.profile`) and its latency on each backend, all configs measured interleaved in one run
(`deploy.benchmark.run_benchmark`, deploy form, batch 1, at --resolution): compare latencies only
inside one run.

With --data (an ImageNet-layout folder, ROOT/train/<class>/*, ROOT/val/<class>/*) each
architecture is also trained for --epochs with the Lightning CLI of the classification package:
the recipe of --train-config (default: the short CPU recipe of the toy set), the config's
architecture, --img-size, --batch-size; the top-1 is the last epoch's validation top-1. Every row
starts from the same seed.

Writes OUT/ablate.md (the table), OUT/ablate.json ({"settings": ..., "rows": [...]}) and
OUT/ablate.png (top-1 against latency with --data, parameters against latency without), and
prints the table. The paper's figures (Tables 1, 7, 8; latency on iPhone 12) are in the table for
the configs of configs/classification/ablations/.

The study itself is the package module `classification.ablation`; this script is its command line.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from _cli import ArgumentParser, UsageError, require_positive, run

ROOT = Path(__file__).resolve().parents[1]
TOY_RECIPE = ROOT / "configs" / "classification" / "toy.yaml"


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="ablate", description=__doc__)
    parser.add_argument("configs", nargs="+", type=Path, metavar="CONFIG",
                        help="classification configs naming an architecture (model.arch or model.model_name)")
    parser.add_argument("--backend", nargs="+", default=["torch"],
                        help="benchmark backends (deploy.benchmark.BACKENDS: torch, compile, onnxruntime, "
                             "tensorrt, executorch, openvino)")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads of the latency runs")
    parser.add_argument("--train-threads", type=int, default=1,
                        help="intra-op threads of the CPU training runs: small models at small sizes train "
                             "fastest with one, and several threads stall badly on a busy machine")
    parser.add_argument("--runs", type=int, default=20, help="timed runs per model and backend")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--resolution", type=int, default=224, help="input side of the latency runs")
    parser.add_argument("--data", type=Path, help="ImageNet-layout folder: also train each architecture")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--img-size", type=int, default=64, help="training and validation input side")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--train-config", type=Path, default=TOY_RECIPE,
                        help="the recipe (a classification config) the architectures are trained with")
    parser.add_argument("--keep-checkpoints", action="store_true", help="keep each run's last.ckpt")
    parser.add_argument("--baseline", metavar="NAME",
                        help="a model of the benchmark (e.g. mobilenetv2_100) measured in the same run: each "
                             "row's latency is also given relative to it")
    parser.add_argument("--out", type=Path, default=Path("runs/ablate"))
    args = parser.parse_args(argv)
    require_positive(**{name: getattr(args, name) for name in ("threads", "train_threads", "runs", "epochs",
                                                               "img_size", "batch_size", "resolution")})
    from classification.ablation import AblationError, ablate

    try:
        result = ablate(args.configs, args.out, args.backend, args.threads, args.resolution, args.runs, args.warmup,
                        args.data, args.epochs, args.img_size, args.batch_size, args.train_config,
                        args.keep_checkpoints, args.train_threads, args.baseline,
                        log=lambda s: print(f"ablate: {s}", file=sys.stderr, flush=True))
    except AblationError as e:  # in the command line's words: the flag it is about
        raise UsageError(f"--{e.option.replace('_', '-')}: {e}" if e.option else str(e)) from None
    print(result["markdown"])
    for kind, path in result["files"].items():
        print(f"{kind}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(run(main, "ablate"))
