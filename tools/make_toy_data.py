"""Generate small deterministic data sets in the real datasets' layouts (no downloads).

    python tools/make_toy_data.py --task cls|det|seg --out DIR [--seed 0]

cls: ImageNet folder layout; det: COCO 2017 layout with polygon/RLE masks; seg: ADE20K layout.
"""
from __future__ import annotations

import argparse
from pathlib import Path


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
        raise ValueError(f"unknown task {task!r}: use cls, det or seg")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True, choices=["cls", "det", "seg"])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(make_toy_data(args.task, args.out, args.seed))


if __name__ == "__main__":
    main()
