"""Where the classification data comes from: `--data.source folder | hf:NAME_OR_PATH | wds:DIR_OR_PATTERN`.

- `folder` (the default): the ImageNet folder layout under `--data.root` (`classification.data`).
- `hf:NAME_OR_PATH`: a Hugging Face `datasets` DatasetDict, saved with `save_to_disk` (a path) or
  in the `datasets` cache (a name such as `imagenet-1k`, read offline when cached). Splits
  `train` and `validation` (or `val`; `test` for `test` when it has one). The image column is the
  one of `datasets.Image` type and the label column the one of `ClassLabel` type (whose names are
  the class names), unless `--data.image_column` / `--data.label_column` name them; what
  `load_dataset("imagefolder", data_dir=ROOT)` gives works as it is. Random access: the same
  seeded sampler as a folder (`SeededSampler`), so DDP, reproducibility and exact mid-epoch resume
  are the folder's.
- `wds:DIR_OR_PATTERN`: WebDataset tar shards, a folder holding `train-*.tar` and `val-*.tar`
  (the split names are `--data.train_dir` / `--data.val_dir`, which may also be brace patterns
  relative to the folder, e.g. `imagenet-train-{000000..001281}.tar`), or a brace pattern of the
  training shards whose file name holds the split name (`DIR/train-{000..099}.tar`: the
  validation shards are the same name with `val`, any numbers). `tools/make_shards.py ROOT OUT`
  writes them from a folder, with timm's `_info.json` (sample counts per shard, class names);
  shards without one are counted once by reading their tar headers.

Shards are read in order (`ShardStream`), never by index. Training: every epoch the shard list is
shuffled with the seed and the epoch, each DDP rank reads its own subset of shards (every
`world_size`-th) through a seeded shuffle buffer, and an epoch is `samples // world_size` images
per rank (a rank whose shards hold fewer starts them over, one with more stops early), so every
rank trains the same number of batches and the epoch length is known before it starts. The loader
workers of a rank read the same shards and each decodes only its own batches (the operating
system's page cache serves the repeated reads). Validation, test and predict: every rank reads
all shards in order and keeps every `world_size`-th image (padded by starting over, as
`DistributedSampler` pads), so each image is seen once on one rank.

Augmentation randomness depends only on (seed, epoch, position in the rank's stream), as with a
folder. Resume: a checkpoint stores the position in the epoch (epoch, batches done); resuming
skips the batches already trained without decoding them and continues with the very batches an
uninterrupted run would have seen, provided the number of devices (ranks) is the same (the
number of loader workers may differ). With another number of ranks, it resumes at the same
epoch and batch count, with other images.

A damaged image inside a shard is skipped with a warning naming the shard and the member (as a
damaged file of a folder); a shard that ends early is read up to the damage, with a warning.
Bad input (no such dataset, a dataset without image or label column, a pattern without files,
fewer training shards than ranks) is a `DataError`: one line at the command line, exit status 2.
"""
from __future__ import annotations

import io
import itertools
import json
import multiprocessing
import random
import re
import tarfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from imagefolder import (IMAGE_EXTENSIONS, READ_ERRORS, DataError, ImageFolderDataset, UnreadableImageWarning, load_rgb,
                         seeded)

from .loaders import ResumableDataLoader

__all__ = ["SOURCE_KINDS", "INFO_FILE", "parse_source", "open_source", "HFSource", "HFImageDataset", "ShardSource",
           "ShardStream", "StreamPosition", "ShardLoader", "shard_info", "count_shard", "write_shards"]

SOURCE_KINDS = ("folder", "hf", "wds")
INFO_FILE = "_info.json"  # timm's WebDataset info file: {"splits": {name: {num_samples, filenames, shard_lengths}}}
SHUFFLE_BUFFER = 2000     # samples in the training shuffle buffer of each rank
_IMAGE_SUFFIXES = tuple(e.lstrip(".") for e in IMAGE_EXTENSIONS)


def parse_source(spec: str) -> tuple[str, str]:
    """(kind, location) of a `--data.source` value: ("folder", ""), ("hf", NAME_OR_PATH) or
    ("wds", DIR_OR_PATTERN); a DataError names the accepted forms for anything else."""
    spec = str(spec)
    if spec == "folder":
        return "folder", ""
    kind, _, where = spec.partition(":")
    if kind in ("hf", "wds") and where:
        return kind, where
    raise DataError(f"--data.source {spec!r} is not a data source: pass folder (with --data.root), "
                    "hf:NAME_OR_PATH (a datasets DatasetDict) or wds:DIR_OR_PATTERN (WebDataset shards)")


