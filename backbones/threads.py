"""CPU threads for the machine a command runs on.

torch's intra-op threads and the data loader's worker processes share the cores a process may
use. When together they ask for more than that (torch takes every core by default), they fight
over the cores, and on a machine with other work beside it a CPU run slows down many times. So
every command that trains or evaluates on a CPU picks its intra-op threads with `choose_threads`
and applies them with `set_cpu_threads`, which prints the choice in one line:

    threads: 1 intra-op (2 usable cores, 1 loader worker; EFV2_THREADS=N or --threads N to change)

Whoever asks wins, in this order: an explicit count (a command's `--threads`), the environment
variable `EFV2_THREADS`, `OMP_NUM_THREADS`; otherwise the usable cores (`os.sched_getaffinity`)
less the loader workers, divided among the processes of the run, and at least one.
Depends on torch only (imported when the threads are applied).
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from .errors import UsageError

__all__ = ["THREADS_ENV", "ThreadChoice", "usable_cores", "choose_threads", "set_cpu_threads"]

#: the environment variable that sets the intra-op threads of every command
THREADS_ENV = "EFV2_THREADS"

_announced: int | None = None  # the count last printed in this process: in-process runs say it once


@dataclass(frozen=True)
class ThreadChoice:
    """Intra-op threads and why: `source` is "option", THREADS_ENV, "OMP_NUM_THREADS" or "cores"."""

    threads: int
    cores: int
    workers: int
    processes: int
    source: str

    def line(self, override: str | None = None) -> str:
        """The one line a command prints; `override` names how to change it besides the variable."""
        how = f"{THREADS_ENV}=N" + (f" or {override}" if override else "")
        if self.source == "cores":
            why = (f"{self.cores} usable core{'s' * (self.cores != 1)}, {self.workers} loader "
                   f"worker{'s' * (self.workers != 1)}"
                   + (f", {self.processes} processes" if self.processes > 1 else ""))
        else:
            why = f"from {self.source}"
        return f"threads: {self.threads} intra-op ({why}; {how} to change)"


def usable_cores(affinity: set[int] | None = None) -> int:
    """The cores this process may run on (its CPU affinity; `os.cpu_count()` where the platform has none)."""
    if affinity is None:
        try:
            affinity = os.sched_getaffinity(0)
        except (AttributeError, OSError):  # macOS, Windows
            return max(1, os.cpu_count() or 1)
    return max(1, len(affinity))


def _count(text: str | None, name: str) -> int | None:
    if text is None or not str(text).strip():
        return None
    try:
        value = int(str(text).strip())
    except ValueError:
        value = 0
    if value < 1:
        raise UsageError(f"{name} must be a positive number of threads, got {text!r}")
    return value


def choose_threads(workers: int = 0, requested: int | None = None, processes: int = 1,
                   affinity: set[int] | None = None, environ: Mapping[str, str] | None = None) -> ThreadChoice:
    """The intra-op threads for a CPU run.

    Args:
        workers: data-loader worker processes per process of the run (they need cores too).
        requested: an explicit count (a command's option); wins over everything.
        processes: processes of the run on this machine (e.g. CPU DDP), sharing the cores.
        affinity: the usable cores (default: this process's `os.sched_getaffinity`).
        environ: the environment (default `os.environ`): `EFV2_THREADS`, then `OMP_NUM_THREADS`.

    Raises:
        UsageError: a requested or environment count that is not a positive integer.
    """
    environ = os.environ if environ is None else environ
    cores, workers, processes = usable_cores(affinity), max(0, int(workers)), max(1, int(processes))
    for source, value in (("option", _count(requested, "--threads") if requested is not None else None),
                          (THREADS_ENV, _count(environ.get(THREADS_ENV), THREADS_ENV)),
                          ("OMP_NUM_THREADS", _count(environ.get("OMP_NUM_THREADS"), "OMP_NUM_THREADS"))):
        if value is not None:
            return ThreadChoice(value, cores, workers, processes, source)
    return ThreadChoice(max(1, cores // processes - workers), cores, workers, processes, "cores")


def set_cpu_threads(workers: int = 0, requested: int | None = None, processes: int = 1,
                    override: str | None = "--threads N", announce: bool = True) -> ThreadChoice:
    """Apply `choose_threads(...)` to torch (`torch.set_num_threads`) and print its line once per
    process and count (`announce`); returns the choice. `override` is the option named in the line.
    An explicit `requested` count is also put into `EFV2_THREADS`, so that the runs a command starts
    in its own process (the classification CLI) or as child processes keep it."""
    global _announced
    import torch

    choice = choose_threads(workers, requested, processes)
    if choice.source == "option":
        os.environ[THREADS_ENV] = str(choice.threads)
    torch.set_num_threads(choice.threads)
    if announce and _announced != choice.threads:
        print(choice.line(override), flush=True)
        _announced = choice.threads
    return choice
