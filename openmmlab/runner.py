"""Train and test an MMDetection or MMSegmentation config with mmengine's Runner.

Shared by `tools/mm_train.py` and `tools/mm_test.py` (and the dense demos) for both tasks: the
config's ``default_scope`` (mmdet or mmseg) picks the registries, so this module imports neither
package. Distributed runs go through torchrun with ``launcher='pytorch'``, as with mmdet's and
mmseg's own tools.

Bad input is found before a run starts and raised as `ConfigError` (a `ValueError`) or
`FileNotFoundError`, each naming the problem: a missing config, a config that does not parse,
a key no component accepts or a type no registry holds (found by building the model and the
dataloaders of the run up front), a missing data root, a missing or unreadable checkpoint.
"""
from __future__ import annotations

import pickle
import resource
import warnings
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch
from mmengine.config import Config
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from .safe_loading import allow_mmengine_checkpoints

__all__ = ["LAUNCHERS", "ConfigError", "load_config", "check_data_roots", "read_checkpoint", "build_runner",
           "train", "test", "train_measures", "final_val_metrics"]

LAUNCHERS = ("none", "pytorch", "slurm", "mpi")
_DATALOADERS = {"train": ("train_dataloader", "val_dataloader"), "test": ("test_dataloader",)}
_LOOPS = {"train": ("train_loop", "val_loop"), "test": ("test_loop",)}


class ConfigError(ValueError):
    """A config that cannot be run as written (the message names the file and the problem)."""


def load_config(config: str | Path, work_dir: str | Path | None = None,
                cfg_options: Mapping[str, Any] | None = None, launcher: str = "none") -> Config:
    """The config file with overrides applied and a work_dir (default ``work_dirs/<config name>``).

    Args:
        config: an mmdet or mmseg config file.
        work_dir: where logs and checkpoints go.
        cfg_options: overrides, dotted keys (``model.backbone.arch``) to values.
        launcher: one of `LAUNCHERS`.
    """
    path = Path(config)
    if not path.is_file():
        raise FileNotFoundError(f"config {str(path)!r} not found; configs live in configs/detection and "
                                "configs/segmentation")
    if launcher not in LAUNCHERS:
        raise ValueError(f"launcher must be one of {LAUNCHERS}, not {launcher!r}")
    try:
        cfg = Config.fromfile(str(path))
    except SyntaxError as exc:
        raise ConfigError(f"config {str(path)!r} is not valid Python: {exc.msg} (line {exc.lineno})") from exc
    if cfg_options:
        cfg.merge_from_dict(dict(cfg_options))
    cfg.launcher = launcher
    if work_dir is not None:
        cfg.work_dir = str(work_dir)
    elif cfg.get("work_dir") is None:
        cfg.work_dir = str(Path("work_dirs") / path.stem)
    return cfg


