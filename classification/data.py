"""ImageNet folder-layout data for Lightning: `ROOT/train/<class>/*`, `ROOT/val/<class>/*`.

`ImageNetDataModule` builds timm's train and eval transforms (`timm.data.create_transform`),
reads images robustly (grayscale, CMYK, palette, 16-bit converted to 8-bit RGB; unreadable,
truncated or empty files skipped with a warning naming them and counted), and shuffles with a
seeded sampler whose per-sample augmentation randomness depends only on (seed, epoch, index),
so a run is reproducible whatever the number of workers and can resume mid-epoch.
"""
from __future__ import annotations

import multiprocessing
import random
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset, default_collate

__all__ = ["DataError", "IMAGE_EXTENSIONS", "ImageNetDataModule", "ImageFolderDataset", "ResumableDataLoader",
           "SeededSampler", "collate_skip_bad", "find_classes", "load_rgb", "scan_split", "seeded"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
_READ_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


class DataError(ValueError):
    """The data folder does not have the expected layout; the message says what to fix."""


# --------------------------------------------------------------------------------------------
# Reading images
# --------------------------------------------------------------------------------------------
def load_rgb(path: str | Path) -> Image.Image:
    """Open an image as 8-bit RGB: grayscale, CMYK, palette, alpha and 16/32-bit images are
    converted (high bit depths are scaled, not clipped). Raises OSError/ValueError on bad files."""
    with Image.open(path) as img:
        img.load()
        if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
            arr = np.asarray(img, dtype=np.float64)
            top = 65535.0 if img.mode.startswith("I") and arr.max(initial=0) <= 65535 else max(arr.max(initial=0), 1.0)
            arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
            return Image.fromarray(arr, "L").convert("RGB")
        if img.mode == "P" and "transparency" in img.info:
            img = img.convert("RGBA")
        return img.convert("RGB")


def find_classes(folder: Path) -> list[str]:
    """Sorted class folder names of one split; fails with a message saying what to fix."""
    if not folder.is_dir():
        raise DataError(f"data folder {str(folder)!r} does not exist: pass --data.root pointing at a "
                        "folder in the ImageNet layout (ROOT/train/<class>/*.JPEG, ROOT/val/<class>/*.JPEG); "
                        "a toy set is made by `python tools/make_toy_data.py --task cls --out DIR`")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{str(folder)!r} has no class folders: expected {folder}/<class>/<image> "
                        "(the ImageNet folder layout)")
    return classes


def scan_split(folder: Path, class_to_idx: dict[str, int]) -> list[tuple[str, int]]:
    """(path, class index) of every image of a split, sorted; every class folder must hold images."""
    classes = find_classes(folder)
    unknown = [c for c in classes if c not in class_to_idx]
    if unknown:
        raise DataError(f"{folder} has class folders that the training split does not have: "
                        f"{', '.join(unknown[:10])}; both splits must use the same class names")
    samples = []
    for name in classes:
        files = sorted(p for p in (folder / name).rglob("*")
                       if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not files:
            raise DataError(f"class folder {str(folder / name)!r} holds no images (extensions "
                            f"{', '.join(IMAGE_EXTENSIONS)}): add its images or delete the folder")
        samples += [(str(p), class_to_idx[name]) for p in files]
    return samples


# --------------------------------------------------------------------------------------------
# Dataset, sampler, collate
# --------------------------------------------------------------------------------------------
@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed Python, NumPy and torch (CPU) for a block and restore their states afterwards."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed % 2 ** 32)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


class ImageFolderDataset(Dataset):
    """(image, target) pairs from a list of files, or (image, target, path) triples with
    `with_paths`; a bad file yields None (see `collate_skip_bad`).

    Indices are ints, or (index, seed, epoch) tuples from `SeededSampler`: then the transform's
    randomness is seeded from them, so augmentation does not depend on workers or history.

    Args:
        samples: (image path, class index) pairs.
        transform: applied to each RGB image.
        classes: class names, by index.
        with_paths: also yield each image's path (prediction output names its images).
    """

    def __init__(self, samples: Sequence[tuple[str, int]], transform: Callable | None = None,
                 classes: Sequence[str] = (), with_paths: bool = False) -> None:
        self.samples = list(samples)
        self.targets = [t for _, t in self.samples]
        self.classes = list(classes)
        self.transform = transform
        self.with_paths = with_paths
        self._skipped = multiprocessing.Value("i", 0)

    @property
    def num_skipped(self) -> int:
        """Bad files met so far (in all workers)."""
        return int(self._skipped.value)

    def __len__(self) -> int:
        return len(self.samples)

    def read_image(self, path: str) -> Image.Image:
        """The RGB image of a sample (`load_rgb` of its file; other sources read their own)."""
        return load_rgb(path)

    def __getitem__(self, index: int | tuple[int, int, int]) -> tuple[Any, ...] | None:
        seed = None
        if isinstance(index, tuple):
            index, base, epoch = index
            seed = int(np.random.SeedSequence([base, epoch, index]).generate_state(1)[0])
        path, target = self.samples[index]
        try:
            img = self.read_image(path)
        except _READ_ERRORS as e:
            with self._skipped.get_lock():
                self._skipped.value += 1
            warnings.warn(f"skipped unreadable image {path}: {type(e).__name__}: {e}", RuntimeWarning,
                          stacklevel=2)
            return None
        if self.transform is not None:
            if seed is None:
                img = self.transform(img)
            else:
                with seeded(seed):
                    img = self.transform(img)
        return (img, target, path) if self.with_paths else (img, target)


class SeededSampler(DistributedSampler):
    """`DistributedSampler` (also for one process) that yields (index, seed, epoch) for
    `ImageFolderDataset` and can start mid-epoch (`start_batch`, used when resuming)."""

    def __init__(self, dataset: Dataset, batch_size: int, num_replicas: int = 1, rank: int = 0,
                 shuffle: bool = True, seed: int = 0, drop_last: bool = False) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                         drop_last=drop_last)
        self.batch_size = batch_size
        self.start_batch = 0

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.start_batch = 0
        super().set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        indices = list(super().__iter__())
        for i in indices[self.start_batch * self.batch_size:]:
            yield i, self.seed, self.epoch


