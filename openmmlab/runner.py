"""Train and test an MMDetection or MMSegmentation config with mmengine's Runner.

Shared by `tools/mm_train.py` and `tools/mm_test.py` (and the dense demos) for both tasks: the
config's ``default_scope`` (mmdet or mmseg) picks the registries. Distributed runs go through
torchrun with ``launcher='pytorch'``, as with mmdet's and mmseg's own tools.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from mmengine.config import Config
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from .safe_loading import allow_mmengine_checkpoints

LAUNCHERS = ("none", "pytorch", "slurm", "mpi")


def load_config(config: str | Path, work_dir: str | Path | None = None,
                cfg_options: Mapping[str, Any] | None = None, launcher: str = "none") -> Config:
    """The config file with overrides applied and a work_dir (default ``work_dirs/<config name>``)."""
    path = Path(config)
    if not path.is_file():
        raise FileNotFoundError(f"config {str(path)!r} not found; configs live in configs/detection and "
                                "configs/segmentation")
    if launcher not in LAUNCHERS:
        raise ValueError(f"launcher must be one of {LAUNCHERS}, not {launcher!r}")
    cfg = Config.fromfile(str(path))
    if cfg_options:
        cfg.merge_from_dict(dict(cfg_options))
    cfg.launcher = launcher
    if work_dir is not None:
        cfg.work_dir = str(work_dir)
    elif cfg.get("work_dir") is None:
        cfg.work_dir = str(Path("work_dirs") / path.stem)
    return cfg


def build_runner(cfg: Config) -> Runner:
    """A Runner (or the config's ``runner_type``) for the config."""
    allow_mmengine_checkpoints()
    return Runner.from_cfg(cfg) if "runner_type" not in cfg else RUNNERS.build(cfg)


def train(config: str | Path, work_dir: str | Path | None = None, cfg_options: Mapping[str, Any] | None = None,
          resume: str | None = None, amp: bool = False, launcher: str = "none") -> Runner:
    """Train a config; returns the Runner after training.

    Args:
        resume: None (fresh run), "auto" (the latest checkpoint in the work_dir) or a checkpoint path.
        amp: mixed precision (AmpOptimWrapper).
    """
    cfg = load_config(config, work_dir, cfg_options, launcher)
    if resume == "auto":
        cfg.resume, cfg.load_from = True, None
    elif resume is not None:
        if not Path(resume).is_file():
            raise FileNotFoundError(f"checkpoint to resume from {resume!r} not found")
        cfg.resume, cfg.load_from = True, str(resume)
    if amp:
        cfg.optim_wrapper.type = "AmpOptimWrapper"
        cfg.optim_wrapper.setdefault("loss_scale", "dynamic")
    runner = build_runner(cfg)
    runner.train()
    return runner


def test(config: str | Path, checkpoint: str | Path, work_dir: str | Path | None = None,
         cfg_options: Mapping[str, Any] | None = None, launcher: str = "none") -> dict[str, float]:
    """Evaluate a checkpoint on the config's test set; returns the metrics (COCO mAP or mIoU)."""
    if not Path(checkpoint).is_file():
        raise FileNotFoundError(f"checkpoint {str(checkpoint)!r} not found")
    cfg = load_config(config, work_dir, cfg_options, launcher)
    cfg.load_from = str(checkpoint)
    return build_runner(cfg).test()


def train_measures(runner: Runner) -> dict[str, float]:
    """Mean seconds per training iteration (mmengine's logged ``train/time``) and this process's
    peak resident memory in MiB (``getrusage`` max RSS)."""
    import resource

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
