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
stderr and exit status 2, any other error keeps its traceback. Trainer settings this machine cannot
run (an accelerator it lacks, more devices than it has, a precision or strategy that needs a GPU)
are bad input too (`TrainerSettingError`): the line names the settings and what to pass instead
(`--trainer.accelerator cpu --trainer.devices 1`, or a CPU config such as
configs/classification/toy.yaml).

Mistakes in the arguments or a config file (a missing file, a misspelt key) are one line naming
the program and, for a misspelt key, the closest one (`OneLineArgumentParser`); the usage only
with --help. On a CPU the trainer's process sets torch's intra-op threads for the machine
(`backbones.threads`: usable cores less the loader workers; `EFV2_THREADS` to choose) and says so
in one line. `validate`, `test` and `predict` with `--ckpt_path FILE` and no `--config` take the
settings of the fit that wrote the checkpoint (`with_saved_config`).

What a run says: `fit` ends with one line, the run's metric and where its checkpoints went
(`fit: best val/top1 63.2% at epoch 4; checkpoints in RUN/checkpoints`); the supernet CLI's the
same with its own metrics. Known third-party messages that say nothing about the run (the
worker-count and pin_memory hints, the precision switched on a CPU, Lightning's device banner
and tips) are kept out of the output; set the environment variable `EFV2_VERBOSE=1` to see them
(`quiet_third_party`).
"""
from __future__ import annotations

import contextlib
import difflib
import logging
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, NoReturn

from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from backbones import CheckpointError, read_state_dict
from backbones.errors import EfficientFormerV2Error
from backbones.threads import set_cpu_threads

__all__ = ["RunFolderCLI", "OneLineArgumentParser", "close_match", "saved_config", "with_saved_config",
           "RunFolderError", "SettingError", "TrainerSettingError", "MetricHistory", "EpochCheckpoint",
           "default_loggers", "exit_status", "quiet_third_party", "verbose", "NOISE", "VERBOSE_ENV"]

#: the environment variable that shows the third-party messages `quiet_third_party` hides
VERBOSE_ENV = "EFV2_VERBOSE"

# Known third-party messages that say nothing about this run's result (regular expressions,
# matched at the start of a warning's or a log record's text). Anything else still shows.
NOISE: tuple[str, ...] = (
    r"The '\w+' does not have many workers",                      # worker-count hint
    r"Consider setting `persistent_workers=True`",
    r"The combination of `DataLoader\(`pin_memory=True`",
    r".*'pin_memory' argument is set as true but no accelerator is found",   # torch's DataLoader on a CPU
    r"You passed `Trainer\(accelerator='cpu', precision='16-mixed'\)`",  # precision switched on a CPU
    r"Using (16bit|bfloat16) Automatic Mixed Precision",
    r"(GPU|TPU|HPU|IPU) available: ",                            # the device banner
    r"💡 Tip: ",
    r"You are using a CUDA device .* that has Tensor Cores",
    r"Seed set to ",
    r"LOCAL_RANK: \d+ - CUDA_VISIBLE_DEVICES",
    r"The number of training batches \(\d+\) is smaller than the logging interval",
    r"`Trainer.fit` stopped: ",                                     # the CLI's own last line says more
    r"LightningCLI's args parameter is intended to run from within Python",
    r"Checkpoint directory .* exists and is not empty",            # refused by RunFolderCLI unless resuming
    r"Experiment logs directory .* exists and is not empty",
    r"Trying to infer the `batch_size` from an ambiguous collection",
    r"This DataLoader will create \d+ worker processes in total",     # torch's worker-count hint
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",              # Lightning against torch 2.14's pytree
    r"Precision [\w-]+ is not supported by the model summary",
    r"It is recommended to use `self.log\('[^']*', \.\.\., sync_dist=True\)`",
    r"Loading `\w+_dataloader` to estimate number of stepping batches",
    r"Initializing distributed: GLOBAL_RANK",                        # the one-process DDP banner
    r"-+\s*distributed_backend=",
    r"Cosine annealing scheduler will have no effect",                # timm, a schedule of one step
    r"Your `IterableDataset` has `__len__` defined",    # shards: each loader worker decodes its own batches
    r"Couldn't infer the batch indices fetched from your dataloader",  # predict from shards (no sampler)
)
_NOISE = re.compile("|".join(f"(?:{p})" for p in NOISE))
# Lightning's loggers that print the banner, tips and the seed
_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
            "lightning.fabric.utilities.seed", "lightning.pytorch.accelerators.cuda",
            "lightning.pytorch.utilities.seed", "lightning.fabric.utilities.distributed",
            "timm.scheduler.cosine_lr")


def verbose() -> bool:
    """Whether the user asked for every third-party message (`EFV2_VERBOSE=1`)."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return _NOISE.match(record.getMessage()) is None


