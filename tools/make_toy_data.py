"""Generate small deterministic data sets in the real datasets' layouts (no downloads).

    python tools/make_toy_data.py --task cls|det|seg --out DIR [--seed 0]

cls: ImageNet folder layout; det: COCO 2017 layout with polygon/RLE masks; seg: ADE20K layout.
"""
from __future__ import annotations

import sys
from pathlib import Path

from _cli import ArgumentParser, UsageError, run


def make_toy_data(task: str, out: Path, seed: int = 0) -> Path:
    """Write the toy set of `task` under `out` and return `out`."""
    if task == "cls":
        from classification.toy_data import make_toy_classification
        make_toy_classification(out, seed=seed)
    elif task == "det":
        from detection.toy_data import make_toy_coco
        make_toy_coco(out, seed=seed)
    elif task == "seg":
        from segmentation.toy_data import make_toy_ade20k
        make_toy_ade20k(out, seed=seed)
    else:
        raise UsageError(f"unknown task {task!r}: use cls, det or seg")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="make_toy_data", description=__doc__)
    parser.add_argument("--task", required=True, choices=["cls", "det", "seg"])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--seed", type=int, default=0, help="non-negative; the same seed writes the same files")
    args = parser.parse_args(argv)
    if args.seed < 0:
        parser.error(f"--seed must be 0 or more, got {args.seed}")
    blocking = next((p for p in (args.out, *args.out.parents) if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise UsageError(f"--out {args.out}: {blocking} is a file, not a folder: choose another --out")
    try:
        print(make_toy_data(args.task, args.out, args.seed))
    except OSError as e:  # a read-only place, a full disk
        raise UsageError(f"cannot write the toy set under {args.out}: {e.strerror or e}"
                         f"{f' ({e.filename})' if e.filename else ''}") from e
    return 0


if __name__ == "__main__":
    sys.exit(run(main, "make_toy_data"))