def open_source(spec: str, train_dir: str = "train", val_dir: str = "val", image_column: str | None = None,
                label_column: str | None = None) -> HFSource | ShardSource:
    """The `hf:` or `wds:` source `spec` names, opened and checked (classes known)."""
    kind, where = parse_source(spec)
    if kind == "hf":
        return HFSource(where, image_column, label_column)
    if kind == "wds":
        return ShardSource(where, train_dir, val_dir)
    raise ValueError("the folder source is read by ImageNetDataModule itself")


# --------------------------------------------------------------------------------------------
# hf: a datasets DatasetDict
# --------------------------------------------------------------------------------------------
class HFImageDataset(ImageFolderDataset):
    """One split of a `datasets` Dataset read like a folder (`ImageFolderDataset`: the same
    seeded transforms, bad images skipped): the images are decoded by `load_rgb` from the
    column's bytes (or file path), so damaged ones are skipped and named (`split[row]`).

    Args:
        table: the split (a `datasets.Dataset`).
        image_column, label_column: its columns.
        split: the split's name (names the rows: `validation[12]`).
        transform, classes, with_paths: as `ImageFolderDataset`.
    """

    def __init__(self, table: Any, image_column: str, label_column: str, split: str,
                 transform: Callable | None = None, classes: Sequence[str] = (), with_paths: bool = False) -> None:
        from datasets import Image as ImageFeature
        targets = [int(t) for t in table[label_column]]
        super().__init__([(f"{split}[{i}]", t) for i, t in enumerate(targets)], transform, classes, with_paths)
        # undecoded: bytes and path, so that a damaged image is one skipped sample, not a crash
        self.table = table.select_columns([image_column]).cast_column(image_column, ImageFeature(decode=False))
        self.image_column = image_column

    def read_image(self, path: str) -> Image.Image:
        row = int(path[path.rindex("[") + 1:-1])
        value = self.table[row][self.image_column] or {}
        data, file = value.get("bytes"), value.get("path")
        if data:
            return load_rgb(io.BytesIO(data))
        if file:
            return load_rgb(file)
        raise ValueError("the row holds no image")


class HFSource:
    """A `datasets` DatasetDict as classification data (see the module docstring).

    Args:
        name: a folder written by `DatasetDict.save_to_disk`, or a dataset name of the `datasets`
            cache (`load_dataset(name)`).
        image_column, label_column: the columns to read (None: found by their feature types).
    """

    kind = "hf"

    def __init__(self, name: str, image_column: str | None = None, label_column: str | None = None) -> None:
        self.name = name
        self.splits = _load_dataset_dict(name)
        train = self.splits.get("train")
        val_name = next((s for s in ("validation", "val") if s in self.splits), None)
        if train is None or val_name is None:
            raise DataError(f"hf:{name} has the splits {', '.join(self.splits) or 'none'}: it needs train and "
                            "validation (or val)")
        self.split_names = {"train": "train", "val": val_name, "test": "test" if "test" in self.splits else val_name,
                            "predict": val_name}
        self.image_column = _find_column(train, image_column, "Image", "image", name)
        self.label_column = _find_column(train, label_column, "ClassLabel", "label", name)
        feature = train.features[self.label_column]
        if hasattr(feature, "names"):
            self.classes = list(feature.names)
        else:  # plain integers: the classes are their values
            labels = train[self.label_column]
            if not labels or min(labels) < 0:
                raise DataError(f"hf:{name}: the label column {self.label_column!r} holds no class indices >= 0")
            self.classes = [str(i) for i in range(int(max(labels)) + 1)]

    def dataset(self, split: str, transform: Callable | None, with_paths: bool = False) -> HFImageDataset:
        """The map-style dataset of `split` ("train", "val", "test" or "predict")."""
        name = self.split_names[split]
        table = self.splits[name]
        for column in (self.image_column, self.label_column):
            if column not in table.column_names:
                raise DataError(f"hf:{self.name}: the split {name} has no column {column!r} (its columns: "
                                f"{', '.join(table.column_names)})")
        return HFImageDataset(table, self.image_column, self.label_column, name, transform, self.classes, with_paths)


