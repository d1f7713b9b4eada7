"""Lightning CLI for EfficientFormerV2 classification.

    python -m classification {fit,validate,test,predict} --config configs/classification/<variant>.yaml \
        --data.root DIR [--trainer.default_root_dir RUN] [--trainer.devices N] [--ckpt_path last]

Logs and checkpoints go to the run folder RUN (see `classification.run_folder`); `predict` writes
each image's top-k classes and scores to RUN/tb/version_<n>/predictions.csv (`predictions:` keys).
`fit` prints the peak learning rate once (with the global batch it was scaled from) and ends with
`fit: best val/top1 <percent> at epoch <E>; checkpoints in RUN/checkpoints (best: <file>)`.
Trainer settings this machine cannot run are one line, exit status 2, saying what to pass (on a
CPU: `--trainer.accelerator cpu --trainer.devices 1`, or configs/classification/toy.yaml). Known
third-party messages (worker and pin_memory hints, precision switched, device banner) are hidden;
`EFV2_VERBOSE=1` shows them. `predict --ckpt_path CKPT` needs nothing else: the fit's settings are
stored in its checkpoints. On a CPU the intra-op threads are chosen for the machine and printed in
one line (`EFV2_THREADS=N` sets them).
Also installed as the `efficientformerv2-cls` console script.
"""
from __future__ import annotations

import sys

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.cli import ArgsType, LightningArgumentParser

from .data import ImageNetDataModule
from .module import ImageClassifier
from .predictions import PredictionWriter
from .run_folder import EpochCheckpoint, RunFolderCLI, exit_status

PROG = "python -m classification"


class LearningRateReport(Callback):
    """Prints the peak learning rate once, at the start of `fit` (global rank 0): the model's
    `learning_rate()` and, when scaled by the paper's rule, the global batch it was scaled from."""

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero or not hasattr(pl_module, "learning_rate"):
            return
        h = pl_module.hparams
        batch = pl_module.global_batch_size()
        if h.get("lr") is None:
            devices = f"{trainer.world_size} device{'s' if trainer.world_size != 1 else ''}"
            how = (f"= base_lr {h.base_lr:g} x global batch {batch} / {h.lr_base_batch}; the global batch is "
                   f"{h.batch_size} per device x {devices} x {trainer.accumulate_grad_batches} accumulated")
        else:
            how = f"(model.lr as set; global batch {batch})"
        print(f"fit: learning rate {pl_module.learning_rate():.3g} {how}", flush=True)


class ClassificationCLI(RunFolderCLI):
    """LightningCLI with the data-to-model links, an always-on checkpoint callback
    (`checkpoint:` keys; best epoch by val/top1 and last) and an always-on prediction writer
    (`predictions:` keys; acts in `predict` only). `fit` prints its learning rate once and ends
    with its best `checkpoint.monitor` metric and where the checkpoints went."""

    prog = "fit"
    cpu_config = "configs/classification/toy.yaml"

    @property
    def summary_monitor(self) -> tuple[str, str] | None:
        """The checkpoint callback's metric and mode: the best of it is what `fit` reports."""
        checkpoint = self._get(self.config_init, "checkpoint")
        if checkpoint is None or not checkpoint.monitor:
            return None
        return checkpoint.monitor, checkpoint.mode

    def before_fit(self) -> None:
        super().before_fit()
        self.trainer.callbacks.append(LearningRateReport())

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(EpochCheckpoint, "checkpoint")
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
