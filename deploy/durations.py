"""How long the documented CPU commands take on this machine: each run as a user runs it, on an
idle machine or beside one busy core (a spinning process pinned to one of the usable cores, as
a laptop with other work has), timed from start to exit.

The records (`tools/time_demos.py --json`) go to `benchmarks/records/` like every benchmark;
`make records` puts them on the records page and writes each command's figures into the docs
where a `<!-- duration: NAME -->...<!-- /duration -->` marker asks for them, so a duration is
never typed by hand.
"""
from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from backbones.errors import FileFormatError, UsageError

from .records import load_average

__all__ = ["COMMANDS", "CONDITIONS", "time_command", "busy_core", "fill_durations", "DURATION_MARKER"]

# the documented CPU commands, by the name the docs' markers use, in the order a user meets them
# (the fine-tuning, detection, segmentation and export demos start from `make demo`'s model)
_PY = sys.executable
COMMANDS: dict[str, list[str]] = {
    "make demo": ["make", "demo"],
    "fit toy.yaml": [_PY, "-m", "classification", "fit", "--config", "configs/classification/toy.yaml",
                     "--data.root", "data/toy_cls"],
    "predict": [_PY, "-m", "classification", "predict", "--ckpt_path", "runs/cls_toy/checkpoints/last.ckpt"],
    "make demo-finetune": ["make", "demo-finetune"],
    "make demo-search": ["make", "demo-search"],
    "make demo-ablate": ["make", "demo-ablate"],
    "make demo-det": ["make", "demo-det"],
    "make demo-seg": ["make", "demo-seg"],
    "make demo-export": ["make", "demo-export"],
    "make demo-edge": ["make", "demo-edge"],
}
CONDITIONS = ("idle", "one busy core")
_OPEN, _CLOSE = "<!-- duration: ", "<!-- /duration -->"
# a marker's content never holds another marker's opening: an unclosed marker is an error, not a
# match that swallows the next one
DURATION_MARKER = re.compile(f"{re.escape(_OPEN)}(?P<name>[^>]+?) -->(?P<text>(?:(?!{re.escape(_OPEN)}).)*?)"
                             f"{re.escape(_CLOSE)}", re.S)


@contextlib.contextmanager
def busy_core() -> Iterator[int]:
    """A process spinning on one of the cores this process may use (the last), for the duration
    of the block; yields the core's number."""
    core = max(os.sched_getaffinity(0))
    spin = f"import os; os.sched_setaffinity(0, {{{core}}})\nwhile True: pass"
    spinner = subprocess.Popen([sys.executable, "-c", spin], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)   # spinning before the command starts
        yield core
    finally:
        spinner.kill()
        spinner.wait()


def time_command(name: str, condition: str = "idle", cwd: str | Path = ".",
                 log: Callable[[str], object] = print) -> dict[str, Any]:
    """Run the documented command `name` (a key of COMMANDS) in `cwd` under `condition` (one of
    CONDITIONS) and return its record: seconds from start to exit, exit status, the last line it
    printed, the usable cores and the load averages (1, 5, 15 min) before and after. Its output is
    passed through.

    Raises UsageError for an unknown name or condition.
    """
    if name not in COMMANDS:
        raise UsageError(f"unknown command {name!r}; choose from {', '.join(COMMANDS)}")
    if condition not in CONDITIONS:
        raise UsageError(f"unknown condition {condition!r}; choose from {', '.join(CONDITIONS)}")
    argv = COMMANDS[name]
    load_before = load_average()
    context = busy_core() if condition == "one busy core" else contextlib.nullcontext()
    lines: list[str] = []
    with context:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            if line.strip():
                lines.append(line.strip())
        status = proc.wait()
        seconds = time.perf_counter() - start
    log(f"time_demos: {name} ({condition}): {seconds:.0f} s, exit status {status}")
    return {"demo": name, "condition": condition, "seconds": round(seconds, 1), "minutes": round(seconds / 60, 1),
            "exit_status": status, "summary": lines[-1] if lines else "",
            "cpu_count": len(os.sched_getaffinity(0)),
            "load_average_before": load_before, "load_average_after": load_average()}


def _sentence(records: Sequence[dict[str, Any]]) -> str:
    """`about 3 min on an idle 2-core CPU, 4 min with one core busy` from a command's successful records."""
    by_condition = {r["condition"]: r for r in records}
    parts = []
    for condition in CONDITIONS:
        r = by_condition.get(condition)
        if r is not None:
            minutes = r["seconds"] / 60
            figure = f"{minutes:.0f} min" if minutes >= 2 else f"{r['seconds']:.0f} s"
            cores = r.get("cpu_count", "?")
            parts.append(f"{figure} on an idle {cores}-core CPU" if condition == "idle"
                         else f"{figure} with one core busy")
    return "about " + ", ".join(parts) if parts else ""


def fill_durations(text: str, records: Sequence[dict[str, Any]], where: str = "the text") -> str:
    """`text` with each `<!-- duration: NAME -->...<!-- /duration -->` marker's content replaced
    by the measured durations of NAME ("about 5 min on an idle 2-core CPU, 7 min with one core
    busy"), from the latest successful record of each condition. FileFormatError when a marker
    names a command with no successful record, or is not closed."""
    if text.count(_OPEN) != len(DURATION_MARKER.findall(text)):
        raise FileFormatError(f"{where}: a `{_OPEN}NAME -->` marker is not closed by `{_CLOSE}`")
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    timed = [r for r in records if "demo" in r and "seconds" in r and r.get("date") and r.get("exit_status") == 0]
    for r in sorted(timed, key=lambda r: str(r["date"])):
        latest[r["demo"], r["condition"]] = r

    def replace(match: re.Match) -> str:
        name = match["name"].strip()
        sentence = _sentence([r for (n, _), r in latest.items() if n == name])
        if not sentence:
            raise FileFormatError(f"{where} asks for the duration of {name!r}, which no record in "
                                  f"benchmarks/records has: run python tools/time_demos.py --commands {name!r} "
                                  "--json ...")
        return f"{_OPEN}{name} -->{sentence}{_CLOSE}"

    return DURATION_MARKER.sub(replace, text)