def _load_dataset_dict(name: str) -> dict[str, Any]:
    try:
        import datasets
    except ImportError as e:
        raise DataError("--data.source hf:... needs the datasets package (pip install datasets)") from e
    from backbones.hub import quiet_retries
    path = Path(name).expanduser()
    try:
        if path.exists():
            loaded = datasets.load_from_disk(str(path))
        else:
            with quiet_retries():  # an unreachable hub: one line of ours, not one per attempt
                loaded = datasets.load_dataset(name)
    except (FileNotFoundError, ValueError, OSError, ConnectionError) as e:
        where = f"the folder {path}" if path.exists() else f"the dataset {name!r} (not a folder here, and not in the " \
                                                           "datasets cache or reachable)"
        raise DataError(f"hf:{name}: cannot read {where} as a datasets DatasetDict ({' '.join(str(e).split())[:200]}); "
                        "pass a folder written by DatasetDict.save_to_disk or a cached dataset name") from e
    if isinstance(loaded, datasets.Dataset):
        raise DataError(f"hf:{name} is a single Dataset without splits: save a DatasetDict with train and validation "
                        "splits (DatasetDict({'train': ..., 'validation': ...}).save_to_disk(PATH))")
    return dict(loaded)


def _find_column(table: Any, named: str | None, feature_type: str, what: str, source: str) -> str:
    columns = list(table.column_names)
    if named is not None:
        if named not in columns:
            raise DataError(f"hf:{source} has no column {named!r} for the {what}s (its columns: {', '.join(columns)})")
        return named
    found = [c for c in columns if type(table.features[c]).__name__ == feature_type]
    if len(found) != 1:
        option = f"--data.{what}_column"
        why = "no" if not found else f"{len(found)} ({', '.join(found)})"
        raise DataError(f"hf:{source} has {why} {what} column of type {feature_type} (its columns: "
                        f"{', '.join(columns)}): name the {what} column with {option} COLUMN")
    return found[0]


# --------------------------------------------------------------------------------------------
# wds: WebDataset shards
# --------------------------------------------------------------------------------------------
def _expand(pattern: str) -> list[str]:
    """Shard paths of a brace pattern (webdataset's own expansion), a glob or a file."""
    from webdataset.shardlists import expand_urls
    if "{" in pattern:
        return expand_urls(pattern)
    if any(c in pattern for c in "*?["):
        p = Path(pattern)
        return sorted(str(f) for f in p.parent.glob(p.name))
    return [pattern]


def _split_shards(location: str, split: str | None, spec: str) -> list[str]:
    """The shards of one split: `split` is a prefix (`train` -> `train-*.tar`) or a pattern,
    relative to the folder `location`; without `split`, `location` is the pattern itself."""
    if split is None:
        pattern = location
    elif "{" in split or split.endswith(".tar") or any(c in split for c in "*?["):
        pattern = str(Path(location) / split)
    else:
        pattern = str(Path(location) / f"{split}-*.tar")
    shards = _expand(pattern)
    missing = [s for s in shards if not Path(s).is_file()]
    if not shards or len(missing) == len(shards):
        raise DataError(f"wds:{spec}: {pattern} matches no file: pass a folder holding train-*.tar and val-*.tar "
                        "(`python tools/make_shards.py ROOT OUT` writes them) or a brace pattern of existing shards "
                        "such as DIR/train-{000000..000099}.tar")
    if missing:
        raise DataError(f"wds:{spec}: {len(missing)} shard(s) of {pattern} do not exist (first: {missing[0]})")
    return shards


def count_shard(path: str | Path) -> tuple[int, set[int]]:
    """(samples, class indices) of one shard, from its tar headers and `.cls` members (the images
    are not read)."""
    from webdataset.tariterators import base_plus_ext  # how webdataset itself groups members into samples
    keys, labels = set(), set()
    with tarfile.open(path, "r:") as tar:
        for member in tar:
            key, ext = base_plus_ext(member.name) if member.isfile() else (None, None)
            if key is None:
                continue
            keys.add(key)
            if ext == "cls":
                labels.add(int(tar.extractfile(member).read().decode().strip()))
    return len(keys), labels


