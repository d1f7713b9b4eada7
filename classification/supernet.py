"""Sandwich-rule training of the EfficientFormerV2 supernet (paper Alg. 1, super-net pretraining).

Every step runs the largest, the smallest and `num_random` random sub-networks on the same batch,
accumulates their gradients and takes one AdamW step. With `inplace_distill` the largest
sub-network's predictions (detached) are the soft targets of the others.

Sampling is seeded from (sample_seed, global step) with its own generator, so it is the same on
every DDP rank and independent of data augmentation. Under DDP the passes of a step use different
parameters, which DistributedDataParallel's own gradient hooks cannot handle; this module turns
them off and averages the gradients itself before the step: every rank holds gradients for the
same parameters (the same sub-networks ran), so one collective per step over exactly those
parameters keeps the replicas identical, and parameters no sub-network used get no gradient and
no update on any rank (a check fails loudly if the ranks ever disagree).
"""
from __future__ import annotations

import math
import random
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torchmetrics.classification import MulticlassAccuracy

from backbones.supernet import EfficientFormerV2Supernet, SearchSpace, SubnetConfig

from .optim import param_groups

__all__ = ["SupernetModule", "sandwich_configs", "main"]


def sandwich_configs(space: SearchSpace, seed: int, step: int, num_random: int = 2) -> list[SubnetConfig]:
    """The sub-networks of one step: largest, smallest, then `num_random` drawn from a generator
    seeded by (seed, step) alone."""
    rng = random.Random(f"sandwich-{seed}-{step}")
    return [space.largest(), space.smallest()] + [space.sample(rng) for _ in range(num_random)]


