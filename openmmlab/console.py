"""What tools/mm_train.py and tools/mm_test.py show on the console: little, then one summary line.

mmengine's Runner logs its environment, the whole config and every interval to the console and to
a log file in the work dir. The file keeps all of it; the console keeps the progress lines
(`Epoch(...)`/`Iter(...)`), warnings and errors (`brief_console`), and the tool ends with one line
naming its main metrics and the log file (`summary_line`). `--verbose` shows the full log.
Needs nothing of mmengine itself.
"""
from __future__ import annotations

import contextlib
import io
import re
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, TextIO

__all__ = ["brief_console", "main_metrics", "summary_line"]

# the lines of mmengine's console log worth seeing while a run goes on (and the demos' own lines)
_KEEP = re.compile(r"Epoch\(|Iter\(| - (WARNING|ERROR|CRITICAL) - |Traceback|Error|^demo-")
# the metrics a summary names: COCO's mAP per task, mmseg's mean IoU and accuracies
_MAIN = re.compile(r"(^|/)(bbox_mAP|segm_mAP|mIoU|mAcc|aAcc)$")


class _Brief(io.TextIOBase):
    """A text stream that passes on only the lines `_KEEP` matches."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.pending = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        lines = (self.pending + text).split("\n")
        self.pending = lines.pop()
        for line in lines:
            if _KEEP.search(line):
                self.out.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        self.out.flush()


@contextlib.contextmanager
def brief_console(verbose: bool = False) -> Iterator[None]:
    """Within the block, what Python writes to stdout (mmengine's console log handler, created
    inside it) shows only progress lines, warnings and errors, unless `verbose`."""
    if verbose:
        yield
        return
    with contextlib.redirect_stdout(_Brief(sys.stdout)):
        yield


def main_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The headline metrics of an mmdet/mmseg evaluation (bbox/segm mAP, mIoU, mAcc, aAcc); all
    numeric ones when none of these is there."""
    numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
    main = {k: v for k, v in numeric.items() if _MAIN.search(k)}
    return main or numeric


def summary_line(prog: str, metrics: Mapping[str, Any], log_dir: str | Path | None = None) -> str:
    """`PROG: coco/bbox_mAP 0.312, coco/segm_mAP 0.291 (full log in DIR)` (no metrics: `PROG: done`)."""
    main = main_metrics(metrics)
    text = ", ".join(f"{k} {v:.4g}" for k, v in main.items()) if main else "done, no metrics logged"
    return f"{prog}: {text}" + (f" (full log in {log_dir})" if log_dir else "")
