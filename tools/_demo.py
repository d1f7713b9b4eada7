"""What the demo scripts in tools/ share: the toy S0 classifier of `make demo`, trained on
demand, and the `--threads` option (CPU threads chosen for the machine, `backbones.threads`).
Only tools import this module."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from _cli import UsageError, positive_int

ROOT = Path(__file__).resolve().parents[1]
TOY_CLASSIFIER = Path("artifacts/cls_toy/efficientformerv2_s0.safetensors")  # what `make demo` writes


def ensure_toy_classifier(path: Path, data: Path, prog: str) -> Path:
    """The toy classifier checkpoint at `path`. At the default place (`TOY_CLASSIFIER`) it is
    trained with tools/demo_cls.py on `data`/toy_cls when missing; elsewhere it must exist
    (demo_cls replaces the checkpoints folder next to what it writes)."""
    if not path.is_file() and path.resolve() != TOY_CLASSIFIER.resolve():
        raise UsageError(f"{path} does not exist: give an existing S0 classification checkpoint, or leave the "
                         f"option out to use {TOY_CLASSIFIER} (trained first if missing)")
    if not path.is_file():
        print(f"{prog}: {path} is missing; training it first with tools/demo_cls.py", flush=True)
        done = subprocess.run([sys.executable, str(ROOT / "tools/demo_cls.py"), "--data", str(data / "toy_cls"),
                               "--out", str(path.parent)])
        if done.returncode != 0:
            raise UsageError(f"training the toy classifier with tools/demo_cls.py failed (exit status "
                             f"{done.returncode}); see its message above")
        if not path.is_file():
            raise FileNotFoundError(f"tools/demo_cls.py did not write {path}")
    return path


def add_threads_option(parser) -> None:
    """`--threads N`: intra-op threads (default: chosen for the machine, `backbones.threads`)."""
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch intra-op threads (default: the usable cores less the loader workers, "
                             "or EFV2_THREADS / OMP_NUM_THREADS when set)")


def apply_threads(requested: int | None, workers: int = 1) -> int:
    """Set torch's intra-op threads for a demo whose loaders use `workers` worker processes, print
    the choice in one line and return the count (in-process CLI runs keep it)."""
    from backbones.threads import set_cpu_threads
    return set_cpu_threads(workers, requested).threads
