"""Dense-task demos on the CPU: Mask R-CNN on toy COCO (det) or Semantic FPN on toy ADE20K (seg).

    python tools/demo_dense.py det|seg [--data data] [--backbone artifacts/cls_toy/efficientformerv2_s0.safetensors]
                                       [--work-dir work_dirs/demo_det|demo_seg] [--cfg-options k=v ...]

The S0 backbone starts from the classification checkpoint that `make demo` trains on the toy
classification set (trained first, with tools/demo_cls.py, when missing at its default place;
another --backbone must exist). The toy set is
generated under DATA/toy_coco or DATA/toy_ade20k when missing; training and the final
evaluation (COCO bbox/segm mAP or mIoU on the val split, never trained on) use mmengine's Runner.
The console shows the progress lines of mmengine's log, its warnings and the demo's own lines
(`--verbose`: the whole log, which the work dir keeps either way). Last line:
`demo-det: bbox mAP <0..1> segm mAP <0..1> in <seconds> s` or `demo-seg: mIoU <percent> in <seconds> s`.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from _cli import DENSE_PACKAGES, ArgumentParser, UsageError, require_packages, run
from _demo import TOY_CLASSIFIER, add_threads_option, apply_threads, ensure_toy_classifier

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"det": ROOT / "configs/detection/mask-rcnn_efficientformerv2-s0_fpn_toy-coco.py",
           "seg": ROOT / "configs/segmentation/fpn_efficientformerv2-s0_ade20k-toy.py"}
DATASETS = {"det": "toy_coco", "seg": "toy_ade20k"}
DENSE_WORKERS = 0  # the toy configs' loader workers


def run_demo(task: str, data: Path, backbone: Path, work_dir: Path | None, cfg_options: dict,
             threads: int | None = None, verbose: bool = False) -> str:
    """Run one demo and return its summary line (`threads`: intra-op threads, None: chosen for the
    machine; `verbose`: mmengine's whole console log)."""
    from openmmlab.console import brief_console
    apply_threads(threads, workers=DENSE_WORKERS)
    start = time.time()
    ensure_toy_classifier(backbone, data, f"demo-{task}")
    work_dir = work_dir or Path("work_dirs") / f"demo_{task}"
    with brief_console(verbose):
        if task == "det":
            from detection.demo import run_det_demo
            r = run_det_demo(CONFIGS[task], data / DATASETS[task], backbone, work_dir, cfg_options)
            result = f"bbox mAP {r['bbox_mAP']:.3f} segm mAP {r['segm_mAP']:.3f}"
        else:
            from segmentation.demo import run_seg_demo
            r = run_seg_demo(CONFIGS[task], data / DATASETS[task], backbone, work_dir, cfg_options)
            result = f"mIoU {r['mIoU']:.2f}"
    print(f"demo-{task}: {r['iters']} iterations, {r['seconds_per_iter']:.3f} s/iter, "
          f"peak RSS {r['peak_rss_mib']:.0f} MiB", flush=True)
    return f"demo-{task}: {result} in {time.time() - start:.0f} s"


def main(argv: list[str] | None = None) -> int:
    require_packages("dense", DENSE_PACKAGES)
    from mmengine.config import DictAction

    parser = ArgumentParser(prog="demo_dense", description=__doc__)
    parser.add_argument("task", choices=sorted(CONFIGS))
    parser.add_argument("--data", type=Path, default=Path("data"), help="folder holding the toy data sets")
    parser.add_argument("--backbone", type=Path, default=TOY_CLASSIFIER,
                        help="S0 classification checkpoint the backbone starts from")
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, default={})
    parser.add_argument("--verbose", action="store_true", help="show mmengine's whole console log")
    add_threads_option(parser)
    args = parser.parse_args(argv)
    if args.data.exists() and not args.data.is_dir():
        raise UsageError(f"--data {args.data} is a file; give the folder that holds (or will hold) the toy data sets")
    if args.backbone.exists() and not args.backbone.is_file():
        raise UsageError(f"--backbone {args.backbone} is not a file; give the S0 classification checkpoint, "
                         f"or leave --backbone out for {TOY_CLASSIFIER}")
    print(run_demo(args.task, args.data, args.backbone, args.work_dir, args.cfg_options, args.threads, args.verbose),
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run(main, "demo_dense"))