class SupernetModule(LightningModule):
    """Supernet pretraining with the sandwich rule (manual optimisation, one AdamW step per batch).

    Args:
        space: search space dict (`SearchSpace.to_dict()`); None: the paper-scale default.
        num_classes, img_size, distillation, drop_path_rate, drop_rate: the supernet's.
        num_random: random sub-networks per step besides the largest and the smallest.
        inplace_distill: the largest sub-network teaches the others (soft targets).
        distill_temperature: softmax temperature of in-place distillation.
        label_smoothing: of the largest sub-network's (and, without distillation, every) loss.
        lr, weight_decay, betas: AdamW (weight decay as the classifier's: none on norms and biases,
            see `classification.optim`).
        warmup_epochs, min_lr: linear warm-up then cosine decay to min_lr, stepped per batch.
        sample_seed: seed of the sub-network sampler.
    """

    def __init__(self, space: dict[str, Any] | None = None, num_classes: int = 1000, img_size: int = 224,
                 distillation: bool = True, drop_path_rate: float = 0.0, drop_rate: float = 0.0,
                 num_random: int = 2, inplace_distill: bool = True, distill_temperature: float = 1.0,
                 label_smoothing: float = 0.1, lr: float = 1e-3, weight_decay: float = 0.05,
                 betas: tuple[float, float] = (0.9, 0.999), warmup_epochs: float = 5.0, min_lr: float = 1e-5,
                 sample_seed: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.space = SearchSpace.from_dict(space) if space is not None else SearchSpace.default()
        self.supernet = EfficientFormerV2Supernet(self.space, num_classes=num_classes, distillation=distillation,
                                                  img_size=img_size, drop_path_rate=drop_path_rate,
                                                  drop_rate=drop_rate)
        self.val_top1_largest = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.val_top1_smallest = MulticlassAccuracy(num_classes, top_k=1, average="micro")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.supernet(x)

    # -- training ------------------------------------------------------------------------------
    def sandwich(self, step: int) -> list[SubnetConfig]:
        h = self.hparams
        return sandwich_configs(self.space, h.sample_seed, step, h.num_random)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # DDP's gradient hooks would all-reduce after every pass and expect every parameter in
        # each one; gradients are averaged in `sync_gradients` instead.
        ddp = self.trainer.strategy.model if self._trainer is not None else None
        if isinstance(ddp, DistributedDataParallel):
            ddp.require_backward_grad_sync = False

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor] | None, batch_idx: int) -> None:
        if batch is None:  # every image of the batch was unreadable
            return None
        x, y = batch
        h = self.hparams
        opt = self.optimizers()
        teacher = None
        losses = []
        for i, config in enumerate(self.sandwich(self.global_step)):
            self.supernet.set_subnet(config)
            logits = self.supernet(x)
            if teacher is None or not h.inplace_distill:
                loss = F.cross_entropy(logits, y, label_smoothing=h.label_smoothing)
            else:
                t = h.distill_temperature
                loss = F.kl_div(F.log_softmax(logits / t, -1), teacher, reduction="batchmean",
                                log_target=True) * t * t
            if i == 0:
                teacher = F.log_softmax(logits.detach() / h.distill_temperature, -1)
            self.manual_backward(loss)
            losses.append(loss.detach())
        self.sync_gradients()
        opt.step()
        opt.zero_grad(set_to_none=True)
        self.lr_schedulers().step()
        self.supernet.set_subnet(self.space.largest())
        names = ["largest", "smallest"] + [f"random{i + 1}" for i in range(h.num_random)]
        self.log_dict({f"train/loss_{n}": v for n, v in zip(names, losses)}, prog_bar=False)
        self.log("train/loss", losses[0], prog_bar=True)

    @torch.no_grad()
    def sync_gradients(self) -> None:
        """Average the gradients over the DDP ranks (no-op in one process). Every rank must hold
        gradients for the same parameters; a disagreement raises instead of hanging or mixing."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        params = [p for p in self.supernet.parameters() if p.requires_grad]
        used = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=self.device)
        agreed = used.clone()
        dist.all_reduce(agreed)
        if not torch.equal(agreed, used * dist.get_world_size()):
            raise RuntimeError("DDP ranks ran different sub-networks in one step: the sampler must be "
                               "seeded identically on every rank (same sample_seed)")
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= dist.get_world_size()
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def on_train_epoch_end(self) -> None:
        # BatchNorm statistics are not synchronised by DDP here; average them so every rank
        # (and the checkpoint) holds the same
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            for m in self.supernet.modules():
                if isinstance(m, nn.BatchNorm2d):
                    for buf in (m.running_mean, m.running_var):
                        dist.all_reduce(buf)
                        buf /= dist.get_world_size()

    # -- validation ----------------------------------------------------------------------------
    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor] | None, batch_idx: int) -> None:
        """Top-1 of the largest and the smallest sub-network (running BatchNorm statistics; the
        search recalibrates them per sub-network)."""
        if batch is None:
            return
        x, y = batch
        for name, config, metric in (("largest", self.space.largest(), self.val_top1_largest),
                                     ("smallest", self.space.smallest(), self.val_top1_smallest)):
            self.supernet.set_subnet(config)
            metric.update(self.supernet(x), y)
            self.log(f"val/top1_{name}", metric, prog_bar=name == "largest")
        self.supernet.set_subnet(self.space.largest())

    # -- optimisation --------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        h = self.hparams
        opt = torch.optim.AdamW(param_groups(self.supernet, h.weight_decay), lr=h.lr, betas=tuple(h.betas))
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        batches_per_epoch = max(total // max(self.trainer.max_epochs or 1, 1), 1)
        warmup = int(h.warmup_epochs * batches_per_epoch)
        floor = h.min_lr / h.lr

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = min((step - warmup) / max(total - warmup, 1), 1.0)
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def main(args: Any = None, run: bool = True):
    """Lightning CLI for supernet training:

        python -m classification.supernet fit --config configs/search/supernet_imagenet.yaml --data.root DIR

    Data: the classification `ImageNetDataModule` (`data:` keys as in configs/classification).
    A `checkpoint:` section configures the always-on ModelCheckpoint (last.ckpt at every epoch end).
    Logs and checkpoints follow `--trainer.default_root_dir` as in `classification.run_folder`.
    `fit` ends with `supernet fit: val/top1_largest <percent>, val/top1_smallest <percent> at epoch
    <E> (the last); checkpoints in DIR`; trainer settings this machine cannot run are one line
    (exit status 2) that says what to pass (`--trainer.accelerator cpu --trainer.devices 1`, or
    configs/search/supernet_toy.yaml); `EFV2_VERBOSE=1` shows the hidden third-party messages.
    """
    from lightning.pytorch.cli import LightningArgumentParser

    from .data import ImageNetDataModule
    from .run_folder import EpochCheckpoint, RunFolderCLI

    class SupernetCLI(RunFolderCLI):
        prog = "supernet fit"
        program = "python -m classification.supernet"
        cpu_config = "configs/search/supernet_toy.yaml"

        def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
            parser.add_lightning_class_args(EpochCheckpoint, "checkpoint")
            parser.set_defaults({"checkpoint.save_last": True, "checkpoint.save_top_k": 0,
                                 "checkpoint.enable_version_counter": False})
            parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
            parser.link_arguments("data.img_size", "model.img_size")

    return SupernetCLI(SupernetModule, ImageNetDataModule, save_config_kwargs={"overwrite": True}, args=args,
                       run=run)


if __name__ == "__main__":
    import sys

    from .run_folder import exit_status

    sys.exit(exit_status(main, "python -m classification.supernet"))
