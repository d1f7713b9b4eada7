"""Image folders, Lightning-free: reading images, the ImageNet folder layout, the eval transform.

The one reader of image files for every package (the classification datamodule and prediction,
int8 calibration and the top-1 of exported models):

- `load_rgb`: any image file as 8-bit RGB (grayscale, CMYK, palette, alpha converted; 16/32-bit
  scaled, not clipped); `READ_ERRORS` are what a damaged or truncated file raises;
- the layout `ROOT/<split>/<class>/<image>`: `class_folders`, `find_classes`, `image_files`,
  `scan_split` (class indices follow the sorted class folder names, as torchvision's
  ImageFolder); a folder that does not fit is a `DataError` saying what to fix;
- `ImageFolderDataset` (a torch Dataset that skips unreadable files, with seeded augmentation),
  `collate_skip_bad` and `seeded`;
- `data_config` and `eval_transform`: the evaluation transform of a model, from its timm
  `pretrained_cfg` (`timm.data.resolve_model_data_config`), so that every place that evaluates
  or calibrates a model prepares images alike.

Depends on torch, timm, PIL and numpy (and `backbones.errors`), never on Lightning.
"""
from __future__ import annotations

import multiprocessing
import random
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset, default_collate

from backbones.errors import EfficientFormerV2Error

__all__ = ["DataError", "UnreadableImageWarning", "IMAGE_EXTENSIONS", "READ_ERRORS", "load_rgb", "is_image",
           "class_folders", "find_classes",
           "image_files", "scan_split", "ImageFolderDataset", "collate_skip_bad", "seeded", "DATA_CONFIG_KEYS",
           "data_config", "eval_transform"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
READ_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)  # a damaged or truncated file


class DataError(EfficientFormerV2Error, ValueError):
    """The data folder does not have the expected layout; the message says what to fix."""


class UnreadableImageWarning(RuntimeWarning):
    """An image file, a shard's member or the rest of a damaged shard that could not be read and
    was skipped. Shown as one line, `warning: skipped ...: ERROR`, without the source line Python
    prints for other warnings (it would point into the data loader, not at the file)."""


def _format_warning(message, category, filename, lineno, line=None, _default=warnings.formatwarning) -> str:
    if isinstance(category, type) and issubclass(category, UnreadableImageWarning):
        return f"warning: {message}\n"
    return _default(message, category, filename, lineno, line)


# Only this project's category is formatted differently. (With a replaced formatwarning Python
# no longer adds tracemalloc's "Object allocated at" lines to ResourceWarnings.)
warnings.formatwarning = _format_warning


# --------------------------------------------------------------------------------------------
# Reading images
# --------------------------------------------------------------------------------------------
def load_rgb(path: str | Path) -> Image.Image:
    """Open an image as 8-bit RGB: grayscale, CMYK, palette, alpha and 16/32-bit images are
    converted (high bit depths are scaled, not clipped). Raises one of `READ_ERRORS` on bad files."""
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


