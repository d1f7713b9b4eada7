"""Fine-tuning against training from scratch, on a small set of your own (here: a generated one).

    python tools/demo_finetune.py [--data data] [--pretrained artifacts/cls_toy/efficientformerv2_s0.safetensors]
                                  [--epochs 10] [--train-per-class 5] [--batch-size 8]

Writes a small toy set (`DATA/toy_ft`: another seed than `make demo`'s set, few training images
per class), then trains S0 on it twice with the same command, `configs/classification/toy.yaml`
plus the fine-tuning overlay `configs/classification/finetune.yaml` and the same epochs: once from
the pretrained weights (`--model.pretrained`, a new head) and once from random weights. The
pretrained weights default to `make demo`'s toy classifier (trained first when missing); any
checkpoint spec works (`hf-hub:timm/efficientformerv2_s0.snap_dist_in1k`, its 224 attention-bias
tables resampled to the toy size). Also `make demo-finetune`.
Last line: `demo-finetune: fine-tuned top-1 <percent> vs scratch <percent> after <n> epochs in <seconds> s`.
"""
from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

from _cli import ArgumentParser, positive_int, run
from _demo import TOY_CLASSIFIER, add_threads_option, apply_threads, ensure_toy_classifier

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs/classification"


def fit_best_top1(data: Path, out: Path, epochs: int, batch_size: int, pretrained: str | None) -> float:
    """Fit toy.yaml + finetune.yaml on `data` into the run folder `out` (replaced); best val top-1 %."""
    import torch

    from classification.__main__ import cli

    shutil.rmtree(out, ignore_errors=True)
    torch.manual_seed(0)
    args = ["fit", "--config", str(CONFIGS / "toy.yaml"), "--config", str(CONFIGS / "finetune.yaml"),
            "--data.root", str(data), "--trainer.max_epochs", str(epochs), "--data.batch_size", str(batch_size),
            "--trainer.default_root_dir", str(out)]
    if pretrained is not None:
        args += ["--model.pretrained", pretrained]
    fitted = cli(args)
    return 100 * float(fitted.trainer.checkpoint_callback.best_model_score)


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="demo_finetune", description=__doc__)
    parser.add_argument("--data", type=Path, default=Path("data"), help="data folder (toy sets under it)")
    parser.add_argument("--pretrained", default=str(TOY_CLASSIFIER),
                        help="weights to fine-tune: a file or hf-hub:ORG/REPO (default: make demo's toy classifier)")
    parser.add_argument("--epochs", type=positive_int, default=10, help="epochs of each of the two runs")
    parser.add_argument("--train-per-class", type=positive_int, default=5, help="training images per class")
    parser.add_argument("--batch-size", type=positive_int, default=8,
                        help="batch size (a small set: the last partial batch is dropped in training)")
    parser.add_argument("--out", type=Path, default=Path("artifacts/finetune_toy"), help="run folders")
    add_threads_option(parser)
    args = parser.parse_args(argv)
    from classification.toy_data import CLASSES, make_toy_classification

    if args.train_per_class * len(CLASSES) < args.batch_size:
        parser.error(f"--train-per-class {args.train_per_class} gives {args.train_per_class * len(CLASSES)} "
                     f"training images, fewer than --batch-size {args.batch_size}: no full batch to train on")
    start = time.perf_counter()
    apply_threads(args.threads, workers=1)  # toy.yaml's loader workers
    pretrained = args.pretrained
    if not pretrained.startswith("hf-hub:"):
        pretrained = str(ensure_toy_classifier(Path(pretrained), args.data, "demo-finetune"))
    data = args.data / "toy_ft"  # the demo's own generated set, written anew
    shutil.rmtree(data, ignore_errors=True)
    make_toy_classification(data, seed=1, train_per_class=args.train_per_class, val_per_class=20)
    finetuned = fit_best_top1(data, args.out / "finetuned", args.epochs, args.batch_size, pretrained)
    scratch = fit_best_top1(data, args.out / "scratch", args.epochs, args.batch_size, None)
    print(f"demo-finetune: fine-tuned top-1 {finetuned:.1f} vs scratch {scratch:.1f} after {args.epochs} epochs "
          f"in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(run(main, "demo_finetune"))
