"""Train an MMDetection or MMSegmentation config (EfficientFormerV2 backbones).

    python tools/mm_train.py CONFIG [--data-root DIR] [--classes-from-data] [--work-dir DIR]
                             [--cfg-options k=v ...] [--resume [CKPT]] [--amp]
    torchrun --nproc_per_node=8 tools/mm_train.py CONFIG --launcher pytorch     # multi-GPU
    torchrun --nnodes=2 --node_rank=R --master_addr=HOST --nproc_per_node=8 \\
        tools/mm_train.py CONFIG --launcher pytorch                              # multi-node

A missing config, a config key no component accepts, a --cfg-options key that sets a variable
of the config file (data_root=...: use --data-root), a missing data root, annotation file, image
folder or Pretrained checkpoint, class names that match none of the data's (see
--classes-from-data), a missing or unreadable checkpoint to resume from, or a checkpoint to
resume from or in load_from that does not fit the config's model (another variant, a damaged or
incomplete file, heads for another class count, another task's model, a classification file:
backbone weights go in model.backbone.init_cfg) is reported in one line (exit status 2) before
training; such a failed attempt leaves no folder in the work dir.
The console shows progress, warnings and errors only (`--verbose`: mmengine's whole log, which the
work dir keeps anyway); the last line names the last validation's main metrics and the log folder.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings

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
    from openmmlab.runner import LAUNCHERS, train

    parser = ArgumentParser(prog="mm_train", description=__doc__)
    parser.add_argument("config", help="an mmdet or mmseg config, e.g. configs/detection/"
                        "mask-rcnn_efficientformerv2-s0_fpn_1x_coco.py")
    parser.add_argument("--work-dir", help="where logs and checkpoints go (default work_dirs/<config name>)")
    parser.add_argument("--resume", nargs="?", const="auto", default=None,
                        help="resume from CKPT, or from the latest checkpoint of the work dir when no path is given")
    parser.add_argument("--amp", action="store_true", help="mixed-precision training")
    parser.add_argument("--data-root", metavar="DIR",
                        help="the dataset folder for every loader (train, val, test) and the evaluators' annotation "
                        "files under it (COCO: annotations/instances_{train,val}2017.json, {train,val}2017/; "
                        "ADE20K: images/ and annotations/)")
    parser.add_argument("--classes-from-data", action="store_true",
                        help="take the class names of the training data (a COCO annotation file's categories, an "
                        "ADE-format folder's classes.txt, one name per line from label 1) into every loader's "
                        "metainfo.classes and set the heads' num_classes to their count")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, default={},
                        help="override config keys, e.g. train_cfg.max_epochs=1 model.backbone.arch=s1")
    parser.add_argument("--launcher", choices=LAUNCHERS, default="none", help="job launcher (pytorch for torchrun)")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--verbose", action="store_true", help="show mmengine's whole log on the console too")
    add_threads_option(parser)
    args = parser.parse_args(argv)
    if args.threads:  # the runner picks the threads on a CPU (`backbones.threads`): an explicit count wins
        os.environ[THREADS_ENV] = str(args.threads)
    with brief_console(args.verbose):
        runner = train(args.config, args.work_dir, args.cfg_options, args.resume, args.amp, args.launcher,
                       args.data_root, args.classes_from_data)
    print(train_summary(runner))
    return 0


def train_summary(runner) -> str:
    """The last line: the metrics of the last validation (`openmmlab.console.summary_line`) and the log folder."""
    from openmmlab.console import summary_line
    hub = runner.message_hub
    metrics = {k[len("val/"):]: hub.get_scalar(k).current() for k in hub.log_scalars if k.startswith("val/")}
    return summary_line("mm_train", metrics, getattr(runner, "log_dir", None))


if __name__ == "__main__":
    sys.exit(run(main, "mm_train"))