@contextlib.contextmanager
def quiet_third_party() -> Iterator[None]:
    """Within the block, the known third-party warnings and log lines of `NOISE` are not shown
    (unless `EFV2_VERBOSE=1`); warning filters and loggers are restored afterwards."""
    if verbose():
        yield
        return
    drop = _DropNoise()
    loggers = [logging.getLogger(name) for name in _LOGGERS]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="|".join(f"(?:{p})" for p in NOISE))
        for logger in loggers:
            logger.addFilter(drop)
        try:
            yield
        finally:
            for logger in loggers:
                logger.removeFilter(drop)


class RunFolderError(EfficientFormerV2Error, FileExistsError):
    """A new run would overwrite the checkpoints of an earlier one; the message says what to do."""


class SettingError(EfficientFormerV2Error, ValueError):
    """A setting from which the model, the data or the trainer cannot be built; the message
    is the reason the class gave."""


class TrainerSettingError(SettingError):
    """Trainer settings this machine cannot run; the message names them and what to pass instead."""


def _devices_here() -> str:
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return f"{count} CUDA GPU{'s' if count != 1 else ''}" if count else "no GPU"


def trainer_setting_error(exc: BaseException, config: dict[str, Any], cpu_config: str | None) -> TrainerSettingError:
    """The one-line error for a Trainer that cannot be built from `config` (the trainer section)."""
    reason = " ".join(str(exc).split()) or type(exc).__name__
    if not re.search(r"accelerator|device|gpu|cuda|strateg|precision|mps|tpu|ddp|backend", reason, re.IGNORECASE):
        return TrainerSettingError(f"--trainer settings: {reason}")  # a bad value, whatever the machine
    given = ", ".join(f"{key} {config.get(key)}" for key in ("accelerator", "devices", "strategy", "precision")
                      if config.get(key) is not None)
    message = f"the trainer cannot be built from these settings ({given}) on this machine ({_devices_here()}): {reason}"
    if not message.endswith((".", "!", "?")):
        message += "."
    if str(config.get("accelerator", "auto")) not in ("cpu",):
        message += " To train on the CPU, pass --trainer.accelerator cpu --trainer.devices 1"
        if cpu_config:
            message += f", or start from {cpu_config}"
    elif "strateg" in reason.lower() and config.get("strategy") not in (None, "auto"):
        message += " On the CPU, pass --trainer.strategy auto (or ddp for several processes)"
    return TrainerSettingError(message)


class EpochCheckpoint(ModelCheckpoint):
    """`ModelCheckpoint` that writes last.ckpt at every epoch end (with `save_last`), whatever the
    monitored metric did: the `checkpoint:` section of both command lines.

    Lightning's own callback writes last.ckpt at an epoch end only when it wrote a top-k
    checkpoint in the same step, so after an epoch whose `val/top1` did not improve (or always,
    with `save_top_k: 0`) last.ckpt would still hold an earlier epoch, and `--ckpt_path last`
    would resume from there."""

    def _save_last_now(self, trainer: Trainer) -> None:
        if (self.save_last and not self._should_skip_saving_checkpoint(trainer)
                and self._last_global_step_saved != trainer.global_step):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_now(trainer)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_now(trainer)


