"""Train and test an MMDetection or MMSegmentation config with mmengine's Runner.

Shared by `tools/mm_train.py` and `tools/mm_test.py` (and the dense demos) for both tasks: the
config's ``default_scope`` (mmdet or mmseg) picks the registries, so this module imports neither
package. Distributed runs go through torchrun with ``launcher='pytorch'``, as with mmdet's and
mmseg's own tools.

Bad input is found before a run starts and raised as `ConfigError` or `NotFoundError` (the
project's errors, `backbones.errors`), each naming the problem and its config key: a missing config, a config that
does not parse, a ``--cfg-options`` key that sets a variable of the file (for ``data_root=...``
pass ``data_root``, ``--data-root`` at the command line), a key no component accepts or a type no registry holds (found by
building the model and the dataloaders of the run up front), a missing data root, annotation
file, image folder or Pretrained checkpoint, a dataset whose class names match none of its
data's (`openmmlab.datasets`), a missing or unreadable checkpoint. A run that fails before its
first iteration leaves nothing in its work dir: what it created there (the timestamped log
folder, the dumped config, the work dir itself when it made it) is removed.
"""
from __future__ import annotations

import inspect
import itertools
import logging
import os
import pickle
import resource
import shutil
import warnings
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.logging import MMLogger
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from backbones.errors import NotFoundError

from .datasets import (ConfigError, apply_classes_from_data, check_built_datasets, check_cfg_options,
                       check_classes, check_data_files, empty_dataset_message, init_checkpoints, set_data_root)
from .safe_loading import allow_mmengine_checkpoints

__all__ = ["LAUNCHERS", "ConfigError", "load_config", "runner_keys", "check_data_roots", "check_init_checkpoints",
           "read_checkpoint", "build_runner", "train", "test", "train_measures", "final_val_metrics"]

LAUNCHERS = ("none", "pytorch", "slurm", "mpi")
_DATALOADERS = {"train": ("train_dataloader", "val_dataloader"), "test": ("test_dataloader",)}
_LOOPS = {"train": ("train_loop", "val_loop"), "test": ("test_loop",)}
_LOOP_LOADERS = {"train_loop": "train_dataloader", "val_loop": "val_dataloader", "test_loop": "test_dataloader"}


def load_config(config: str | Path, work_dir: str | Path | None = None,
                cfg_options: Mapping[str, Any] | None = None, launcher: str = "none",
                data_root: str | Path | None = None, classes_from_data: str | None = None) -> Config:
    """The config file with overrides applied and a work_dir (default ``work_dirs/<config name>``).

    Args:
        config: an mmdet or mmseg config file.
        work_dir: where logs and checkpoints go.
        cfg_options: overrides, dotted keys (``model.backbone.arch``) to values. Keys that set a
            variable of the file (``data_root``, ``metainfo``, ``max_epochs``, ...) are refused:
            the file uses them only while it is parsed.
        launcher: one of `LAUNCHERS`.
        data_root: the dataset folder for every loader, and the evaluators' annotation files
            under it (`openmmlab.datasets.set_data_root`; an evaluator ``ann_file`` given in
            `cfg_options` is kept).
        classes_from_data: "train" or "test": take the class names of that loader's data (COCO
            ``categories``, an ADE-format ``classes.txt``) into every loader and the heads'
            ``num_classes`` (`openmmlab.datasets.apply_classes_from_data`).
    """
    path = Path(config)
    if not path.is_file():
        raise NotFoundError(f"config {str(path)!r} not found; configs live in configs/detection and "
                            "configs/segmentation")
    if launcher not in LAUNCHERS:
        raise ValueError(f"launcher must be one of {LAUNCHERS}, not {launcher!r}")
    try:
        cfg = Config.fromfile(str(path))
    except SyntaxError as exc:
        raise ConfigError(f"config {str(path)!r} is not valid Python: {exc.msg} (line {exc.lineno})") from exc
    if cfg_options:
        check_cfg_options(cfg_options, cfg, runner_keys(cfg))
        if data_root is not None:
            both = sorted(k for k in cfg_options if str(k).split(".")[-1] == "data_root")
            if both:
                raise ConfigError(f"--data-root and --cfg-options {both[0]} both set a data root: pass one of them")
        cfg.merge_from_dict(dict(cfg_options))
    if data_root is not None:
        set_data_root(cfg, data_root, keep=cfg_options or ())
    if classes_from_data is not None:
        check_data_roots(cfg, classes_from_data)  # the files it reads, named with their keys
        check_data_files(cfg, classes_from_data)
        apply_classes_from_data(cfg, classes_from_data)
    cfg.launcher = launcher
    if work_dir is not None:
        cfg.work_dir = str(work_dir)
    elif cfg.get("work_dir") is None:
        cfg.work_dir = str(Path("work_dirs") / path.stem)
    return cfg


