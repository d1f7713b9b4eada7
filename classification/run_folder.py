"""One run, one folder: `trainer.default_root_dir` places a run's logs and checkpoints.

The classification and supernet command lines derive from `RunFolderCLI`. Whatever a config
leaves unset lands under the run folder ROOT (`--trainer.default_root_dir`, default the working
directory):

- logs: TensorBoard in ROOT/tb/version_<n>, CSV in ROOT/csv/version_<n> (one version per command),
  unless the config names its own `trainer.logger` (or turns logging off);
- checkpoints: every ModelCheckpoint without a `dirpath` writes to ROOT/checkpoints, one folder per
  run, so `--ckpt_path last` finds the run's last.ckpt.

A `fit` without `--ckpt_path` into a folder that already holds checkpoints would overwrite them:
it is refused with `RunFolderError`, which says how to resume or where else to go. A `--ckpt_path`
file is read safely before any command uses it (`backbones.read_state_dict`'s errors).

`exit_status` runs either command line the way a console script does: bad input is one line on
stderr and exit status 2, any other error keeps its traceback.
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any, Callable

from lightning.pytorch import Trainer
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from backbones import CheckpointError, read_state_dict

from .data import DataError

__all__ = ["RunFolderCLI", "RunFolderError", "SettingError", "default_loggers", "exit_status"]


class RunFolderError(FileExistsError):
    """A new run would overwrite the checkpoints of an earlier one; the message says what to do."""


class SettingError(ValueError):
    """A setting from which the model, the data or the trainer cannot be built; the message
    is the reason the class gave."""


def default_loggers(root: str | Path) -> list[Any]:
    """TensorBoard (ROOT/tb) and CSV (ROOT/csv) loggers, each with a new version folder per run.

    Args:
        root: the run folder.
    """
    return [TensorBoardLogger(str(root), name="tb"), CSVLogger(str(root), name="csv")]


class RunFolderCLI(LightningCLI):
    """LightningCLI whose logs and checkpoints follow `trainer.default_root_dir` (see the module
    docstring) and whose `fit` never overwrites an earlier run's checkpoints silently."""

    def instantiate_classes(self) -> None:
        """Build the model, data and trainer; a ValueError or OSError they raise from their
        settings is bad input (a `SettingError`), whereas one raised later, while running, is not."""
        try:
            super().instantiate_classes()
        except (ValueError, OSError) as exc:
            raise SettingError(" ".join(str(exc).split())) from exc

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        config = self._get(self.config_init, "trainer", default={})
        root = Path(config.get("default_root_dir") or os.getcwd())
        if "logger" not in kwargs and config.get("logger") in (None, True):
            kwargs["logger"] = default_loggers(root)
        trainer = super().instantiate_trainer(**kwargs)
        for callback in trainer.checkpoint_callbacks:
            if callback.dirpath is None:  # Lightning would pick the logger's version folder: per command, not per run
                callback.dirpath = os.path.realpath(root / "checkpoints")
        return trainer

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        """Parse, then read `--ckpt_path` (a local file) safely before Lightning loads it, so that
        a missing, empty, text or code-carrying file is a `CheckpointError` saying what the file
        is, not a traceback. Lightning's names of this run's own checkpoints ("last", "best",
        "hpc") pass; a URL or a registry name is refused, since Lightning would unpickle what it
        downloads without the safe check."""
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if path is None or str(path) in ("last", "best", "hpc"):
            return
        if "://" in str(path) or re.match(r"^registry(:.*|$)", str(path).lower()):  # Lightning's registry names
            raise CheckpointError(f"--ckpt_path {path}: download the checkpoint first and pass the local file; "
                                  "remote checkpoints are not loaded, as they could not be read safely")
        read_state_dict(path)

    def before_fit(self) -> None:
        """Refuse a fresh `fit` whose checkpoint folders already hold checkpoints."""
        if self._get(self.config, "ckpt_path") is not None:
            return  # resuming or continuing from a checkpoint: writing next to it is intended
        for callback in self.trainer.checkpoint_callbacks:
            folder = Path(callback.dirpath)
            existing = sorted(p.name for p in folder.glob("*.ckpt")) if folder.is_dir() else []
            if existing:
                raise RunFolderError(
                    f"{folder} already holds checkpoints of an earlier run ({', '.join(existing[:3])}"
                    f"{', ...' if len(existing) > 3 else ''}) that this run would overwrite: resume it with "
                    "--ckpt_path last, or place this run elsewhere with --trainer.default_root_dir DIR "
                    "(or delete the folder)")


def exit_status(run: Callable[[], Any], prog: str) -> int:
    """Run a command line (`run()`) as a console script: bad input (missing or malformed data, an
    unreadable or unfitting checkpoint, an occupied run folder, a setting nothing can be built
    from, a path that cannot be read or written) ends in one line on stderr and status 2; any
    other error keeps its traceback. Argument errors are jsonargparse's (also status 2)."""
    try:
        run()
    except (SettingError, DataError, RunFolderError, CheckpointError, OSError) as exc:
        if isinstance(exc, OSError) and not isinstance(exc, RunFolderError) and exc.filename is None:
            raise  # not about a path the user gave: its traceback is what a report needs
        message = f"{exc.strerror}: {exc.filename}" if isinstance(exc, OSError) and exc.filename else str(exc)
        print(f"{prog}: error: {' '.join(message.split())}", file=sys.stderr)
        return 2
    return 0
