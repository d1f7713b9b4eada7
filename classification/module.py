"""LightningModule for EfficientFormerV2 image classification (the paper's ImageNet-1K recipe).

Every recipe item is a constructor argument, i.e. a `model:` key of the YAML configs: AdamW via
timm's optimizer factory (weight decay as the official training: none on norms and biases,
see `classification.optim`), the learning rate scaled by the
global batch size, timm's cosine schedule with warm-up stepped per iteration, timm's Mixup /
CutMix with label smoothing, stochastic depth, and DeiT hard (or soft) distillation from a
frozen teacher. Gradient clipping is the Trainer's (`trainer.gradient_clip_val`).

The network is kept at `self.model`, so Lightning checkpoints (keys `model.*`) load with
`backbones.load_checkpoint`; hyper-parameters are plain values, so they load with
`torch.load(weights_only=True)`. A checkpoint also carries the description of its network
(`metadata`: architecture, class count and names, distillation head, input size), so
`backbones.model_from_checkpoint(path)` builds the model from it alone, and the command's settings
(`fit_config`, YAML) from which `python -m classification predict --ckpt_path` rebuilds the run.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, TypedDict

import numpy as np
import timm
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from timm.data import Mixup
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from backbones import (Arch, CheckpointError, EfficientFormerV2, create_model, list_models, load_checkpoint,
                       read_state_dict)
from backbones.checkpoint import (DIGEST_KEY, ArchitectureMismatchError, ClassCountMismatchError, check_dtypes,
                                  check_finite, tensor_digest, unwrap_state_dict)
from backbones.hub import is_hub_spec, is_local_dir_spec, parse_hub_spec
from backbones.checkpoint import model_metadata
from imagefolder import seeded

from .optim import param_groups

__all__ = ["ImageClassifier", "TeacherConfig", "build_teacher", "check_teacher_config", "load_pretrained_weights"]


class TeacherConfig(TypedDict, total=False):
    """Distillation teacher: a timm model name (e.g. "regnety_160") or an EfficientFormerV2
    variant name, and its weights: a local checkpoint or a hub spec (e.g.
    "hf-hub:timm/regnety_160.deit_in1k", fetched into huggingface_hub's cache on first use)."""

    name: str
    checkpoint: str | None
    kwargs: dict[str, Any]


def check_teacher_config(config: TeacherConfig) -> None:
    """Raise a ValueError saying what is missing when `config` names no teacher or no weights."""
    name, checkpoint = config.get("name"), config.get("checkpoint")
    if not name:
        raise ValueError("model.teacher needs a 'name' (a timm model such as regnety_160, or "
                         "efficientformerv2_l) and a 'checkpoint' with its weights")
    if not checkpoint:
        raise ValueError(f"model.teacher.checkpoint is required: a randomly initialised {name!r} "
                         "would teach noise (give a local file or a hub spec such as "
                         "hf-hub:timm/regnety_160.deit_in1k)")
    known = name in list_models() if name.startswith("efficientformerv2") else timm.is_model(name)
    if not known:
        raise ValueError(f"model.teacher.name {name!r} is neither an EfficientFormerV2 variant "
                         f"({', '.join(list_models())}) nor a timm model")
    if is_hub_spec(checkpoint):
        try:
            parse_hub_spec(checkpoint)  # fetched (or read from the cache) when fitting starts
        except CheckpointError as e:
            raise ValueError(f"model.teacher.checkpoint: {e}") from e
    elif is_local_dir_spec(checkpoint):
        pass  # a folder in timm's Hub format: checked when its weights are read
    elif not Path(checkpoint).is_file():
        raise ValueError(f"model.teacher.checkpoint {checkpoint} does not exist: give the local file with "
                         f"{name!r}'s weights, or a hub spec (hf-hub:ORG/REPO)")


def build_teacher(config: TeacherConfig, num_classes: int) -> nn.Module:
    """The frozen, eval-mode teacher described by `config`, with weights from its checkpoint."""
    check_teacher_config(config)
    name, checkpoint = config["name"], config["checkpoint"]
    kwargs = dict(config.get("kwargs") or {})
    if name.startswith("efficientformerv2"):
        teacher = create_model(name, num_classes=num_classes, **kwargs)
        load_checkpoint(teacher, checkpoint)
    else:
        teacher = timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
        sd = read_state_dict(checkpoint)  # a local file or a hub spec; checked (digest, CRCs, finite)
        own = teacher.state_dict()
        if not any(k in own for k in sd):  # e.g. a Lightning checkpoint: keys under "model."
            sd = {k[len("model."):]: v for k, v in sd.items() if k.startswith("model.")}
        check_dtypes(sd, own, f"teacher checkpoint {checkpoint}")
        try:
            missing, unexpected = teacher.load_state_dict(sd, strict=False)
        except RuntimeError as e:  # shape mismatches
            raise CheckpointError(f"teacher checkpoint {checkpoint} does not fit timm's {name!r} with "
                                  f"{num_classes} classes: {e}") from e
        if missing or unexpected:
            raise CheckpointError(f"teacher checkpoint {checkpoint} does not fit timm's {name!r} with "
                                  f"{num_classes} classes: missing {missing[:5]}, unexpected {unexpected[:5]}")
    teacher.requires_grad_(False)
    return teacher.eval()


def load_pretrained_weights(model: EfficientFormerV2, spec: str, classifier: str = "load") -> None:
    """`load_checkpoint(model, spec, classifier=...)` for `--model.pretrained` (the
    `pretrained` argument), its errors worded in the command line's options."""
    try:
        load_checkpoint(model, spec, classifier=classifier)
    except ClassCountMismatchError as e:
        raise CheckpointError(
            f"--model.pretrained {spec}: the checkpoint's classifier has {e.checkpoint_classes} classes but the "
            f"model has {e.model_classes} (from the data): add --model.pretrained_classifier drop (a new "
            "classifier) or --model.pretrained_classifier resize (keep the rows of the classes both have)") from e
    except ArchitectureMismatchError as e:
        if e.checkpoint_name in list_models():
            fix = f"pass --model.model_name {e.checkpoint_name}"
        else:
            fix = f"pass --model.arch '{json.dumps(e.checkpoint_arch.to_dict())}'"
        raise CheckpointError(f"--model.pretrained {spec}: the checkpoint is {e.checkpoint_name}, but the model "
                              f"is {e.model_name}: {fix} to build the model the weights are for") from e
    except CheckpointError as e:
        text = str(e)
        raise CheckpointError(f"--model.pretrained {text if text.startswith(str(spec)) else f'{spec}: {text}'}") from e


class ImageClassifier(LightningModule):
    """EfficientFormerV2 (or a searched architecture) trained for image classification.

    Args:
        model_name: a backbone factory name, e.g. "efficientformerv2_s0".
        arch: an architecture dict (`Arch.to_dict()`, e.g. from the supernet search) used instead
            of model_name's.
        num_classes: classes (linked from the data by the CLI).
        drop_path_rate: stochastic depth (None: the variant's default).
        img_size: training resolution (linked from the data); sizes the attention-bias grids.
        pretrained: weights to start from: a file of any format `backbones.load_checkpoint` reads, or
            a hub spec (e.g. "hf-hub:timm/efficientformerv2_s0.snap_dist_in1k"). Bias tables of
            another training size are resampled to img_size.
        pretrained_classifier: "load", "drop" or "resize" the pretrained heads.
        batch_size: per-device batch size (linked from the data); with the world size and
            gradient accumulation it gives the global batch for the lr scaling.
        lr: absolute learning rate; None: `base_lr * global_batch / lr_base_batch`.
        base_lr, lr_base_batch: the scaling rule (paper: 1e-3 per 1024 images).
        optimizer: timm optimizer name ("adamw", "sgd", "lamb", ...).
        weight_decay: decoupled weight decay (not applied to norms and biases: `classification.optim`).
        layer_decay: layer-wise learning-rate decay for fine-tuning (timm's grouping: stem, four
            stages, norm and heads; the last layer at `lr`, each layer below at `layer_decay`
            times the one above); None: one learning rate.
        betas, opt_eps: Adam-family betas and epsilon.
        warmup_epochs: linear warm-up length (fractions allowed), within the cosine schedule.
        warmup_lr: learning rate at the start of warm-up.
        min_lr: final learning rate of the cosine schedule.
        mixup, cutmix: Mixup / CutMix alphas (0 turns one off).
        mixup_prob, mixup_switch_prob, mixup_mode: timm Mixup's application probability,
            probability of CutMix when both are on, and "batch", "pair" or "elem".
        label_smoothing: label smoothing (inside the mixed targets when Mixup is on).
        teacher: distillation teacher (None: no distillation and no distillation head).
        distillation_type: "hard" (DeiT: teacher's argmax as target of the distillation head)
            or "soft" (KL divergence at distillation_tau).
        distillation_alpha: weight of the distillation loss.
        distillation_tau: softmax temperature of soft distillation.
        seed: seeds the per-step randomness (Mixup, drop path) so a resumed run replays it.
        top_k: the second accuracy reported besides top-1, and the classes `predict` reports per image.
    """

    def __init__(self, model_name: str = "efficientformerv2_s0", arch: dict[str, Any] | None = None,
                 num_classes: int = 1000, drop_path_rate: float | None = None, img_size: int = 224,
                 pretrained: str | None = None,
                 pretrained_classifier: Literal["load", "drop", "resize"] = "load",
                 batch_size: int = 128, lr: float | None = None, base_lr: float = 1e-3,
                 lr_base_batch: int = 1024, optimizer: str = "adamw", weight_decay: float = 0.05,
                 layer_decay: float | None = None, betas: tuple[float, float] = (0.9, 0.999), opt_eps: float = 1e-8,
                 warmup_epochs: float = 0.0, warmup_lr: float = 1e-6, min_lr: float = 1e-5,
                 mixup: float = 0.0, cutmix: float = 0.0, mixup_prob: float = 1.0,
                 mixup_switch_prob: float = 0.5, mixup_mode: Literal["batch", "pair", "elem"] = "batch",
                 label_smoothing: float = 0.0, teacher: TeacherConfig | None = None,
                 distillation_type: Literal["hard", "soft"] = "hard", distillation_alpha: float = 0.5,
                 distillation_tau: float = 1.0, seed: int = 0, top_k: int = 5) -> None:
        super().__init__()
        self.save_hyperparameters()
        distill = teacher is not None
        kwargs: dict[str, Any] = dict(num_classes=num_classes, distillation=distill,
                                      drop_path_rate=drop_path_rate, img_size=img_size)
        if arch is not None:
            self.model = EfficientFormerV2(Arch.from_dict(arch), **kwargs)
        else:
            self.model = create_model(model_name, **kwargs)
        if pretrained:
            load_pretrained_weights(self.model, pretrained, pretrained_classifier)
        self.model.set_distilled_training(distill)
        # `fit`'s model summary shows the FLOPs (and input/output sizes) at the training size
        self.example_input_array = torch.zeros(1, 3, img_size, img_size)
        if distill:
            check_teacher_config(teacher)  # a config error now; its weights are read for fitting only
        self.teacher: nn.Module | None = None  # built by setup("fit"): evaluation needs no teacher file
        self.fit_config: str | None = None  # the command line's settings (YAML), set by the CLI for its checkpoints

        self.mixup_fn = None
        if mixup > 0 or cutmix > 0:
            self.mixup_fn = Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, prob=mixup_prob,
                                  switch_prob=mixup_switch_prob, mode=mixup_mode,
                                  label_smoothing=label_smoothing, num_classes=num_classes)
        # soft (mixed and smoothed) targets with Mixup, hard labels with smoothing otherwise
        self.train_loss = nn.CrossEntropyLoss(label_smoothing=0.0 if self.mixup_fn else label_smoothing)

        k = min(top_k, num_classes)
        metrics = MetricCollection({"top1": MulticlassAccuracy(num_classes, top_k=1, average="micro"),
                                    f"top{k}": MulticlassAccuracy(num_classes, top_k=k, average="micro")})
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")

    # ------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def setup(self, stage: str) -> None:
        """Fitting with distillation: build the frozen teacher from its checkpoint."""
        if stage == "fit" and self.hparams.teacher is not None:
            self.teacher_model()

    def teacher_model(self) -> nn.Module:
        """The frozen distillation teacher, built from its checkpoint on first use."""
        if self.teacher is None:
            self.teacher = build_teacher(self.hparams.teacher, self.hparams.num_classes).to(self.device)
        return self.teacher

    def train(self, mode: bool = True) -> "ImageClassifier":
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # frozen: BatchNorm statistics stay
        return self

    def global_batch_size(self) -> int:
        """Images per optimizer step over all devices and accumulated batches."""
        trainer = self._trainer
        if trainer is None:
            return self.hparams.batch_size
        return self.hparams.batch_size * trainer.world_size * trainer.accumulate_grad_batches

    def learning_rate(self) -> float:
        """Peak learning rate: `lr`, or the paper's rule base_lr x global batch / lr_base_batch."""
        h = self.hparams
        return h.lr if h.lr is not None else h.base_lr * self.global_batch_size() / h.lr_base_batch

    def distillation_loss(self, x: torch.Tensor, logits_dist: torch.Tensor) -> torch.Tensor:
        """DeiT distillation of the distillation head from the frozen teacher's output on x."""
        with torch.no_grad():
            teacher_logits = self.teacher_model()(x)
        if self.hparams.distillation_type == "hard":
            return F.cross_entropy(logits_dist, teacher_logits.argmax(dim=1))
        tau = self.hparams.distillation_tau
        return F.kl_div(F.log_softmax(logits_dist / tau, dim=1), F.log_softmax(teacher_logits / tau, dim=1),
                        reduction="batchmean", log_target=True) * tau * tau

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor] | None, batch_idx: int) -> torch.Tensor | None:
        if batch is None:  # every image of the batch was unreadable
            return None
        x, y = batch
        # per-step seeds: Mixup (NumPy) and drop path (torch) replay identically after a resume, and
        # differ between the ranks of a multi-device run
        step_seed = np.random.SeedSequence([self.hparams.seed, self.global_rank, self.global_step])
        with seeded(int(step_seed.generate_state(1)[0])):
            if self.mixup_fn is not None:
                if len(x) % 2:  # timm's Mixup pairs images; a batch that lost a bad image is odd
                    x, y = x[:-1], y[:-1]
                x, y = self.mixup_fn(x, y)
            out = self.model(x)
        if self.hparams.teacher is not None:
            logits, logits_dist = out
            base = self.train_loss(logits, y)
            distill = self.distillation_loss(x, logits_dist)
            a = self.hparams.distillation_alpha
            loss = (1 - a) * base + a * distill
            self.log("train/distill_loss", distill, batch_size=len(x))
        else:
            loss = self.train_loss(out, y)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(x))
        return loss

    def _evaluate(self, batch: tuple[torch.Tensor, torch.Tensor] | None, metrics: MetricCollection) -> None:
        """Shared validation/test step: loss, top-1 and top-k."""
        if batch is None:
            return
        x, y = batch
        logits = self.model(x)
        prefix = metrics.prefix
        self.log(f"{prefix}loss", F.cross_entropy(logits, y), batch_size=len(x), sync_dist=True)
        metrics.update(logits, y)
        self.log_dict(metrics, prog_bar=True, batch_size=len(x))

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, self.val_metrics)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, self.test_metrics)

    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, Any] | None:
        """The `top_k` most probable classes of each image: {"classes": (B, k) indices, "scores":
        (B, k) softmax probabilities, "target": (B,) folder labels, "paths": B image paths when the
        batch carries them (the DataModule's predict split does)}."""
        if batch is None:
            return None
        x, y, *rest = batch
        probs = self.model(x).softmax(dim=1)
        scores, classes = probs.topk(min(self.hparams.top_k, probs.shape[1]), dim=1)
        out: dict[str, Any] = {"classes": classes, "scores": scores, "target": y}
        if rest:
            out["paths"] = list(rest[0])
        return out

    def on_train_epoch_end(self) -> None:
        datamodule = getattr(self._trainer, "datamodule", None)
        skipped = getattr(datamodule, "num_skipped", None)
        if skipped is not None:
            self.log("data/skipped_images", float(skipped))

    # ------------------------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        h = self.hparams
        lr = self.learning_rate()
        opt_args = dict(betas=tuple(h.betas), eps=h.opt_eps) if "adam" in h.optimizer.lower() else {}
        optimizer = create_optimizer_v2(param_groups(self.model, h.weight_decay, layer_decay=h.get("layer_decay")),
                                        opt=h.optimizer, lr=lr,
                                        weight_decay=h.weight_decay, **opt_args)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        epochs = self.trainer.max_epochs
        per_epoch = total / epochs if epochs and epochs > 0 else total
        scheduler = CosineLRScheduler(optimizer, t_initial=total, lr_min=h.min_lr,
                                      warmup_t=int(round(h.warmup_epochs * per_epoch)),
                                      warmup_lr_init=h.warmup_lr, t_in_epochs=False)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def lr_scheduler_step(self, scheduler: CosineLRScheduler, metric: Any = None) -> None:
        scheduler.step_update(num_updates=self.global_step)

    # ------------------------------------------------------------------------------------------
    def _data_classes(self) -> list[str] | None:
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        classes = getattr(datamodule, "classes", None)
        return list(classes) if classes is not None else None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        classes = self._data_classes()
        if classes is not None:
            checkpoint["class_names"] = classes
        # what backbones.model_from_checkpoint builds the network from: arch, classes, heads, size
        checkpoint["metadata"] = model_metadata(self.model, classes)
        if self.fit_config is not None:  # the command's settings: `predict --ckpt_path` needs nothing else
            checkpoint["fit_config"] = self.fit_config
        # the frozen teacher is rebuilt from its own checkpoint: do not copy it into every file
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items()
                                    if not k.startswith("teacher.")}
        # a digest of the weights, verified by every reader (backbones.read_state_dict, the resume)
        checkpoint[DIGEST_KEY] = tensor_digest(checkpoint["state_dict"])

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        sd = checkpoint.get("state_dict", {})
        # the file was read already: its digest (when it has one), values and kinds are checked
        # here too, before Lightning copies the tensors into the model (e.g. `--ckpt_path last`)
        if sd:
            unwrap_state_dict(checkpoint, "the checkpoint to resume from")
            check_finite(sd, "the checkpoint to resume from")
            check_dtypes(sd, self.state_dict(), "the checkpoint to resume from")
        head = sd.get("model.head.weight")
        names = checkpoint.get("class_names")
        data_classes = self._data_classes()
        fix = ("point --data.root at the data the checkpoint was trained on, or fine-tune from it with "
               "--model.pretrained CKPT --model.pretrained_classifier resize (or drop) instead of --ckpt_path")
        if head is not None and head.shape[0] != self.model.num_classes:
            raise CheckpointError(f"the checkpoint's classifier has {head.shape[0]} classes but the model "
                                  f"has {self.model.num_classes} (from the data): {fix}")
        if names is not None and data_classes is not None and list(names) != data_classes:
            diff = sorted(set(names) ^ set(data_classes))[:6]
            raise CheckpointError(f"the checkpoint's classes do not match the data's (first differences: "
                                  f"{diff or 'same names, other order'}): {fix}")
        if self.teacher is not None:  # dropped on save, see on_save_checkpoint
            for k, v in self.teacher.state_dict().items():
                sd.setdefault(f"teacher.{k}", v)