def runner_keys(cfg: Mapping[str, Any]) -> frozenset[str]:
    """The top-level config keys the config's Runner (``runner_type``, default mmengine's
    `Runner`) takes as arguments: the parameters of its ``__init__``."""
    runner = RUNNERS.get(cfg.get("runner_type", "Runner")) or Runner
    return frozenset(inspect.signature(runner.__init__).parameters) - {"self", "cfg"}


def check_data_roots(cfg: Config, mode: str) -> None:
    """Raise NotFoundError when a dataloader of the run (train and val for "train", test for
    "test") names a local ``data_root`` that is not a folder (wrapped datasets included)."""
    for name in _DATALOADERS[mode]:
        dataset = (cfg.get(name) or {}).get("dataset")
        while dataset is not None and "data_root" not in dataset and "dataset" in dataset:  # RepeatDataset etc.
            dataset = dataset["dataset"]
        root = dataset.get("data_root") if dataset is not None else None
        if root and "://" not in str(root) and not Path(root).is_dir():  # URLs go to mmengine's file backends
            raise NotFoundError(
                f"data root {str(root)!r} of {name} not found: pass --data-root DIR (every loader and evaluator "
                "follows it), or generate a toy set there with tools/make_toy_data.py")


def check_init_checkpoints(cfg: Config) -> None:
    """Raise NotFoundError when an ``init_cfg=dict(type='Pretrained', checkpoint=...)`` of the
    model names a local file that is not there (hub specs ``hf-hub:ORG/REPO`` and URLs are
    fetched when the weights are loaded)."""
    for key, checkpoint in init_checkpoints(cfg.get("model")):
        if checkpoint.startswith(("hf-hub:", "local-dir:")) or "://" in checkpoint or Path(checkpoint).is_file():
            continue
        raise NotFoundError(
            f"checkpoint {checkpoint!r} of {key} not found: pass --cfg-options {key}=FILE, or a hub spec such as "
            "hf-hub:timm/efficientformerv2_s0.snap_dist_in1k")


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """An mmengine checkpoint read with torch's safe loading.

    Raises:
        NotFoundError: no such file.
        ConfigError: the file is not a torch checkpoint, or holds objects safe loading refuses.
    """
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"checkpoint {str(path)!r} not found")
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


class _WorkDirGuard(Hook):
    """Remembers what a work dir held before a Runner was made in it, and removes what was
    added (the timestamped log folder, the dumped config, the work dir itself and the parents
    it needed) when the run fails before its first iteration; never what was there before."""

    priority = "VERY_HIGH"

    def __init__(self, work_dir: str | Path) -> None:
        self.work_dir = Path(work_dir).absolute()
        self.created = None  # the top-most folder that did not exist
        for p in (self.work_dir, *self.work_dir.parents):
            if p.exists():
                break
            self.created = p
        self.before = set(os.listdir(self.work_dir)) if self.work_dir.is_dir() else set()
        self.started = False

    def before_train_iter(self, runner: Any, batch_idx: int, data_batch: Any = None) -> None:
        self.started = True

    def before_test_iter(self, runner: Any, batch_idx: int, data_batch: Any = None) -> None:
        self.started = True

    def undo(self, logger: logging.Logger | None = None) -> None:
        """Remove what this run added to the work dir (no-op once the run has started); `logger`
        (the run's, default mmengine's current one) stops writing its log file there."""
        if self.started:
            return
        added = [self.created] if self.created is not None else [
            self.work_dir / name for name in (set(os.listdir(self.work_dir)) if self.work_dir.is_dir() else set())
            - self.before]
        logger = logger if logger is not None else MMLogger.get_current_instance()
        for handler in list(logger.handlers):
            if isinstance(handler, logging.FileHandler) and \
                    any(Path(handler.baseFilename).absolute().is_relative_to(p.absolute()) for p in added):
                handler.close()
                logger.removeHandler(handler)
        for path in added:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def _own_visualizer(cfg: Config) -> None:
    """Give the run's visualizer a name of its own. mmengine keeps one visualizer per name for the
    whole process and hands it, with its save folder, to the next Runner that asks for the name
    (mmdet's and mmseg's configs all say ``name='visualizer'``): a run after a failed one would
    write into the failed run's removed folder. Hooks find it by `get_current_instance`."""
    visualizer = cfg.get("visualizer")
    if isinstance(visualizer, Mapping):
        cfg.visualizer.name = f"{visualizer.get('name', 'visualizer')}_{os.getpid()}_{next(_RUN_IDS)}"