def check_data_roots(cfg: Config, mode: str) -> None:
    """Raise FileNotFoundError when a dataloader of the run (train and val for "train", test for
    "test") names a local ``data_root`` that is not a folder (wrapped datasets included)."""
    for name in _DATALOADERS[mode]:
        dataset = (cfg.get(name) or {}).get("dataset")
        while dataset is not None and "data_root" not in dataset and "dataset" in dataset:  # RepeatDataset etc.
            dataset = dataset["dataset"]
        root = dataset.get("data_root") if dataset is not None else None
        if root and "://" not in str(root) and not Path(root).is_dir():  # URLs go to mmengine's file backends
            raise FileNotFoundError(
                f"data root {str(root)!r} of {name} not found: generate a toy set with tools/make_toy_data.py or "
                f"point the config at the data with --cfg-options {name}.dataset.data_root=DIR")


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """An mmengine checkpoint read with torch's safe loading.

    Raises:
        FileNotFoundError: no such file.
        ConfigError: the file is not a torch checkpoint, or holds objects safe loading refuses.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} not found")
    with path.open("rb") as f:
        head = f.read(2)
    # torch.save writes a zip archive (older torch: a bare pickle, which starts with 0x80)
    if not (zipfile.is_zipfile(path) or head[:1] == b"\x80"):
        what = "an empty file" if not head else "neither a zip archive nor a pickle"
        raise ConfigError(f"checkpoint {str(path)!r} is not a torch checkpoint ({what}); pass the .pth file "
                          "mmengine wrote in the work dir")
    allow_mmengine_checkpoints()
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, EOFError, RuntimeError, zipfile.BadZipFile) as exc:
        raise ConfigError(f"checkpoint {str(path)!r} cannot be read with torch's safe loading: "
                          f"{_load_failure(exc)}") from exc
    if not isinstance(checkpoint, dict):
        raise ConfigError(f"checkpoint {str(path)!r} holds a {type(checkpoint).__name__}, not an mmengine "
                          "checkpoint (a dict)")
    return checkpoint


def _load_failure(exc: BaseException) -> str:
    """What torch's loading error says about the file, without its generic advice (which
    suggests turning safe loading off)."""
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1].split("Check the documentation of torch.load", 1)[0]
    else:
        text = next((line for line in text.splitlines() if line.strip()), "")
    return " ".join(text.split()) or type(exc).__name__


def build_runner(cfg: Config, mode: str = "train") -> Runner:
    """A Runner (or the config's ``runner_type``) for the config, with the model and the loops of
    `mode` ("train": train and val, "test": test) built now, so that a key no component accepts or
    a type no registry holds is a `ConfigError` before the run starts."""
    if mode not in _LOOPS:
        raise ValueError(f"mode must be one of {sorted(_LOOPS)}, not {mode!r}")
    allow_mmengine_checkpoints()
    check_data_roots(cfg, mode)
    # Warnings the components raise while being built are held back until the whole run is built:
    # when it fails, they are about a run that will not happen, and only the error is reported.
    with warnings.catch_warnings(record=True) as held:
        try:
            runner = Runner.from_cfg(cfg) if "runner_type" not in cfg else RUNNERS.build(cfg)
            for loop in _LOOPS[mode]:
                # The Runner's loop properties build a loop (its dataloader, dataset and evaluator)
                # on first access and keep it; train() and test() then reuse it.
                getattr(runner, loop)
        except (KeyError, TypeError) as exc:  # what mmengine's builders raise for unknown types and keys
            message = " ".join(str(exc.args[0] if exc.args else exc).split())
            raise ConfigError(f"{cfg.filename or 'the config'}: cannot build the run "
                              f"({type(exc).__name__}: {message})") from exc
    for w in held:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
    return runner


def train(config: str | Path, work_dir: str | Path | None = None, cfg_options: Mapping[str, Any] | None = None,
          resume: str | None = None, amp: bool = False, launcher: str = "none") -> Runner:
    """Train a config; returns the Runner after training.

    Args:
        config: an mmdet or mmseg config file.
        work_dir: where logs and checkpoints go (default ``work_dirs/<config name>``).
        cfg_options: config overrides (see `load_config`).
        resume: None (fresh run), "auto" (the latest checkpoint in the work_dir) or a checkpoint path.
        amp: mixed precision (AmpOptimWrapper).
        launcher: one of `LAUNCHERS`.
    """
    cfg = load_config(config, work_dir, cfg_options, launcher)
    if resume == "auto":
        cfg.resume, cfg.load_from = True, None
    elif resume is not None:
        read_checkpoint(resume)
        cfg.resume, cfg.load_from = True, str(resume)
    if amp:
        cfg.optim_wrapper.type = "AmpOptimWrapper"
        cfg.optim_wrapper.setdefault("loss_scale", "dynamic")
    runner = build_runner(cfg, "train")
    runner.train()
    return runner


def test(config: str | Path, checkpoint: str | Path, work_dir: str | Path | None = None,
         cfg_options: Mapping[str, Any] | None = None, launcher: str = "none") -> dict[str, float]:
    """Evaluate a checkpoint on the config's test set; returns the metrics (COCO mAP or mIoU).

    Args:
        config: the config the checkpoint was trained with.
        checkpoint: an mmengine checkpoint (.pth), read with torch's safe loading.
        work_dir, cfg_options, launcher: as for `train`.
    """
    read_checkpoint(checkpoint)
    cfg = load_config(config, work_dir, cfg_options, launcher)
    cfg.load_from = str(checkpoint)
    return build_runner(cfg, "test").test()


def train_measures(runner: Runner) -> dict[str, float]:
    """Mean seconds per training iteration (mmengine's logged ``train/time``) and this process's
    peak resident memory in MiB (``getrusage`` max RSS)."""
    times = runner.message_hub.get_scalar("train/time")
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds_per_iter": float(times.mean()), "iters": int(runner.iter), "peak_rss_mib": peak_kib / 1024}


def final_val_metrics(runner: Runner, names: list[str]) -> dict[str, float]:
    """The metrics of the last validation the Runner logged (e.g. ``coco/bbox_mAP``, ``mIoU``)."""
    hub = runner.message_hub
    out = {}
    for name in names:
        if f"val/{name}" not in hub.log_scalars:
            raise RuntimeError(f"the run logged no validation metric {name!r}; logged: {sorted(hub.log_scalars)}")
        out[name] = float(hub.get_scalar(f"val/{name}").current())
    return out