class ResumableDataLoader(DataLoader):
    """Training DataLoader over a `SeededSampler` that Lightning saves in checkpoints
    (`state_dict`/`load_state_dict`), so `fit --ckpt_path` resumes mid-epoch on the next batch.

    A position at the end of an epoch (every batch consumed) is stored as the start of the next
    epoch: the trainer builds the first iterator of a resumed run before it names the epoch, and
    workers fetch from it at once, so the sampler must already stand where training goes on.

    Args:
        position: returns how many batches of the current epoch the training loop has consumed
            (prefetched batches do not count); the DataModule passes the trainer's progress.
        epoch_batches: returns how many batches an epoch trains (the trainer's count, which
            `limit_train_batches` may cut); by default the loader's length.
    """

    def __init__(self, *args: Any, position: Callable[[], int] | None = None,
                 epoch_batches: Callable[[], float] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.position = position
        self.epoch_batches = epoch_batches

    def state_dict(self) -> dict[str, int]:
        done = self.position() if self.position is not None else 0
        epoch = int(self.sampler.epoch)
        length = self.epoch_batches() if self.epoch_batches is not None else len(self)
        if done >= min(length, len(self)):  # the epoch is over: go on with the next one
            epoch, done = epoch + 1, 0
        return {"epoch": epoch, "batches_done": int(done)}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        epoch, done = int(state_dict["epoch"]), int(state_dict["batches_done"])
        if done >= len(self):  # an epoch's end stored as its last position: the next epoch
            epoch, done = epoch + 1, 0
        self.sampler.set_epoch(epoch)
        self.sampler.start_batch = done


def collate_skip_bad(batch: list[tuple[Any, ...] | None]) -> tuple[Any, ...] | None:
    """`default_collate` without the samples that failed to load (None when all failed); paths,
    where the dataset yields them, become a list of strings."""
    batch = [b for b in batch if b is not None]
    return default_collate(batch) if batch else None


# --------------------------------------------------------------------------------------------
# DataModule
# --------------------------------------------------------------------------------------------
class ImageNetDataModule(LightningDataModule):
    """ImageNet-1K (or any data in its folder layout) for classification.

    The constructor is stable API (the supernet search reuses it); its arguments are the
    `data:` keys of the classification configs.

    Args:
        root: data root holding `train_dir` and `val_dir` (for `source` folder).
        train_dir, val_dir: split folders under root, each `<class>/<image>` (for wds: the shard
            name prefixes or patterns, see `classification.sources`).
        test_dir: split for `test` (default: val_dir).
        predict_dir: images for `predict` (default: val_dir): a split in class folders, or any
            folder of images, an image file or a text file listing images
            (`classification.image_files`), under root or absolute; its batches also carry the
            image paths, which the prediction writer puts next to the predicted classes.
        img_size: training crop and evaluation side (square).
        batch_size: per-device training batch size (the global batch is this times devices,
            nodes and gradient accumulation).
        eval_batch_size: per-device batch size for val/test/predict (default: batch_size).
        num_workers: DataLoader worker processes.
        crop_pct: evaluation centre-crop fraction (resize to img_size / crop_pct, crop img_size).
        interpolation: resize interpolation ("bicubic", "bilinear", ...).
        scale, ratio: RandomResizedCrop area and aspect ranges.
        hflip: horizontal flip probability.
        vflip: vertical flip probability.
        auto_augment: timm auto-augment policy, e.g. "rand-m9-mstd0.5-inc1" (None: off).
        color_jitter: colour jitter strength (timm ignores it when a RandAugment policy is set,
            as in DeiT).
        re_prob, re_mode, re_count: random erasing probability, fill mode and count.
        mean, std: normalisation.
        seed: shuffling and augmentation seed (per epoch and sample).
        pin_memory: pin host memory (useful on GPUs).
        persistent_workers: keep workers alive between epochs.
        drop_last: drop the last incomplete training batch.
        source: where the data is: "folder" (root in the ImageNet layout), "hf:NAME_OR_PATH" (a
            `datasets` DatasetDict) or "wds:DIR_OR_PATTERN" (WebDataset shards); see
            `classification.sources`. root is not needed for the last two.
        image_column, label_column: the columns of an hf: source (None: found by type).
    """

    def __init__(self, root: str | Path | None = None, train_dir: str = "train", val_dir: str = "val",
                 test_dir: str | None = None, predict_dir: str | None = None, img_size: int = 224,
                 batch_size: int = 128, eval_batch_size: int | None = None, num_workers: int = 4,
                 crop_pct: float = 0.875, interpolation: str = "bicubic",
                 scale: tuple[float, float] = (0.08, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
                 hflip: float = 0.5, vflip: float = 0.0, auto_augment: str | None = None,
                 color_jitter: float | None = None, re_prob: float = 0.0, re_mode: str = "pixel",
                 re_count: int = 1, mean: tuple[float, float, float] = IMAGENET_DEFAULT_MEAN,
                 std: tuple[float, float, float] = IMAGENET_DEFAULT_STD, seed: int = 0,
                 pin_memory: bool = False, persistent_workers: bool = False, drop_last: bool = True,
                 source: str = "folder", image_column: str | None = None, label_column: str | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        for name in ("img_size", "batch_size", "eval_batch_size"):  # checked before any run folder is made
            value = self.hparams[name]
            if value is not None and (not isinstance(value, int) or value < 1):
                raise DataError(f"--data.{name} must be a positive integer, got {value}")
        if num_workers < 0 or not 0 < crop_pct <= 1:
            raise DataError(f"--data.num_workers must be 0 or more and --data.crop_pct in (0, 1], got "
                            f"{num_workers} and {crop_pct}")
        self.root = Path(root) if root is not None else None
        self.source = None
        if source != "folder":  # hf: or wds: (classification.sources); anything else is a DataError there
            from .sources import open_source
            self.source = open_source(source, train_dir, val_dir, image_column, label_column)
            self.classes = self.source.classes
        elif self.root is None:
            raise DataError("pass --data.root DIR, a folder in the ImageNet layout (DIR/train/<class>/*.JPEG, "
                            "DIR/val/<class>/*.JPEG), or another --data.source (hf:NAME_OR_PATH, wds:DIR_OR_PATTERN)")
        elif not self.root.is_dir():
            raise DataError(f"data root {str(self.root)!r} does not exist: pass --data.root pointing at a "
                            f"folder with {train_dir}/ and {val_dir}/ in the ImageNet layout "
                            "(<split>/<class>/<image>); a toy set is made by "
                            "`python tools/make_toy_data.py --task cls --out DIR`")
        if self.source is None:
            self.classes = find_classes(self.root / train_dir)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        if predict_dir is not None:  # a predict path without images fails now, before anything is written
            from .image_files import predict_samples
            predict_samples(self._folder(predict_dir), self.class_to_idx)
        self.datasets: dict[str, ImageFolderDataset] = {}
        self._train_loader: ResumableDataLoader | None = None
        self._resume: dict[str, int] | None = None

    @property
    def num_classes(self) -> int:
        """Number of class folders in the training split."""
        return len(self.classes)

    @property
    def num_skipped(self) -> int:
        """Unreadable images skipped so far, over all splits."""
        return sum(d.num_skipped for d in self.datasets.values())

    def train_transform(self) -> Callable:
        h = self.hparams
        return create_transform(h.img_size, is_training=True, scale=tuple(h.scale), ratio=tuple(h.ratio),
                                hflip=h.hflip, vflip=h.vflip, color_jitter=h.color_jitter,
                                auto_augment=h.auto_augment, interpolation=h.interpolation,
                                mean=tuple(h.mean), std=tuple(h.std), re_prob=h.re_prob, re_mode=h.re_mode,
                                re_count=h.re_count)

    def eval_transform(self) -> Callable:
        h = self.hparams
        return create_transform(h.img_size, is_training=False, interpolation=h.interpolation,
                                crop_pct=h.crop_pct, mean=tuple(h.mean), std=tuple(h.std))

    def _folder(self, name: str) -> Path:
        """A split folder or predict path: under root, or as given without one."""
        return self.root / name if self.root is not None else Path(name)

    def _placement(self) -> tuple[int, int]:
        """(processes, this one's rank) of the run."""
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def _dataset(self, split: str) -> ImageFolderDataset:
        if split not in self.datasets:
            h = self.hparams
            folder = {"train": h.train_dir, "val": h.val_dir, "test": h.test_dir or h.val_dir,
                      "predict": h.predict_dir or h.val_dir}[split]
            transform = self.train_transform() if split == "train" else self.eval_transform()
            if self.source is not None and not (split == "predict" and h.predict_dir):
                self.datasets[split] = self.source.dataset(split, transform, with_paths=split == "predict")
            elif split == "predict":
                from .image_files import predict_dataset
                self.datasets[split] = predict_dataset(self._folder(folder), self.class_to_idx, transform, self.classes)
            else:
                self.datasets[split] = ImageFolderDataset(scan_split(self.root / folder, self.class_to_idx),
                                                          transform, self.classes)
        return self.datasets[split]

    def setup(self, stage: str | None = None) -> None:
        splits = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",),
                  "predict": ("predict",), None: ("train", "val")}[stage]
        for split in splits:
            self._dataset(split)

    def _loader_kwargs(self) -> dict[str, Any]:
        h = self.hparams
        return dict(num_workers=h.num_workers, collate_fn=collate_skip_bad, pin_memory=h.pin_memory,
                    persistent_workers=h.persistent_workers and h.num_workers > 0)

    def _training_position(self) -> int:
        """Batches of the current epoch the trainer's fit loop has consumed."""
        return self.trainer.fit_loop.epoch_loop.batch_progress.current.processed

    def _epoch_batches(self) -> float:
        """Batches per training epoch as the trainer counts them (inf before it knows)."""
        return self.trainer.num_training_batches

    def train_dataloader(self) -> ResumableDataLoader:
        trainer = self.trainer
        replicas, rank = self._placement()
        dataset = self._dataset("train")
        h = self.hparams
        if isinstance(dataset, IterableDataset):  # shards, read in order: the stream holds its position
            from .sources import ShardLoader
            dataset.configure(rank, replicas, h.batch_size, h.drop_last, h.seed)
            loader_class, placement = ShardLoader, {}
        else:
            loader_class, placement = ResumableDataLoader, {"sampler": SeededSampler(
                dataset, h.batch_size, num_replicas=replicas, rank=rank, shuffle=True, seed=h.seed,
                drop_last=h.drop_last)}
        loader = loader_class(dataset, batch_size=h.batch_size, drop_last=h.drop_last, **placement,
                              position=self._training_position if trainer is not None else None,
                              epoch_batches=self._epoch_batches if trainer is not None else None,
                              **self._loader_kwargs())
        if self._resume is not None:
            loader.load_state_dict(self._resume)
            self._resume = None
        self._train_loader = loader
        return loader

    def state_dict(self) -> dict[str, int]:
        """The training position within its epoch; Lightning stores it in checkpoints."""
        return self._train_loader.state_dict() if self._train_loader is not None else {}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Resume at a stored position: Lightning restores the DataModule before it builds the
        training DataLoader, which then starts on the next unseen batch of that epoch."""
        self._resume = dict(state_dict) if state_dict else None

    def _eval_loader(self, split: str) -> DataLoader:
        dataset = self._dataset(split)
        batch_size = self.hparams.eval_batch_size or self.hparams.batch_size
        if isinstance(dataset, IterableDataset):  # shards: each rank keeps its share of the images
            replicas, rank = self._placement()
            dataset.configure(rank, replicas, batch_size, False, self.hparams.seed)
        return DataLoader(dataset, batch_size=batch_size, shuffle=False, **self._loader_kwargs())

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader("predict")