class MetricHistory(Callback):
    """Records, at the end of every validation epoch (not the sanity check), the logged metrics
    whose names start with `prefix`, by epoch: what the last line of `fit` reports."""

    def __init__(self, prefix: str = "val/") -> None:
        self.prefix = prefix
        self.epochs: dict[int, dict[str, float]] = {}

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        values = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(self.prefix)}
        if values:
            self.epochs[trainer.current_epoch] = values


def _metric(name: str, value: float) -> str:
    """A metric as the summary line shows it: accuracies in percent."""
    return f"{name} {100 * value:.1f}%" if "top" in name or "acc" in name else f"{name} {value:.4g}"


def _place(path: str | Path) -> str:
    """`path` relative to the working folder when it lies inside it."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def default_loggers(root: str | Path) -> list[Any]:
    """TensorBoard (ROOT/tb) and CSV (ROOT/csv) loggers, each with a new version folder per run.

    Args:
        root: the run folder.
    """
    return [TensorBoardLogger(str(root), name="tb"), CSVLogger(str(root), name="csv")]


_QUOTED_KEY = re.compile(r"""['"]([A-Za-z_][\w.]*)['"]""")


def _known_keys(parser: Any) -> list[str]:
    """The option names (dotted keys) a parser takes."""
    return sorted({a.dest for a in getattr(parser, "_actions", ()) if isinstance(getattr(a, "dest", None), str)
                   and a.dest not in ("help", "config")})


def close_match(message: str, keys: list[str]) -> str:
    """'; did you mean KEY?' for the first quoted key in `message` that is not one of `keys` but is
    close to one; '' otherwise."""
    for key in _QUOTED_KEY.findall(message):
        if key in keys or key == "config":
            continue
        last = key.rsplit(".", 1)[-1]
        matches = difflib.get_close_matches(key, keys, n=1, cutoff=0.6) or [
            k for k in keys if difflib.get_close_matches(last, [k.rsplit(".", 1)[-1]], cutoff=0.8)][:1]
        if matches:
            return f"; did you mean {matches[0]}?"
    return ""