def is_image(path: Path) -> bool:
    """Whether `path`'s suffix is one of `IMAGE_EXTENSIONS` (any case)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS


# --------------------------------------------------------------------------------------------
# The folder layout ROOT/<split>/<class>/<image>
# --------------------------------------------------------------------------------------------
def class_folders(split: str | Path) -> list[str]:
    """Sorted class folder names of one split folder (hidden ones skipped); [] when there is none."""
    split = Path(split)
    if not split.is_dir():
        return []
    return sorted(p.name for p in split.iterdir() if p.is_dir() and not p.name.startswith("."))


def find_classes(folder: Path) -> list[str]:
    """Sorted class folder names of one split; fails with a message saying what to fix."""
    if not folder.is_dir():
        raise DataError(f"data folder {str(folder)!r} does not exist: pass --data.root pointing at a "
                        "folder in the ImageNet layout (ROOT/train/<class>/*.JPEG, ROOT/val/<class>/*.JPEG); "
                        "a toy set is made by `python tools/make_toy_data.py --task cls --out DIR`")
    classes = class_folders(folder)
    if not classes:
        raise DataError(f"{str(folder)!r} has no class folders: expected {folder}/<class>/<image> "
                        "(the ImageNet folder layout)")
    return classes


def image_files(folder: str | Path) -> list[Path]:
    """Image files under `folder`, searched recursively, sorted."""
    return sorted(p for p in Path(folder).rglob("*") if is_image(p) and p.is_file())


def scan_split(folder: Path, class_to_idx: dict[str, int]) -> list[tuple[str, int]]:
    """(path, class index) of every image of a split, sorted; every class folder must hold images."""
    classes = find_classes(folder)
    unknown = [c for c in classes if c not in class_to_idx]
    if unknown:
        raise DataError(f"{folder} has class folders that the training split does not have: "
                        f"{', '.join(unknown[:10])}; both splits must use the same class names")
    samples = []
    for name in classes:
        files = image_files(folder / name)
        if not files:
            raise DataError(f"class folder {str(folder / name)!r} holds no images (extensions "
                            f"{', '.join(IMAGE_EXTENSIONS)}): add its images or delete the folder")
        samples += [(str(p), class_to_idx[name]) for p in files]
    return samples


# --------------------------------------------------------------------------------------------
# Dataset, collate, seeding
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

    Indices are ints, or (index, seed, epoch) tuples from a seeded sampler: then the transform's
    randomness is seeded from them, so augmentation does not depend on workers or history.

    Args:
        samples: (image path, class index) pairs.
        transform: applied to each RGB image.
        classes: class names, by index.
        with_paths: also yield each image's path (prediction output names its images).
        warn: warn about each unreadable file (they are counted in `num_skipped` either way).
    """

    def __init__(self, samples: Sequence[tuple[str, int]], transform: Callable | None = None,
                 classes: Sequence[str] = (), with_paths: bool = False, warn: bool = True) -> None:
        self.samples = list(samples)
        self.targets = [t for _, t in self.samples]
        self.classes = list(classes)
        self.transform = transform
        self.with_paths = with_paths
        self.warn = warn
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
        except READ_ERRORS as e:
            with self._skipped.get_lock():
                self._skipped.value += 1
            if self.warn:
                warnings.warn(f"skipped unreadable image {path}: {type(e).__name__}: {e}", UnreadableImageWarning,
                              stacklevel=2)
            return None
        if self.transform is not None:
            if seed is None:
                img = self.transform(img)
            else:
                with seeded(seed):
                    img = self.transform(img)
        return (img, target, path) if self.with_paths else (img, target)


def collate_skip_bad(batch: list[tuple[Any, ...] | None]) -> tuple[Any, ...] | None:
    """`default_collate` without the samples that failed to load (None when all failed); paths,
    where the dataset yields them, become a list of strings."""
    batch = [b for b in batch if b is not None]
    return default_collate(batch) if batch else None


# --------------------------------------------------------------------------------------------
# The evaluation transform
# --------------------------------------------------------------------------------------------
DATA_CONFIG_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")


def data_config(model: nn.Module, size: int | tuple[int, int] | None = None) -> dict[str, Any]:
    """timm's data configuration of `model` (`timm.data.resolve_model_data_config`: its
    `pretrained_cfg`'s input size, interpolation, crop and normalisation), with the input size
    `size` (an int for a square, or (height, width)) where given, e.g. an export's size."""
    from timm.data import resolve_model_data_config
    config = resolve_model_data_config(model)
    if size is not None:
        h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        config["input_size"] = (3, h, w)
    return {k: config[k] for k in DATA_CONFIG_KEYS if k in config}


def eval_transform(config: Mapping[str, Any], normalize: bool = True) -> Callable[[Image.Image], torch.Tensor]:
    """RGB image -> (3, H, W) float tensor: timm's evaluation transform of a data configuration
    (`data_config`, or a datamodule's): resize to input size / crop_pct, centre crop, and the
    config's mean/std; without `normalize` the tensor stays in [0, 1] (for graphs that normalise
    inside, `deploy.models.ImageInput`)."""
    from timm.data import create_transform
    config = dict(config)
    if not normalize:
        config.update(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    return create_transform(**config, is_training=False)