def shard_info(folder: Path) -> dict[str, Any]:
    """The `_info.json` beside shards (timm's layout), or {}."""
    path = folder / INFO_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise DataError(f"{path} is not readable JSON ({e}): write the shards again with tools/make_shards.py") from e


class ShardSource:
    """WebDataset shards as classification data (see the module docstring).

    Args:
        location: a folder of shards or a pattern of the training shards.
        train_dir, val_dir: the split names (file name prefixes) or patterns in the folder.
    """

    kind = "wds"

    def __init__(self, location: str, train_dir: str = "train", val_dir: str = "val") -> None:
        self.spec = location
        path = Path(location).expanduser()
        self.shards: dict[str, list[str]] = {}
        if path.is_dir():
            self.folder = path
            self.patterns = {"train": (str(path), train_dir), "val": (str(path), val_dir)}
        else:
            self.folder = Path(location.split("{")[0]).parent if "{" in location else path.parent
            name = Path(location).name
            val = re.sub(r"\{[^}]*\}", "*", name.replace(train_dir, val_dir)) if train_dir in name else None
            self.patterns = {"train": (location, None), "val": (str(self.folder / val), None) if val else None}
        self.shards["train"] = _split_shards(*self.patterns["train"], spec=location)
        self.info = shard_info(self.folder)
        counts, labels = self._counts(self.shards["train"], count_labels=True)
        self.lengths = {"train": counts}
        names = self.info.get("label_names")
        if isinstance(names, list) and names:
            self.classes = [str(n) for n in names]
        else:
            self.classes = [str(i) for i in range(max(labels) + 1)] if labels else []
        if not self.classes:
            raise DataError(f"wds:{location}: the training shards hold no labelled sample (.cls members)")

    def _counts(self, shards: list[str], count_labels: bool = False) -> tuple[list[int], set[int]]:
        """Samples per shard: from `_info.json` where it lists the shard, else from its headers."""
        known: dict[str, int] = {}
        for split in (self.info.get("splits") or {}).values():
            for name, n in zip(split.get("filenames", ()), split.get("shard_lengths", ())):
                known[Path(name).name] = int(n)
        counts, labels = [], set()
        need_labels = count_labels and not self.info.get("label_names")
        for shard in shards:
            if Path(shard).name in known and not need_labels:
                counts.append(known[Path(shard).name])
                continue
            try:
                n, found = count_shard(shard)
            except (tarfile.TarError, OSError, ValueError) as e:
                raise DataError(f"wds:{self.spec}: {shard} is not a readable tar shard ({e})") from e
            counts.append(n)
            labels |= found
        return counts, labels

    def split_shards(self, split: str) -> list[str]:
        """The shards of "train", or of "val" (also for test and predict)."""
        split = "train" if split == "train" else "val"
        if split not in self.shards:
            if self.patterns.get(split) is None:
                raise DataError(f"wds:{self.spec}: no validation shards: the training pattern's file name does not "
                                "hold the split name, so the validation shards cannot be found; pass the folder instead")
            self.shards[split] = _split_shards(*self.patterns[split], spec=self.spec)
            self.lengths[split] = self._counts(self.shards[split])[0]
        return self.shards[split]

    def dataset(self, split: str, transform: Callable | None, with_paths: bool = False) -> ShardStream:
        """The stream of `split` ("train", "val", "test" or "predict"); see `ShardStream.configure`."""
        shards = self.split_shards(split)
        key = "train" if split == "train" else "val"
        return ShardStream(shards, self.lengths[key], transform, self.classes, train=split == "train",
                           with_paths=with_paths)


class StreamPosition:
    """Where a `ShardStream` stands: the epoch and the batches of it to skip (a resume). Shared
    with the loader's worker processes; what Lightning's `set_epoch` and `ResumableDataLoader`'s
    state use (the loader's `sampler`). Iterating it gives what an iterable dataset's loader
    expects of its sampler (None, forever)."""

    def __init__(self) -> None:
        self._epoch = multiprocessing.Value("q", 0)
        self._start = multiprocessing.Value("q", 0)

    @property
    def epoch(self) -> int:
        return int(self._epoch.value)

    @property
    def start_batch(self) -> int:
        return int(self._start.value)

    @start_batch.setter
    def start_batch(self, value: int) -> None:
        self._start.value = int(value)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.start_batch = 0
        self._epoch.value = int(epoch)

    def __iter__(self) -> Iterator[None]:
        return itertools.repeat(None)