_RUN_IDS = itertools.count(1)  # Runners built by this process (`_own_visualizer`)


def build_runner(cfg: Config, mode: str = "train") -> Runner:
    """A Runner (or the config's ``runner_type``) for the config, with the model and the loops of
    `mode` ("train": train and val, "test": test) built now, so that a key no component accepts,
    a type no registry holds or a dataset that holds nothing is a `ConfigError` before the run
    starts. What a failed build created in the work dir is removed."""
    if mode not in _LOOPS:
        raise ValueError(f"mode must be one of {sorted(_LOOPS)}, not {mode!r}")
    allow_mmengine_checkpoints()
    check_data_roots(cfg, mode)
    check_data_files(cfg, mode)
    check_classes(cfg, mode)
    _own_visualizer(cfg)
    if not torch.cuda.is_available():  # the loader workers and torch's threads share the CPU's cores
        from backbones.threads import set_cpu_threads
        workers = max(int((cfg.get(_LOOP_LOADERS[loop]) or {}).get("num_workers", 0)) for loop in _LOOPS[mode])
        set_cpu_threads(workers, override="--threads N")
    guard = _WorkDirGuard(cfg.work_dir)
    # Warnings the components raise while being built are held back until the whole run is built:
    # when it fails, they are about a run that will not happen, and only the error is reported.
    with warnings.catch_warnings(record=True) as held:
        try:
            runner = Runner.from_cfg(cfg) if "runner_type" not in cfg else RUNNERS.build(cfg)
            datasets = {}
            for loop in _LOOPS[mode]:
                # The Runner's loop properties build a loop (its dataloader, dataset and evaluator)
                # on first access and keep it; train() and test() then reuse it.
                try:
                    datasets[_LOOP_LOADERS[loop]] = getattr(runner, loop).dataloader.dataset
                except ValueError as exc:  # mmengine's words for a dataset that came out empty
                    why = "need at least one array" in str(exc) and empty_dataset_message(cfg, _LOOP_LOADERS[loop])
                    if why:
                        raise ConfigError(why) from exc
                    raise
            check_built_datasets(datasets)
            if mode == "train":
                check_init_checkpoints(cfg)
        except (KeyError, TypeError) as exc:  # what mmengine's builders raise for unknown types and keys
            guard.undo()
            message = " ".join(str(exc.args[0] if exc.args else exc).split())
            raise ConfigError(f"{cfg.filename or 'the config'}: cannot build the run "
                              f"({type(exc).__name__}: {message})") from exc
        except BaseException:
            guard.undo()
            raise
    for w in held:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
    runner.register_hook(guard)
    return runner


def _run(runner: Runner, mode: str) -> Any:
    """``runner.train()`` or ``runner.test()``; a failure before the first iteration (e.g. the
    Pretrained weights cannot be loaded) leaves no work-dir folders behind."""
    try:
        return runner.train() if mode == "train" else runner.test()
    except BaseException:
        for hook in runner.hooks:
            if isinstance(hook, _WorkDirGuard):
                hook.undo(runner.logger)
        raise


