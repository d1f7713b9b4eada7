"""Lightning CLI for EfficientFormerV2 classification.

    python -m classification {fit,validate,test,predict} --config configs/classification/<variant>.yaml \
        --data.root DIR [--trainer.default_root_dir RUN] [--trainer.devices N] [--ckpt_path last]

Logs and checkpoints go to the run folder RUN (see `classification.run_folder`); `predict` writes
each image's top-k classes and scores to RUN/tb/version_<n>/predictions.csv (`predictions:` keys).
Also installed as the `efficientformerv2-cls` console script.
"""
from __future__ import annotations

import sys

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import ArgsType, LightningArgumentParser

from .data import ImageNetDataModule
from .module import ImageClassifier
from .predictions import PredictionWriter
from .run_folder import RunFolderCLI, exit_status

PROG = "python -m classification"


class ClassificationCLI(RunFolderCLI):
    """LightningCLI with the data-to-model links, an always-on checkpoint callback
    (`checkpoint:` keys; best epoch by val/top1 and last) and an always-on prediction writer
    (`predictions:` keys; acts in `predict` only)."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.monitor": "val/top1", "checkpoint.mode": "max",
                             "checkpoint.save_last": True, "checkpoint.filename": "best-{epoch:03d}",
                             "checkpoint.auto_insert_metric_name": False,
                             "checkpoint.enable_version_counter": False})
        parser.add_lightning_class_args(PredictionWriter, "predictions")
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.batch_size", "model.batch_size")
        parser.link_arguments("data.img_size", "model.img_size")
        parser.link_arguments("data.seed", "model.seed")

    def after_predict(self) -> None:
        """Say where the predictions went, as the last line of output (after the progress bar)."""
        writer = self._get(self.config_init, "predictions")
        if writer.summary is not None and self.trainer.is_global_zero:
            print(writer.summary, flush=True)


def cli(args: ArgsType = None, run: bool = True) -> ClassificationCLI:
    """Run the CLI in-process (`args`: None reads sys.argv) and return it, with its `trainer`,
    `model` and `datamodule`."""
    return ClassificationCLI(ImageClassifier, ImageNetDataModule, auto_configure_optimizers=False,
                             save_config_kwargs={"overwrite": True}, args=args, run=run)


def main(args: ArgsType = None) -> int:
    """Console entry point (`efficientformerv2-cls`): bad input ends in one line on stderr and
    exit status 2, as the tools do (`run_folder.exit_status`)."""
    return exit_status(lambda: cli(args), PROG)


if __name__ == "__main__":
    sys.exit(main())
