"""Evaluate an MMDetection or MMSegmentation checkpoint: COCO bbox/segm mAP or ADE20K mIoU.

    python tools/mm_test.py CONFIG CHECKPOINT [--data-root DIR] [--classes-from-data] [--work-dir DIR]
                            [--cfg-options k=v ...]
    torchrun --nproc_per_node=8 tools/mm_test.py CONFIG CHECKPOINT --launcher pytorch

CHECKPOINT is a file mmengine wrote, one tools/convert_checkpoint.py wrote, or an official
snap-research detector or segmentor as released (its backbone keys are converted on loading, and
its dense attention-bias tables select the backbone's dense mode).

A missing config or checkpoint, a checkpoint that is not an mmengine checkpoint, a config key no
component accepts, a --cfg-options key that sets a variable of the config file, a missing data
root, annotation file or image folder, class names that match none of the data's, or a checkpoint
that does not fit the config's model (another variant, a damaged or incomplete file, heads for
another class count, another task's model, a classification file) is reported in one line (exit
status 2) before testing; such a failed attempt leaves no folder in the work dir.
The console shows progress, warnings and errors only (`--verbose`: mmengine's whole log, which the
work dir keeps anyway); the last line names the main metrics:
`mm_test: coco/bbox_mAP 0.312, coco/segm_mAP 0.291 (full log in WORK_DIR)`.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings

from pathlib import Path

from _cli import DENSE_PACKAGES, ArgumentParser, require_packages, run
from _demo import add_threads_option

# mmengine imports pkg_resources, which the setuptools that builds mmcv (< 82) deprecates: a warning
# on every run that says nothing to the user of this tool (main() imports mmengine, after this filter)
warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)


def main(argv: list[str] | None = None) -> int:
    require_packages("dense", DENSE_PACKAGES)
    from backbones.threads import THREADS_ENV
    from mmengine.config import DictAction

    from openmmlab.console import brief_console
    from openmmlab.runner import LAUNCHERS, test

    parser = ArgumentParser(prog="mm_test", description=__doc__)
    parser.add_argument("config", help="the config the checkpoint was trained with")
    parser.add_argument("checkpoint", help="mmengine checkpoint (.pth), loaded with torch's safe loading")
    parser.add_argument("--work-dir", help="where the logs go (default work_dirs/<config name>)")
    parser.add_argument("--data-root", metavar="DIR",
                        help="the dataset folder for every loader (train, val, test) and the evaluators' annotation "
                        "files under it (COCO: annotations/instances_{train,val}2017.json, {train,val}2017/; "
                        "ADE20K: images/ and annotations/)")
    parser.add_argument("--classes-from-data", action="store_true",
                        help="take the class names of the test data (a COCO annotation file's categories, an "
                        "ADE-format folder's classes.txt, one name per line from label 1) into every loader's "
                        "metainfo.classes and set the heads' num_classes to their count")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, default={},
                        help="override config keys, e.g. test_dataloader.batch_size=2")
    parser.add_argument("--launcher", choices=LAUNCHERS, default="none", help="job launcher (pytorch for torchrun)")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--verbose", action="store_true", help="show mmengine's whole log on the console too")
    add_threads_option(parser)
    args = parser.parse_args(argv)
    if args.threads:  # the runner picks the threads on a CPU (`backbones.threads`): an explicit count wins
        os.environ[THREADS_ENV] = str(args.threads)
    with brief_console(args.verbose):
        metrics = test(args.config, args.checkpoint, args.work_dir, args.cfg_options, args.launcher, args.data_root,
                       args.classes_from_data)
    print(test_summary(metrics, args.work_dir or f"work_dirs/{Path(args.config).stem}"))
    return 0


def test_summary(metrics: dict, work_dir: str) -> str:
    """The last line: the main metrics (`openmmlab.console.summary_line`) and where the full log is."""
    from openmmlab.console import summary_line
    return summary_line("mm_test", metrics, work_dir)


if __name__ == "__main__":
    sys.exit(run(main, "mm_test"))
