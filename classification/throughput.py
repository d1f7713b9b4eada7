"""Training throughput of the Lightning fit: images per second after a warm-up.

`ThroughputMeter` is a Lightning callback that times the training steps after `warmup_steps`
(the first steps pay for cuDNN's autotuning, the allocator's growth and any compilation), with
the device synchronised at both ends of the timed span, and counts the images those steps
trained on. `fit_throughput` runs a short fit of an `ImageClassifier` on synthetic in-memory
batches (made on the training device, in channels_last when asked) with it:

    result = fit_throughput("cuda", precision="bf16-mixed", batch_size=128, steps=20)
    result["images_per_s"]
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import torch
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from torch.utils.data import DataLoader, Dataset

from backbones.errors import UsageError

from .module import ImageClassifier

__all__ = ["ThroughputMeter", "SyntheticImages", "fit_throughput", "synchronize"]


def synchronize(device: torch.device | str) -> None:
    """Wait for the work queued on `device` (CUDA, MPS, XPU); nothing to wait for on the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
    elif device.type == "xpu":
        torch.xpu.synchronize(device)


def _batch_size(batch: Any) -> int:
    x = batch[0] if isinstance(batch, (list, tuple)) else batch
    return len(x)


class ThroughputMeter(Callback):
    """Images per second of the training steps after `warmup_steps`.

    The timed span starts before the first step after the warm-up and ends after the last step
    of the fit, with the device synchronised at both ends (and after each timed step, so that a
    step's time is its own); it includes the steps' data loading, forward, backward and optimizer
    work. After the fit: `images`, `steps`, `seconds`, `images_per_s` (None when no step was timed)
    and `step_seconds` (each timed step).

    Args:
        warmup_steps: training batches run before timing starts.
        clock: the timer (tests pass a fake one).
    """

    def __init__(self, warmup_steps: int = 5, clock: Callable[[], float] = time.perf_counter) -> None:
        if warmup_steps < 0:
            raise UsageError(f"warmup_steps must be 0 or more, got {warmup_steps}")
        self.warmup_steps = warmup_steps
        self.clock = clock
        self.images = 0
        self.steps = 0
        self.seconds = 0.0
        self.step_seconds: list[float] = []
        self._seen = 0
        self._t0: float | None = None

    @property
    def images_per_s(self) -> float | None:
        return self.images / self.seconds if self.steps and self.seconds > 0 else None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.images = self.steps = self._seen = 0
        self.seconds = 0.0
        self.step_seconds = []

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self._t0 = None
        if self._seen >= self.warmup_steps:
            synchronize(pl_module.device)
            self._t0 = self.clock()

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._seen += 1
        if self._t0 is None:
            return
        synchronize(pl_module.device)
        elapsed = self.clock() - self._t0
        self.step_seconds.append(elapsed)
        self.seconds += elapsed
        self.images += _batch_size(batch)
        self.steps += 1


class _Batches(Dataset):
    """`length` items cycling over ready-made batches (the DataLoader passes them through)."""

    def __init__(self, batches: list[tuple[torch.Tensor, torch.Tensor]], length: int) -> None:
        self.batches, self.length = batches, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.batches[i % len(self.batches)]


class SyntheticImages(LightningDataModule):
    """Random normalised images and labels, made on the training device once (`distinct`
    batches, reused), so that the fit measures the model's training step and not a data pipeline.

    Args:
        batch_size, image_size, num_classes: the batches' shape and label range.
        steps: training batches per epoch.
        channels_last: images in the channels_last memory format (with a channels_last model).
        distinct: different batches made.
        seed: the random seed of the data.
    """

    def __init__(self, batch_size: int = 128, image_size: int = 224, num_classes: int = 1000, steps: int = 20,
                 channels_last: bool = False, distinct: int = 2, seed: int = 0) -> None:
        super().__init__()
        self.batch_size, self.image_size, self.num_classes = batch_size, image_size, num_classes
        self.steps, self.channels_last, self.distinct, self.seed = steps, channels_last, distinct, seed
        self._batches: list[tuple[torch.Tensor, torch.Tensor]] = []

    def setup(self, stage: str) -> None:
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        g = torch.Generator().manual_seed(self.seed)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        self._batches = []
        for _ in range(self.distinct):
            x = torch.randn(self.batch_size, 3, self.image_size, self.image_size, generator=g)
            y = torch.randint(0, self.num_classes, (self.batch_size,), generator=g)
            self._batches.append((x.to(device).contiguous(memory_format=fmt), y.to(device)))

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_Batches(self._batches, self.steps), batch_size=None, shuffle=False, num_workers=0)


def fit_throughput(device: str | torch.device = "cuda", precision: str = "bf16-mixed", channels_last: bool = False,
                   batch_size: int = 128, image_size: int = 224, steps: int = 20, warmup_steps: int = 5,
                   model_name: str = "efficientformerv2_s0", num_classes: int = 1000,
                   module_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """A short Lightning fit of `ImageClassifier(model_name)` on synthetic batches; its
    throughput after the warm-up.

    Args:
        device: "cuda", "cuda:1", "cpu", ...
        precision: Lightning's precision ("bf16-mixed", "16-mixed", "32-true", ...).
        channels_last: model and images in the channels_last memory format.
        batch_size, image_size: per step.
        steps: timed training steps (after `warmup_steps` untimed ones).
        module_kwargs: more `ImageClassifier` arguments (e.g. `drop_path_rate`).

    Returns:
        A dict with the settings and `images_per_s`, `seconds` (timed span), `step_ms_median`,
        `steps`, `images`, `final_loss` (a float; finite when the fit trained) and, on CUDA,
        `peak_memory_gib` (`torch.cuda.max_memory_allocated`).
    """
    if steps < 1:
        raise UsageError(f"steps must be at least 1, got {steps}")
    device = torch.device(device)
    accelerator = {"cuda": "gpu", "cpu": "cpu", "mps": "mps"}.get(device.type)
    if accelerator is None:
        raise UsageError(f"device {device} is not supported: use cuda or cpu")
    devices = [device.index] if device.type == "cuda" and device.index is not None else 1
    module = ImageClassifier(model_name=model_name, num_classes=num_classes, img_size=image_size,
                             batch_size=batch_size, **(module_kwargs or {}))
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    data = SyntheticImages(batch_size, image_size, num_classes, steps=warmup_steps + steps,
                           channels_last=channels_last)
    meter = ThroughputMeter(warmup_steps)
    trainer = Trainer(accelerator=accelerator, devices=devices, precision=precision, max_steps=warmup_steps + steps,
                      max_epochs=1, limit_val_batches=0, num_sanity_val_steps=0, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      benchmark=device.type == "cuda", callbacks=[meter])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    trainer.fit(module, datamodule=data)
    loss = trainer.callback_metrics.get("train/loss")
    result: dict[str, Any] = {
        "model": model_name, "device": str(device), "precision": precision, "channels_last": channels_last,
        "batch_size": batch_size, "image_size": image_size, "warmup_steps": warmup_steps, "steps": meter.steps,
        "images": meter.images, "seconds": round(meter.seconds, 4),
        "images_per_s": None if meter.images_per_s is None else round(meter.images_per_s, 2),
        "step_ms_median": round(1e3 * statistics.median(meter.step_seconds), 3) if meter.step_seconds else None,
        "final_loss": None if loss is None else float(loss)}
    if device.type == "cuda":
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
    return result
