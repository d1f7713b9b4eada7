"""Write WebDataset shards from a folder in the ImageNet layout, for `--data.source wds:OUT`.

    python tools/make_shards.py ROOT OUT [--shard-size 1000] [--seed 0] [--splits train val]

ROOT/train/<class>/<image> and ROOT/val/<class>/<image> become OUT/train-000000.tar, ... and
OUT/val-000000.tar, ... (webdataset's ShardWriter; each image's bytes as they are, its class index
and a JSON with its class and path), with timm's OUT/_info.json (samples per shard and the class
names). Training images are shuffled across shards (seeded); `--shard-size` images per shard.
Then: `python -m classification fit --config ... --data.source wds:OUT`.
"""
from __future__ import annotations

import sys
from pathlib import Path

from _cli import ArgumentParser, positive_int, run


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="make_shards", description=__doc__)
    parser.add_argument("root", type=Path, help="ImageNet-layout folder (ROOT/train/<class>/*, ROOT/val/<class>/*)")
    parser.add_argument("out", type=Path, help="new folder for the shards")
    parser.add_argument("--shard-size", type=positive_int, default=1000, metavar="N", help="images per shard")
    parser.add_argument("--seed", type=int, default=0, help="order of the training images across shards")
    parser.add_argument("--splits", nargs="+", default=["train", "val"], help="split folders (the first is shuffled)")
    args = parser.parse_args(argv)
    from classification.sources import write_shards
    info = write_shards(args.root, args.out, args.shard_size, args.seed, tuple(args.splits))
    for split, facts in info["splits"].items():
        print(f"make_shards: {split}: {facts['num_samples']} images in {len(facts['filenames'])} shards "
              f"({args.out}/{split}-*.tar)")
    print(f"make_shards: {len(info['label_names'])} classes; train with --data.source wds:{args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run(main, "make_shards"))