def train(config: str | Path, work_dir: str | Path | None = None, cfg_options: Mapping[str, Any] | None = None,
          resume: str | None = None, amp: bool = False, launcher: str = "none", data_root: str | Path | None = None,
          classes_from_data: bool = False) -> Runner:
    """Train a config; returns the Runner after training.

    Args:
        config: an mmdet or mmseg config file.
        work_dir: where logs and checkpoints go (default ``work_dirs/<config name>``).
        cfg_options: config overrides (see `load_config`).
        resume: None (fresh run), "auto" (the latest checkpoint in the work_dir) or a checkpoint path.
        amp: mixed precision (AmpOptimWrapper).
        launcher: one of `LAUNCHERS`.
        data_root: the dataset folder for every loader and evaluator (see `load_config`).
        classes_from_data: take the class names of the training data (see `load_config`).
    """
    cfg = load_config(config, work_dir, cfg_options, launcher, data_root, "train" if classes_from_data else None)
    if resume == "auto":
        cfg.resume, cfg.load_from = True, None
    elif resume is not None:
        read_checkpoint(resume)
        cfg.resume, cfg.load_from = True, str(resume)
    if amp:
        cfg.optim_wrapper.type = "AmpOptimWrapper"
        cfg.optim_wrapper.setdefault("loss_scale", "dynamic")
    checkpoint = _read_run_checkpoint(cfg)
    runner = build_runner(cfg, "train")
    _check_run_checkpoint(runner, checkpoint, config)
    _run(runner, "train")
    return runner


def test(config: str | Path, checkpoint: str | Path, work_dir: str | Path | None = None,
         cfg_options: Mapping[str, Any] | None = None, launcher: str = "none", data_root: str | Path | None = None,
         classes_from_data: bool = False) -> dict[str, float]:
    """Evaluate a checkpoint on the config's test set; returns the metrics (COCO mAP or mIoU).

    Args:
        config: the config the checkpoint was trained with (or the one its run dumped in its
            work dir, which holds every override).
        checkpoint: an mmengine checkpoint (.pth), read with torch's safe loading.
        work_dir, cfg_options, launcher, data_root: as for `train`.
        classes_from_data: take the class names of the test data (as the training run did).
    """
    loaded = read_checkpoint(checkpoint)
    cfg = load_config(config, work_dir, cfg_options, launcher, data_root, "test" if classes_from_data else None)
    cfg.load_from = str(checkpoint)
    read = _read_run_checkpoint(cfg, loaded)
    runner = build_runner(cfg, "test")
    _check_run_checkpoint(runner, read, config)
    return _run(runner, "test")


def _read_run_checkpoint(cfg: Config, loaded: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]] | None:
    """The checkpoint the run will load (``load_from``, or with ``resume=True`` and no
    ``load_from`` the latest of the work dir), read safely and checked for damage, with the
    config's backbone set to the checkpoint's attention-bias mode
    (`openmmlab.checkpoint_check.adapt_config_to_checkpoint`); None when the run loads none.
    `loaded`: the ``load_from`` file, already read."""
    from mmengine.runner import find_latest_checkpoint

    from .checkpoint_check import adapt_config_to_checkpoint, checkpoint_state_dict

    path = cfg.get("load_from")
    if not path and cfg.get("resume"):
        path = find_latest_checkpoint(cfg.work_dir) if Path(cfg.work_dir).is_dir() else None
    if not path or "://" in str(path):
        return None
    checkpoint = loaded if loaded is not None else read_checkpoint(path)
    adapt_config_to_checkpoint(cfg, checkpoint_state_dict(checkpoint, path), path)
    return str(path), checkpoint


def _check_run_checkpoint(runner: Runner, read: tuple[str, dict[str, Any]] | None, config: str | Path) -> None:
    """Refuse, before the run starts, a checkpoint that does not fit the built model
    (`openmmlab.checkpoint_check.check_checkpoint_fits`); what the Runner created in the work dir
    is removed."""
    if read is None:
        return
    from .checkpoint_check import check_checkpoint_fits

    try:
        check_checkpoint_fits(runner.model, read[1], read[0], str(config))
    except BaseException:
        for hook in runner.hooks:
            if isinstance(hook, _WorkDirGuard):
                hook.undo()
        raise


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