class OneLineArgumentParser(LightningArgumentParser):
    """The CLI's parser: an error in the arguments or a config file (a missing file, a misspelt
    key) is one line, `PROG: error: <what> [; did you mean <key>?] (see PROG SUBCOMMAND --help)`,
    exit status 2; the usage only with --help."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:
            super().error(message, ex)
        prog = self.prog.split(" [")[0]
        sub = re.match(r"Subcommand '(\w+)'", str(message))
        parser = getattr(ex, "subcommand_parser", None)
        if parser is None and sub and self._subcommands_action is not None:
            parser = self._subcommands_action._name_parser_map.get(sub.group(1))
        keys = _known_keys(parser or self)
        text = " ".join(str(message).split()) + close_match(str(message), keys)
        print(f"{prog}: error: {text} (see {prog}{' ' + sub.group(1) if sub else ''} --help)", file=sys.stderr)
        self.exit(2)


class RunFolderCLI(LightningCLI):
    """LightningCLI whose logs and checkpoints follow `trainer.default_root_dir` (see the module
    docstring), whose `fit` never overwrites an earlier run's checkpoints silently and ends with a
    line saying its metric and where its checkpoints went, and which keeps the known third-party
    messages (`NOISE`) out of its output unless `EFV2_VERBOSE=1`.

    Subclasses set `prog` (the summary line's first word is its subcommand), `cpu_config` (the
    config a trainer error suggests) and `summary_monitor` (the metric `fit` reports its best of;
    None: every `val/top1*` metric of the last validation epoch)."""

    prog: str = "fit"
    program: str = "python -m classification"   # the command's name in its messages
    cpu_config: str | None = None
    summary_monitor: tuple[str, str] | None = None   # (metric, "max" or "min")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.history = MetricHistory()
        kwargs.setdefault("parser_class", OneLineArgumentParser)
        kwargs["parser_kwargs"] = {"prog": self.program, **(kwargs.get("parser_kwargs") or {})}
        with quiet_third_party():
            super().__init__(*args, **kwargs)

    def instantiate_classes(self) -> None:
        """Build the model, data and trainer; a ValueError or OSError they raise from their
        settings is bad input (a `SettingError`), whereas one raised later, while running, is not.
        A model with a `fit_config` attribute gets the command's settings (YAML) to store in its
        checkpoints."""
        try:
            super().instantiate_classes()
        except (ValueError, OSError) as exc:
            raise SettingError(" ".join(str(exc).split())) from exc
        if self.subcommand == "fit" and hasattr(self.model, "fit_config"):
            self.model.fit_config = self._parser("fit").dump(self.config["fit"], skip_none=False)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        config = self._get(self.config_init, "trainer", default={})
        root = Path(config.get("default_root_dir") or os.getcwd())
        if "logger" not in kwargs and config.get("logger") in (None, True):
            kwargs["logger"] = default_loggers(root)
        try:
            trainer = super().instantiate_trainer(**kwargs)
        except (MisconfigurationException, ValueError, RuntimeError, ImportError) as exc:
            # raised while the Trainer picks its accelerator, devices, strategy and precision
            raise trainer_setting_error(exc, {**config, **kwargs}, self.cpu_config) from exc
        trainer.callbacks.append(self.history)
        if isinstance(trainer.accelerator, CPUAccelerator):
            hparams = getattr(self.datamodule, "hparams", None) or {}
            try:
                set_cpu_threads(hparams.get("num_workers", 0) or 0, processes=trainer.num_devices, override=None,
                                announce=trainer.is_global_zero)
            except ValueError as exc:  # EFV2_THREADS or OMP_NUM_THREADS not a count
                raise SettingError(str(exc)) from exc
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
        if args is None or isinstance(args, (list, tuple)):
            args = with_saved_config(list(sys.argv[1:] if args is None else args))
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if path is None or str(path) in ("last", "best", "hpc"):
            return
        if "://" in str(path) or re.match(r"^registry(:.*|$)", str(path).lower()):  # Lightning's registry names
            raise CheckpointError(f"--ckpt_path {path}: download the checkpoint first and pass the local file; "
                                  "remote checkpoints are not loaded, as they could not be read safely")
        if str(path).startswith(("hf-hub:", "local-dir:")):  # weights, not a training state to resume
            raise CheckpointError(f"--ckpt_path {path}: resuming needs a local .ckpt of a run; to start from "
                                  f"these weights pass --model.pretrained {path}")
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

    def after_fit(self) -> None:
        """The last line of `fit`: its metric and where its checkpoints went (global rank 0 only)."""
        if self.trainer.is_global_zero:
            print(self.fit_summary(), flush=True)

    def fit_summary(self) -> str:
        """`<subcommand>: <metric> at epoch E; checkpoints in DIR` for the finished (or stopped) fit."""
        trainer = self.trainer
        head = f"{self.prog}{' (interrupted)' if trainer.interrupted else ''}:"
        epochs = self.history.epochs
        if not epochs:  # validation ran in other processes (ddp_spawn): their last metrics came back
            last = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(self.history.prefix)}
            if last:
                names = [n for n in last if n.startswith("val/top1")] or sorted(last)
                what = f"{', '.join(_metric(n, last[n]) for n in names)} at the last validation"
                return self._with_place(f"{head} {what}")
        if self.summary_monitor is not None:
            name, mode = self.summary_monitor
            scored = {e: m[name] for e, m in epochs.items() if name in m}
            if scored:
                pick = max if mode == "max" else min
                epoch = pick(scored, key=lambda e: (scored[e], -e) if mode == "max" else (scored[e], e))
                what = f"best {_metric(name, scored[epoch])} at epoch {epoch}"
            else:
                what = f"no {name} (no validation epoch ran)"
        elif epochs:
            epoch = max(epochs)
            metrics = epochs[epoch]
            names = [n for n in metrics if n.startswith("val/top1")] or sorted(metrics)
            what = f"{', '.join(_metric(n, metrics[n]) for n in names)} at epoch {epoch} (the last)"
        else:
            what = "no validation metric (no validation epoch ran)"
        return self._with_place(f"{head} {what}")

    def _with_place(self, text: str) -> str:
        """`text; checkpoints in DIR (best: FILE)`: where the run's checkpoints went."""
        callbacks = self.trainer.checkpoint_callbacks
        folders = list(dict.fromkeys(c.dirpath for c in callbacks if c.dirpath))
        written = [f for f in folders if Path(f).is_dir() and any(Path(f).glob("*.ckpt"))]
        place = f"checkpoints in {', '.join(map(_place, written))}" if written else "no checkpoints written"
        best = next((c.best_model_path for c in callbacks if c.best_model_path), "")
        if best and self.summary_monitor is not None:
            place += f" (best: {Path(best).name})"
        return f"{text}; {place}"


