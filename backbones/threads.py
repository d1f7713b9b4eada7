"""CPU threads for the machine a command runs on.

torch's intra-op threads and the data loader's worker processes share the cores a process may
use. When together they ask for more than that (torch takes every core by default), they fight
over the cores, and on a machine with other work beside it a CPU run slows down many times. So
every command that trains or evaluates on a CPU picks its intra-op threads with `choose_threads`
and applies them with `set_cpu_threads`, which prints the choice in one line:

    threads: 1 intra-op (2 usable cores, 1 loader worker; EFV2_THREADS=N or --threads N to change)

Whoever asks wins, in this order: an explicit count (a command's `--threads`), the environment
variable `EFV2_THREADS`, `OMP_NUM_THREADS`; otherwise the usable cores (`os.sched_getaffinity`)
less the cores other processes keep busy when the command starts (`busy_cores`: a short sample
of /proc/stat, less this process's own CPU time), less the loader workers, divided among the
processes of the run, and at least one. Threads that wait for a core another process holds wait
at every operator: on two cores with one busy, two intra-op threads train three times slower than
one.
Depends on torch only (imported when the threads are applied).
"""
from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass

from .errors import UsageError

__all__ = ["THREADS_ENV", "ThreadChoice", "usable_cores", "busy_cores", "choose_threads", "set_cpu_threads"]

#: the environment variable that sets the intra-op threads of every command
THREADS_ENV = "EFV2_THREADS"

_announced: int | None = None  # the count last printed in this process: in-process runs say it once
_BUSY_SAMPLE_S = 0.25
_BUSY_KEEP_S = 60.0  # a process that chooses again within this long reuses its sample
_busy_sampled: tuple[float, frozenset[int], int] | None = None  # (when, cores, busy)


@dataclass(frozen=True)
class ThreadChoice:
    """Intra-op threads and why: `source` is "option", THREADS_ENV, "OMP_NUM_THREADS" or "cores"."""

    threads: int
    cores: int
    workers: int
    processes: int
    source: str
    busy: int = 0  # usable cores other processes kept busy when the choice was made

    def line(self, override: str | None = None) -> str:
        """The one line a command prints; `override` names how to change it besides the variable."""
        how = f"{THREADS_ENV}=N" + (f" or {override}" if override else "")
        if self.source == "cores":
            why = (f"{self.cores} usable core{'s' * (self.cores != 1)}"
                   + (f", {self.busy} busy with other work" if self.busy else "")
                   + f", {self.workers} loader worker{'s' * (self.workers != 1)}"
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


def _cpu_ticks(cores: frozenset[int]) -> tuple[int, int] | None:
    """(busy, all) clock ticks of `cores` since boot, from /proc/stat; None where it is not readable."""
    busy = total = 0
    try:
        with open("/proc/stat") as stat:
            for line in stat:
                name, *fields = line.split()
                if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cores:
                    continue
                ticks = [int(f) for f in fields[:8]]  # user nice system idle iowait irq softirq steal
                busy += sum(ticks) - ticks[3] - ticks[4]
                total += sum(ticks)
    except (OSError, ValueError, IndexError):
        return None
    return busy, total


def busy_cores(affinity: set[int] | None = None, sample_s: float = _BUSY_SAMPLE_S) -> int:
    """Whole cores of `affinity` (default: this process's) that other processes keep busy now:
    their busy time over a `sample_s` sample of /proc/stat less this process's own CPU time, in
    whole cores (0.6 of a core counts as one). 0 where /proc/stat cannot be read (not Linux). A
    process that asks again within a minute for the same cores gets the same answer unsampled."""
    global _busy_sampled
    try:
        cores = frozenset(os.sched_getaffinity(0) if affinity is None else affinity)
    except (AttributeError, OSError):
        return 0
    now = time.monotonic()
    if _busy_sampled is not None and _busy_sampled[1] == cores and now - _busy_sampled[0] < _BUSY_KEEP_S:
        return _busy_sampled[2]
    first, own_first = _cpu_ticks(cores), sum(os.times()[:2])
    if first is None:
        return 0
    time.sleep(sample_s)
    last, own_last = _cpu_ticks(cores), sum(os.times()[:2])
    if last is None or last[1] <= first[1]:
        return 0
    # busy share of the sampled ticks, in cores, less what this process used meanwhile
    elapsed_cores = (last[1] - first[1]) / len(cores)   # ticks per core over the sample
    others = (last[0] - first[0]) / elapsed_cores - (own_last - own_first) / sample_s
    busy = min(len(cores), max(0, int(others + 0.4)))
    _busy_sampled = (now, cores, busy)
    return busy


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
                   affinity: set[int] | None = None, environ: Mapping[str, str] | None = None,
                   busy: int | None = None) -> ThreadChoice:
    """The intra-op threads for a CPU run.

    Args:
        workers: data-loader worker processes per process of the run (they need cores too).
        requested: an explicit count (a command's option); wins over everything.
        processes: processes of the run on this machine (e.g. CPU DDP), sharing the cores.
        affinity: the usable cores (default: this process's `os.sched_getaffinity`).
        environ: the environment (default `os.environ`): `EFV2_THREADS`, then `OMP_NUM_THREADS`.
        busy: usable cores other processes keep busy (default: measured, `busy_cores`).

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
    busy = busy_cores(affinity) if busy is None else max(0, int(busy))
    free = max(1, cores - busy)
    return ThreadChoice(max(1, free // processes - workers), cores, workers, processes, "cores", busy)


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
