"""Command-line conventions shared by the scripts in tools/: bad input is answered with one
line on stderr that names the problem and what to do, and exit status 2, never a traceback.

    from _cli import ArgumentParser, run

    def main(argv=None) -> int:
        args = ArgumentParser(prog="export", description=__doc__).parse_args(argv)
        ...
    if __name__ == "__main__":
        sys.exit(run(main, "export"))

Bad input is what argparse refuses and the project's own errors (`backbones.errors`:
`EfficientFormerV2Error` and its subclasses, `UsageError` for what a tool checks itself). Any
other exception (a ValueError, OSError or ImportError from torch or a bug of ours) keeps its
traceback and exit status 1: that is what a report needs.

Only tools import this module (scripts in tools/ have tools/ first on sys.path); no package
imports it. Importing it stays cheap (`backbones.errors` loads no third-party module).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable, NoReturn, Sequence

from backbones.errors import EfficientFormerV2Error, UsageError

__all__ = ["ArgumentParser", "UsageError", "is_bad_input", "run", "fail", "positive_int", "require_positive",
           "check_writable", "require_packages", "DENSE_PACKAGES"]

# what the detection and segmentation tools import (the `dense` job of tools/setup_env.sh)
DENSE_PACKAGES = ("mmcv", "mmengine", "mmdet", "mmseg")


def is_bad_input(exc: BaseException) -> bool:
    """Whether `exc` is bad input: one of the project's errors (`EfficientFormerV2Error`)."""
    return isinstance(exc, EfficientFormerV2Error)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def fail(prog: str, message: str) -> NoReturn:
    """Print `prog: error: message` on stderr and exit with status 2."""
    print(f"{prog}: error: {' '.join(message.split())}", file=sys.stderr)
    raise SystemExit(2)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error: `prog: error: <problem> (see --help)`, exit status 2."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        fail(self.prog, f"{message} (see {self.prog} --help)")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (anything else is argparse's one-line error)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def require_positive(**options: int) -> None:
    """Raise UsageError naming the first option (keyword: its name, `_` for `-`) that is below 1."""
    for name, value in options.items():
        if value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {value}")


def check_writable(path: Path, option: str) -> None:
    """Raise UsageError unless `path` can be written as a file (before any work is done)."""
    if path.is_dir():
        raise UsageError(f"{option} {path} is a folder: give a file path")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise UsageError(f"{option} {path} cannot be written ({parent} is not a writable folder): "
                         "choose another path")


def require_packages(job: str, modules: Sequence[str]) -> None:
    """Raise UsageError naming the install command when a module of `job` (a tools/setup_env.sh
    job and a setup.py extra) is not installed, before a tool imports it."""
    import importlib.util
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise UsageError(f"{', '.join(missing)} not installed: run `bash tools/setup_env.sh {job}` "
                         f"(or `pip install -e .[{job}]`)")


def run(main: Callable[..., int | None], prog: str, argv: Sequence[str] | None = None) -> int:
    """Call `main(argv)` and turn bad input (`is_bad_input`) into one line on stderr and status 2."""
    try:
        return int(main(argv) or 0)
    except Exception as exc:
        if not is_bad_input(exc):
            raise  # a bug: the traceback is what a report needs
        print(f"{prog}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