class ShardStream(IterableDataset):
    """Samples of WebDataset shards, decoded and transformed, with a known length: the image and
    target (and a name with `with_paths`), None for a damaged image (`collate_skip_bad` drops it).

    `configure` tells it the rank, the number of ranks, the batch size, whether the last partial
    batch is dropped and the shuffling and augmentation seed (the DataModule does, from the
    trainer); `position` holds the epoch
    and a resume's batches to skip.

    Args:
        shards: the split's shard paths. lengths: samples per shard.
        transform, classes, with_paths: as `ImageFolderDataset`.
        train: shuffle (shards and a buffer of samples) and split shards across ranks.
    """

    def __init__(self, shards: Sequence[str], lengths: Sequence[int], transform: Callable | None,
                 classes: Sequence[str], train: bool, with_paths: bool = False) -> None:
        super().__init__()
        self.shards, self.lengths = list(shards), list(lengths)
        self.num_samples = int(sum(lengths))
        self.transform, self.classes, self.train, self.with_paths = transform, list(classes), train, with_paths
        self.position = StreamPosition()
        self.rank, self.world, self.batch_size, self.drop_last, self.seed = 0, 1, 1, False, 0
        self._skipped = multiprocessing.Value("i", 0)

    @property
    def num_skipped(self) -> int:
        """Damaged images met so far (in all workers)."""
        return int(self._skipped.value)

    def configure(self, rank: int = 0, world: int = 1, batch_size: int = 1, drop_last: bool = False,
                  seed: int = 0) -> None:
        """The rank's place in the run and the seed; fewer training shards than ranks is a DataError."""
        if self.train and len(self.shards) < world:
            raise DataError(f"{len(self.shards)} training shards for {world} processes: each process reads its own "
                            f"shards; write at least {world} (tools/make_shards.py --shard-size)")
        self.rank, self.world, self.batch_size, self.drop_last, self.seed = rank, world, batch_size, drop_last, seed

    def rank_samples(self) -> int:
        """Samples this rank reads per epoch: training samples // ranks, else every image once
        (ceil(samples / ranks), padded)."""
        if self.train:
            return self.num_samples // self.world
        return -(-self.num_samples // self.world)

    def __len__(self) -> int:
        n = self.rank_samples()
        return n // self.batch_size * self.batch_size if self.drop_last else n

    # -- reading ----------------------------------------------------------------------------
    def _warn_shard(self, exn: Exception) -> bool:
        """webdataset's error handler: a shard that cannot be read on is named and left."""
        warnings.warn(f"skipped the rest of a damaged shard: {' '.join(str(a) for a in exn.args if a)}",
                      UnreadableImageWarning, stacklevel=2)
        return True

    def _samples(self, shards: Sequence[str], shuffle_seed: int | None) -> Iterator[dict]:
        import webdataset as wds
        stream = wds.tarfile_to_samples(handler=self._warn_shard)(iter([{"url": s} for s in shards]))
        if shuffle_seed is not None:
            stream = wds.shuffle(SHUFFLE_BUFFER, min(SHUFFLE_BUFFER, 200), rng=random.Random(shuffle_seed))(stream)
        return stream

    def _rank_stream(self, epoch: int) -> Iterator[dict]:
        """This rank's samples of an epoch, in order, starting over as often as needed."""
        order = list(self.shards)
        random.Random(_seed(self.seed, epoch)).shuffle(order)
        mine = order[self.rank::self.world]  # this rank's shards for the whole epoch
        for rnd in itertools.count():
            if self.train:
                stream = self._samples(mine, _seed(self.seed, epoch, rnd, self.rank + 1))
            else:
                stream = (s for j, s in enumerate(self._samples(self.shards, None)) if j % self.world == self.rank)
            empty = True
            for sample in stream:
                empty = False
                yield sample
            if empty:
                return

    def __iter__(self) -> Iterator[tuple[Any, ...] | None]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        epoch, skip = self.position.epoch, self.position.start_batch
        bs = self.batch_size
        for j, sample in enumerate(itertools.islice(self._rank_stream(epoch), len(self))):
            batch = j // bs
            # batches already trained (a resume) are skipped undecoded; the rest are dealt to the
            # workers in turn from the first one, the order in which the loader collects them
            if batch < skip or (batch - skip) % workers != worker:
                continue
            yield self._decode(sample, epoch, j)

    def _decode(self, sample: dict, epoch: int, index: int) -> tuple[Any, ...] | None:
        key = sample.get("__key__", "?")
        name = f"{sample.get('__url__', '?')}:{key}"
        ext = next((e for e in _IMAGE_SUFFIXES if e in sample), None)
        try:
            if ext is None:
                raise ValueError(f"no image member ({', '.join(k for k in sample if not k.startswith('__'))})")
            name = f"{name}.{ext}"
            img = load_rgb(io.BytesIO(sample[ext]))
            target = int(sample["cls"]) if "cls" in sample else -1
        except (*READ_ERRORS, KeyError) as e:
            with self._skipped.get_lock():
                self._skipped.value += 1
            warnings.warn(f"skipped unreadable image {name}: {type(e).__name__}: {e}", UnreadableImageWarning,
                          stacklevel=2)
            return None
        if self.transform is not None:
            with seeded(_seed(self.seed, epoch, self.rank, index)):
                img = self.transform(img)
        if not self.with_paths:
            return img, target
        meta = sample.get("json")
        if meta:
            try:
                name = json.loads(meta).get("path", name)
            except (ValueError, AttributeError):
                pass
        return img, target, name


def write_shards(root: str | Path, out: str | Path, shard_size: int = 1000, seed: int = 0,
                 splits: Sequence[str] = ("train", "val")) -> dict[str, Any]:
    """Write WebDataset shards of an ImageNet-layout folder: `out/<split>-000000.tar`, ... with
    webdataset's `ShardWriter` (per image: `<key>.<ext>` the file's bytes as they are, `<key>.cls`
    the class index, `<key>.json` its class and path), and timm's `_info.json` (samples per
    shard, and the class names). The training images are shuffled (seeded) across shards, so
    that every shard holds every class; the others keep their order. Files are written in a
    temporary folder beside `out` and moved there at the end: an interrupted run leaves nothing.

    Returns the info dict. Raises DataError for a folder that is not in the layout, or an `out`
    that already holds shards.
    """
    import tempfile
    import webdataset as wds

    from imagefolder import find_classes, scan_split

    root, out = Path(root), Path(out)
    classes = find_classes(root / splits[0])
    class_to_idx = {c: i for i, c in enumerate(classes)}
    if out.exists() and (not out.is_dir() or any(out.glob("*.tar")) or (out / INFO_FILE).exists()):
        raise DataError(f"{out} already holds shards (or is a file): pass a new folder")
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".shards.", dir=out))
    info: dict[str, Any] = {"name": root.name, "label_names": classes, "splits": {}}
    try:
        for split in splits:
            samples = scan_split(root / split, class_to_idx)
            if split == splits[0]:
                random.Random(seed).shuffle(samples)
            names: list[str] = []
            with wds.ShardWriter(str(staging / f"{split}-%06d.tar"), maxcount=shard_size, verbose=0,
                                 post=names.append) as sink:
                for i, (path, target) in enumerate(samples):
                    file = Path(path)
                    ext = file.suffix.lower().lstrip(".")
                    sink.write({"__key__": f"{i:08d}", ext: file.read_bytes(), "cls": target,
                                "json": {"class": classes[target], "path": str(file.relative_to(root))}})
            lengths = [count_shard(n)[0] for n in names]  # as written (ShardWriter also splits by size)
            names = [Path(n).name for n in names]
            info["splits"][split] = {"name": split, "num_samples": len(samples), "filenames": names,
                                     "shard_lengths": lengths}
        (staging / INFO_FILE).write_text(json.dumps(info, indent=1), encoding="utf-8")
        for file in staging.iterdir():
            file.replace(out / file.name)
    finally:
        for file in staging.iterdir():
            file.unlink()
        staging.rmdir()
    return info


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


class ShardLoader(ResumableDataLoader):
    """`ResumableDataLoader` over a `ShardStream`: its position is the stream's (shared with the
    workers), exposed as the loader's sampler, where Lightning sets the epoch."""

    def __init__(self, dataset: ShardStream, **kwargs: Any) -> None:
        super().__init__(dataset, **kwargs)
        # an iterable dataset's loader has a placeholder sampler; the position stands in for it
        object.__setattr__(self, "sampler", dataset.position)
