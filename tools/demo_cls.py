"""The embedded demo: train EfficientFormerV2-S0 on the generated toy set with the Lightning CLI.

    python tools/demo_cls.py [--data data/toy_cls] [--config configs/classification/toy.yaml]
                             [--out artifacts/cls_toy]

Generates the toy set if missing, runs `python -m classification fit` and `validate` (the CLI,
in-process) with OUT as the run folder (`--trainer.default_root_dir`: logs in OUT/tb and OUT/csv,
checkpoints in OUT/checkpoints, replaced by every demo run), and writes the trained classifier in
the project's format to OUT/efficientformerv2_s0.safetensors (the detection, segmentation and
export demos start from it).
Last line: `demo: val top-1 <percent> in <seconds> s`.
"""
from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

from _cli import ArgumentParser, UsageError, run
from _demo import add_threads_option, apply_threads

ROOT = Path(__file__).resolve().parents[1]


def run_demo(data: Path, config: Path, out: Path, threads: int | None = None) -> tuple[float, Path]:
    """Fit and validate on `data` with `threads` intra-op threads (None: chosen for the machine);
    return (val top-1 in [0, 1], safetensors weights path)."""
    from backbones import save_checkpoint
    from backbones.model_info import set_class_names
    from classification.__main__ import cli
    from classification.toy_data import make_toy_classification

    if not (data / "train").is_dir() or not (data / "val").is_dir():
        print(f"demo: generating the toy set in {data}", flush=True)
        make_toy_classification(data)
    apply_threads(threads, workers=1)  # toy.yaml's loader workers
    ckpt_dir = out / "checkpoints"  # where the CLI puts a run's checkpoints under its root folder
    shutil.rmtree(ckpt_dir, ignore_errors=True)  # the demo's own folder: a fresh run, not a resume
    common = ["--config", str(config), "--data.root", str(data), "--trainer.default_root_dir", str(out)]
    cli(["fit", *common])
    validated = cli(["validate", *common, "--ckpt_path", str(ckpt_dir / "last.ckpt")])
    top1 = float(validated.trainer.callback_metrics["val/top1"])
    net = validated.model.model
    set_class_names(net, validated.datamodule.classes)  # recorded in the file with the rest of the model's description
    weights = save_checkpoint(net, out / "efficientformerv2_s0.safetensors", metadata={"val_top1": f"{top1:.4f}"})
    return top1, weights


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="demo_cls", description=__doc__)
    parser.add_argument("--data", type=Path, default=Path("data/toy_cls"))
    parser.add_argument("--config", type=Path, default=ROOT / "configs/classification/toy.yaml")
    parser.add_argument("--out", type=Path, default=Path("artifacts/cls_toy"))
    add_threads_option(parser)
    args = parser.parse_args(argv)
    if not args.config.is_file():
        raise UsageError(f"--config {args.config} is not a file: give a classification config such as "
                         f"{ROOT / 'configs/classification/toy.yaml'}")
    for option, folder in (("--data", args.data), ("--out", args.out)):
        if folder.exists() and not folder.is_dir():
            raise UsageError(f"{option} {folder} is a file, not a folder: choose another {option}")
    start = time.perf_counter()
    top1, weights = run_demo(args.data, args.config, args.out, args.threads)
    print(f"demo: weights written to {weights}")
    print(f"demo: val top-1 {100 * top1:.1f} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(run(main, "demo_cls"))
