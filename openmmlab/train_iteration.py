"""One timed training iteration of an MMDetection or MMSegmentation config: seconds per
iteration and peak device memory, at the config's own sizes or at a given input size.

The model, the optimizer wrapper and the training dataloader are built from the config with
mmengine's registries (as mmengine's Runner builds them; the config's ``default_scope`` picks
mmdet or mmseg, so this module imports neither), without pretrained weights. Batches are read
first, then ``model.train_step`` (data preprocessing, forward, losses, backward, optimizer step)
runs `warmup` untimed and `iterations` timed times with the device synchronised around each, so
that the figure is the model's iteration and not the data pipeline's.

    result = train_iteration("configs/detection/mask-rcnn_efficientformerv2-s0_fpn_1x_coco.py",
                             "data/toy_coco", device="cuda", input_size=(800, 1333),
                             cfg_options={"train_dataloader.dataset.metainfo": {"classes": CLASSES}})
    result["seconds_per_iter"], result["peak_memory_gib"]
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from mmengine.config import Config, ConfigDict
from mmengine.model import revert_sync_batchnorm
from mmengine.optim import build_optim_wrapper
from mmengine.registry import MODELS, init_default_scope
from mmengine.runner import Runner

from backbones.errors import NotFoundError, UsageError

from .datasets import ConfigError
from .runner import load_config

__all__ = ["train_iteration", "set_train_data_root", "set_train_input_size", "synchronize"]


def synchronize(device: torch.device | str) -> None:
    """Wait for the work queued on a CUDA `device`; nothing to wait for on the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _train_dataset(cfg: Config) -> ConfigDict:
    dataset = cfg.train_dataloader.dataset
    while "data_root" not in dataset and "dataset" in dataset:  # RepeatDataset and other wrappers
        dataset = dataset.dataset
    return dataset


def set_train_data_root(cfg: Config, root: str | Path) -> None:
    """Point the config's training dataset (inside any wrapper) at `root`, a dataset in the layout
    the config expects (COCO 2017 for mmdet configs, ADEChallengeData2016 for mmseg ones)."""
    _train_dataset(cfg).data_root = str(root)


def set_train_input_size(cfg: Config, size: tuple[int, int]) -> None:
    """Make every training image `size` = (height, width): each resize of the training pipeline
    becomes a fixed resize to that size (aspect ratio not kept, no random scale), each crop that
    size, and the data preprocessor's fixed size (mmseg) that size."""
    height, width = size
    pipeline = _train_dataset(cfg).pipeline
    for i, step in enumerate(pipeline):
        kind = step.get("type")
        if kind in ("Resize", "RandomResize", "RandomChoiceResize"):
            pipeline[i] = ConfigDict(type="Resize", scale=(width, height), keep_ratio=False)
        elif kind == "RandomCrop":
            step.crop_size = (height, width)
    preprocessor = cfg.model.get("data_preprocessor")
    if preprocessor is not None and preprocessor.get("size") is not None:
        preprocessor.size = (height, width)


def _read_batches(loader: Any, count: int) -> list[Any]:
    """`count` batches of the loader, starting it again when it runs out."""
    batches: list[Any] = []
    while len(batches) < count:
        before = len(batches)
        for batch in loader:
            batches.append(batch)
            if len(batches) == count:
                break
        if len(batches) == before:
            raise ConfigError("the training dataloader gave no batch: is the dataset empty after filtering "
                              "(e.g. class names that match no annotation)?")
    return batches


def train_iteration(config: str | Path, data_root: str | Path, device: str | torch.device = "cuda",
                    iterations: int = 3, warmup: int = 1, input_size: tuple[int, int] | None = None,
                    batch_size: int | None = None, cfg_options: Mapping[str, Any] | None = None,
                    clock: Callable[[], float] = time.perf_counter) -> dict[str, Any]:
    """Time training iterations of `config` on `device`.

    Args:
        config: an mmdet or mmseg config file (e.g. the paper's Mask R-CNN or Semantic FPN one).
        data_root: its training data (a toy set from tools/make_toy_data.py will do).
        device: "cuda", "cuda:0", "cpu".
        iterations: timed iterations (their median is the result).
        warmup: untimed iterations first (cuDNN autotuning, the allocator's growth).
        input_size: (height, width) of every training image (`set_train_input_size`); None: the
            config's own pipeline (e.g. mmseg's 512x512 crops).
        batch_size: images per iteration; None: the config's (per GPU).
        cfg_options: more overrides, dotted keys to values, applied before the above.

    Returns:
        A dict with `config`, `task` (the default scope), `device`, `batch_size`, `input_shape`
        (the batch the model sees, after the data preprocessor), `seconds_per_iter` (median),
        `iteration_seconds`, `loss` (of the last iteration), `params` and `peak_memory_gib`
        (`torch.cuda.max_memory_allocated` over all iterations; None on the CPU).
    """
    if iterations < 1 or warmup < 0:
        raise UsageError(f"iterations must be at least 1 and warmup at least 0, got {iterations} and {warmup}")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("device cuda asked for, but torch sees no CUDA device")
    if not Path(data_root).is_dir():
        raise NotFoundError(f"data root {str(data_root)!r} not found: generate a toy set with "
                            "tools/make_toy_data.py --task det|seg")
    cfg = load_config(config, cfg_options=cfg_options)
    scope = cfg.get("default_scope")
    if scope is None:
        raise ConfigError(f"config {config} names no default_scope (mmdet or mmseg)")
    set_train_data_root(cfg, data_root)
    if input_size is not None:
        set_train_input_size(cfg, input_size)
    backbone = cfg.model.get("backbone")
    if backbone is not None and "init_cfg" in backbone:
        backbone.init_cfg = None  # random weights: timing does not need the ImageNet checkpoint
    loader_cfg = cfg.train_dataloader
    loader_cfg.num_workers, loader_cfg.persistent_workers = 0, False
    loader_cfg.pop("pin_memory", None)
    if batch_size is not None:
        loader_cfg.batch_size = batch_size

    init_default_scope(scope)
    model = MODELS.build(cfg.model)
    model.init_weights()
    model = revert_sync_batchnorm(model).to(device)  # one process: SyncBN has nothing to sync with
    model.train()
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    loader = Runner.build_dataloader(loader_cfg, seed=0)
    batches = _read_batches(loader, warmup + iterations)
    with torch.no_grad():
        first = model.data_preprocessor(batches[0], True)["inputs"]
    input_shape = list(first.shape) if isinstance(first, torch.Tensor) else [list(t.shape) for t in first]
    del first

    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    times: list[float] = []
    log_vars: dict[str, Any] = {}
    for i, batch in enumerate(batches):
        synchronize(device)
        t0 = clock()
        log_vars = model.train_step(batch, optim_wrapper)
        synchronize(device)
        if i >= warmup:
            times.append(clock() - t0)
    loss = log_vars.get("loss")
    result: dict[str, Any] = {
        "config": str(config), "task": scope, "device": str(device), "batch_size": int(loader_cfg.batch_size),
        "input_shape": input_shape, "warmup": warmup, "iterations": iterations,
        "seconds_per_iter": round(statistics.median(times), 5), "iteration_seconds": [round(t, 5) for t in times],
        "loss": None if loss is None else float(loss.detach()), "params": sum(p.numel() for p in model.parameters()),
        "peak_memory_gib": (round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
                            if device.type == "cuda" else None)}
    return result
