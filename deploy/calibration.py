"""Images of an ImageNet-layout folder for int8 calibration and for the top-1 of exported models.

    from deploy.calibration import calibration_images, top1_accuracy
    images = calibration_images("data/toy_cls", (64, 64), count=32)  # list of (1, 3, 64, 64)
    acc = top1_accuracy(lambda x: model(x), "data/toy_cls", (64, 64))   # percent, None without val/

Layout: `ROOT/train/<class>/*` (calibration) and `ROOT/val/<class>/*` (top-1); class indices
follow the sorted class folder names, as torchvision's ImageFolder and the classification
datamodule. Images are preprocessed as the exported graphs expect: RGB scaled to [0, 1], resized
and centre-cropped to the export size (timm's evaluation transform: resize to size / 0.875,
bicubic, centre crop), without mean/std normalisation (`deploy.models.ImageInput` does it inside
the graph).
"""
from __future__ import annotations

import random
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from PIL import Image

__all__ = ["CalibrationError", "IMAGE_SUFFIXES", "CROP_PCT", "calibration_images", "class_names",
           "eval_transform", "image_files", "val_samples", "top1_accuracy"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
CROP_PCT = 0.875  # the evaluation centre crop of the classification datamodule
_READ_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)

Size = tuple[int, int] | int


class CalibrationError(ValueError):
    """The calibration or evaluation folder cannot be used; the message says what to fix."""


def _hw(size: Size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def eval_transform(size: Size) -> Callable[[Image.Image], torch.Tensor]:
    """PIL image -> (3, H, W) float tensor in [0, 1]: timm's evaluation transform (resize to
    size / `CROP_PCT`, bicubic, centre crop to `size`) with an identity normalisation."""
    from timm.data import create_transform
    return create_transform(_hw(size), is_training=False, interpolation="bicubic", crop_pct=CROP_PCT,
                            mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def class_names(split: str | Path) -> list[str]:
    """Sorted class folder names of one split folder (`ROOT/train` or `ROOT/val`)."""
    split = Path(split)
    if not split.is_dir():
        return []
    return sorted(p.name for p in split.iterdir() if p.is_dir() and not p.name.startswith("."))


def image_files(split: str | Path) -> list[tuple[Path, int]]:
    """(path, class index) of every file with an image suffix under `split/<class>/`, sorted."""
    split = Path(split)
    out = []
    for index, name in enumerate(class_names(split)):
        out += [(p, index) for p in sorted((split / name).rglob("*"))
                if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    return out


def _read(path: Path, transform: Callable[[Image.Image], torch.Tensor]) -> torch.Tensor | None:
    """The preprocessed image as (1, 3, H, W), or None when the file cannot be read."""
    try:
        with Image.open(path) as img:
            img.load()
            return transform(img.convert("RGB")).unsqueeze(0)
    except _READ_ERRORS:
        return None


def calibration_images(root: str | Path, size: Size, count: int = 64, split: str = "train",
                       seed: int = 0) -> list[torch.Tensor]:
    """Up to `count` preprocessed images, each (1, 3, H, W) in [0, 1], drawn with a fixed seed
    from all classes of `root/split` (or of `root` itself when it has no `split` folder but
    holds class folders or images directly).

    Args:
        root: ImageNet-layout folder (`root/train/<class>/*`).
        size: export input size, an int (square) or (height, width).
        count: most images to return. split: the folder under `root` to draw from.
        seed: which images are drawn.
    Raises:
        CalibrationError: the folder does not exist or holds no readable image.
    """
    root = Path(root)
    if not root.is_dir():
        raise CalibrationError(f"calibration folder {str(root)!r} does not exist: pass --calibration DIR, "
                               f"an ImageNet-layout folder with {split}/<class>/<image>")
    folder = root / split if (root / split).is_dir() else root
    files = [p for p, _ in image_files(folder)] or sorted(
        p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    random.Random(seed).shuffle(files)
    transform = eval_transform(size)
    images, unreadable = [], 0
    for path in files:
        if len(images) == count:
            break
        image = _read(path, transform)
        if image is None:
            unreadable += 1
        else:
            images.append(image)
    if not images:
        found = f"{len(files)} image files, none readable" if files else "no image files"
        raise CalibrationError(f"calibration folder {str(folder)!r} holds {found} (suffixes "
                               f"{', '.join(IMAGE_SUFFIXES)}): pass an ImageNet-layout folder with "
                               f"{split}/<class>/<image>, e.g. one made by `python tools/make_toy_data.py "
                               "--task cls --out DIR`")
    if unreadable:
        warnings.warn(f"{unreadable} unreadable image files in {folder} were skipped", stacklevel=2)
    return images


def val_samples(root: str | Path, size: Size, split: str = "val", limit: int | None = None
                ) -> Iterator[tuple[torch.Tensor, int]]:
    """(image (1, 3, H, W) in [0, 1], class index) of every readable image of `root/split`, in
    sorted order (at most `limit`); class indices follow the sorted class folders of `root/train`
    when it exists (the classifier's classes), else those of `root/split`."""
    root = Path(root)
    classes = class_names(root / "train") or class_names(root / split)
    index = {name: i for i, name in enumerate(classes)}
    split_classes = class_names(root / split)
    unknown = [c for c in split_classes if c not in index]
    if unknown:
        raise CalibrationError(f"{root / split} has class folders that {root / 'train'} does not have: "
                               f"{', '.join(unknown[:5])}")
    transform = eval_transform(size)
    n = 0
    for path, label in image_files(root / split):
        if limit is not None and n >= limit:
            return
        image = _read(path, transform)
        if image is not None:
            n += 1
            yield image, index[split_classes[label]]


def top1_accuracy(predict: Callable[[torch.Tensor], torch.Tensor], root: str | Path, size: Size,
                  split: str = "val", limit: int | None = None) -> float | None:
    """Top-1 accuracy in percent of `predict` (image (1, 3, H, W) -> logits (1, classes)) on
    `root/split`, or None when there is no such split or it holds no readable image.

    Raises:
        CalibrationError: the logits have another number of classes than the folder (the
            classifier was trained on other classes).
    """
    classes = class_names(Path(root) / "train") or class_names(Path(root) / split)
    correct = total = 0
    for image, label in val_samples(root, size, split, limit):
        logits = predict(image)
        if logits.shape[-1] != len(classes):
            raise CalibrationError(f"the model has {logits.shape[-1]} classes, {root} has {len(classes)}: "
                                   "its top-1 needs a classifier trained on the same classes")
        correct += int(int(logits.reshape(-1, logits.shape[-1]).argmax(-1)[0]) == label)
        total += 1
    return 100.0 * correct / total if total else None