def saved_config(ckpt_path: str | Path) -> str | None:
    """The settings (YAML) of the `fit` that wrote the checkpoint: stored in it (`fit_config`), or
    else the config.yaml Lightning saved in the run folder's newest log version of a fit; None
    when neither is there."""
    from backbones import read_checkpoint

    _, extra = read_checkpoint(ckpt_path)
    if isinstance(extra.get("fit_config"), str):
        return extra["fit_config"]
    folder = Path(ckpt_path).resolve().parent
    if folder.name != "checkpoints":
        return None
    saved = sorted(folder.parent.glob("*/version_*/config.yaml"), key=lambda p: p.stat().st_mtime, reverse=True)
    return next((p.read_text() for p in saved if "ckpt_path" in p.read_text()), None)


def with_saved_config(argv: list[str]) -> list[str]:
    """`validate`, `test` or `predict` with `--ckpt_path FILE` and no `--config`: the fit's own
    settings (`saved_config`) go first, so the command needs nothing else; options given still
    override them."""
    if not argv or argv[0] not in ("validate", "test", "predict") or any(
            a in ("-c", "--config", "-h", "--help") or a.startswith("--config=") for a in argv):
        return argv
    path = None
    for i, arg in enumerate(argv):
        if arg == "--ckpt_path" and i + 1 < len(argv):
            path = argv[i + 1]
        elif arg.startswith("--ckpt_path="):
            path = arg.split("=", 1)[1]
    if path is None or not Path(path).is_file():
        return argv
    config = saved_config(path)
    if config is None:
        return argv
    print(f"{argv[0]}: settings of the fit read from {path} (options given override them)", flush=True)
    return [argv[0], "--config", config, *argv[1:]]


def exit_status(run: Callable[[], Any], prog: str) -> int:
    """Run a command line (`run()`) as a console script: bad input (missing or malformed data, an
    unreadable or unfitting checkpoint, an occupied run folder, a setting nothing can be built
    from, a path that cannot be read or written) ends in one line on stderr and status 2; any
    other error keeps its traceback. Argument errors are jsonargparse's (also status 2)."""
    try:
        run()
    except (EfficientFormerV2Error, OSError) as exc:
        if not isinstance(exc, EfficientFormerV2Error) and exc.filename is None:
            raise  # not about a path the user gave: its traceback is what a report needs
        plain_os = isinstance(exc, OSError) and exc.filename and exc.strerror
        message = f"{exc.strerror}: {exc.filename}" if plain_os else str(exc)
        print(f"{prog}: error: {' '.join(message.split())}", file=sys.stderr)
        return 2
    return 0
