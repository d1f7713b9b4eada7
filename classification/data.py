"""ImageNet folder-layout data for Lightning: `ROOT/train/<class>/*`, `ROOT/val/<class>/*`.

`ImageNetDataModule` builds timm's train and eval transforms (`timm.data.create_transform`),
reads images with the project's image-folder reader (`imagefolder`: grayscale, CMYK, palette,
16-bit converted to 8-bit RGB; unreadable, truncated or empty files skipped with a warning naming
them and counted), and shuffles with a seeded sampler whose per-sample augmentation randomness
depends only on (seed, epoch, index), so a run is reproducible whatever the number of workers and
can resume mid-epoch.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from lightning.pytorch import LightningDataModule
from timm.data import DEFAULT_CROP_PCT, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
from torch.utils.data import DataLoader, IterableDataset

import imagefolder
from imagefolder import DataError, ImageFolderDataset, collate_skip_bad, find_classes, scan_split

from .image_files import predict_dataset, predict_samples
from .loaders import ResumableDataLoader, SeededSampler

__all__ = ["ImageNetDataModule"]


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
                 crop_pct: float = DEFAULT_CROP_PCT, interpolation: str = "bicubic",
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

    def data_config(self) -> dict[str, Any]:
        """The evaluation data configuration of this run, in the keys of timm's
        `resolve_model_data_config` (`imagefolder.data_config` gives a model's)."""
        h = self.hparams
        return {"input_size": (3, h.img_size, h.img_size), "interpolation": h.interpolation,
                "mean": tuple(h.mean), "std": tuple(h.std), "crop_pct": h.crop_pct, "crop_mode": "center"}

    def eval_transform(self) -> Callable:
        return imagefolder.eval_transform(self.data_config())

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
