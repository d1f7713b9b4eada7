"""The embedded demo: train EfficientFormerV2-S0 on the generated toy set with the Lightning CLI.

    python tools/demo_cls.py [--data data/toy_cls] [--config configs/classification/toy.yaml]
                             [--out artifacts/cls_toy]

Generates the toy set if missing, runs `python -m classification fit` and `validate` (the CLI,
in-process), and writes the trained classifier in the project's format to
OUT/efficientformerv2_s0.safetensors (the detection, segmentation and export demos start from it).
Last line: `demo: val top-1 <percent> in <seconds> s`.
"""
from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_demo(data: Path, config: Path, out: Path, threads: int = 1) -> tuple[float, Path]:
    """Fit and validate on `data` with `threads` intra-op threads; return (val top-1 in [0, 1],
    safetensors weights path)."""
    import torch

    from backbones import save_checkpoint
    from classification.__main__ import cli
    from classification.toy_data import make_toy_classification

    if not (data / "train").is_dir() or not (data / "val").is_dir():
        print(f"demo: generating the toy set in {data}", flush=True)
        make_toy_classification(data)
    torch.set_num_threads(threads)
    ckpt_dir = out / "checkpoints"
    shutil.rmtree(ckpt_dir, ignore_errors=True)  # a fresh run, not a resume of an older one
    common = ["--config", str(config), "--data.root", str(data), "--checkpoint.dirpath", str(ckpt_dir)]
    cli(["fit", *common])
    validated = cli(["validate", *common, "--ckpt_path", str(ckpt_dir / "last.ckpt")])
    top1 = float(validated.trainer.callback_metrics["val/top1"])
    weights = save_checkpoint(validated.model.model, out / "efficientformerv2_s0.safetensors",
                              metadata={"classes": ",".join(validated.datamodule.classes),
                                        "val_top1": f"{top1:.4f}"})
    return top1, weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data/toy_cls"))
    parser.add_argument("--config", type=Path, default=ROOT / "configs/classification/toy.yaml")
    parser.add_argument("--out", type=Path, default=Path("artifacts/cls_toy"))
    parser.add_argument("--threads", type=int, default=1,
                        help="intra-op threads; the toy model's tensors are small, and on a shared 2-core "
                             "machine one thread is faster than two")
    args = parser.parse_args()
    start = time.perf_counter()
    top1, weights = run_demo(args.data, args.config, args.out, args.threads)
    print(f"demo: weights written to {weights}")
    print(f"demo: val top-1 {100 * top1:.1f} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
