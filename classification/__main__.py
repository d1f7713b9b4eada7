"""Lightning CLI for EfficientFormerV2 classification.

    python -m classification {fit,validate,test,predict} --config configs/classification/<variant>.yaml \
        --data.root DIR [--trainer.devices N] [--ckpt_path last]

Also installed as the `efficientformerv2-cls` console script.
"""
from __future__ import annotations

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI

from .data import ImageNetDataModule
from .module import ImageClassifier


class ClassificationCLI(LightningCLI):
    """LightningCLI with the data-to-model links and an always-on checkpoint callback
    (`checkpoint:` keys; best epoch by val/top1 and last)."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.monitor": "val/top1", "checkpoint.mode": "max",
                             "checkpoint.save_last": True, "checkpoint.filename": "best-{epoch:03d}",
                             "checkpoint.auto_insert_metric_name": False,
                             "checkpoint.enable_version_counter": False})
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.batch_size", "model.batch_size")
        parser.link_arguments("data.img_size", "model.img_size")
        parser.link_arguments("data.seed", "model.seed")


def cli(args: ArgsType = None, run: bool = True) -> ClassificationCLI:
    """Run the CLI in-process (`args`: None reads sys.argv) and return it, with its `trainer`,
    `model` and `datamodule`."""
    return ClassificationCLI(ImageClassifier, ImageNetDataModule, auto_configure_optimizers=False,
                             save_config_kwargs={"overwrite": True}, args=args, run=run)


def main() -> None:
    """Console entry point (`efficientformerv2-cls`)."""
    cli()


if __name__ == "__main__":
    main()
