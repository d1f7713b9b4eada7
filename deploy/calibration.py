"""Images of an ImageNet-layout folder for int8 calibration and for the top-1 of exported models.

    from imagefolder import data_config, eval_transform
    from deploy.calibration import calibration_images, top1_accuracy
    transform = eval_transform(data_config(model, (64, 64)), normalize=False)
    images = calibration_images("data/toy_cls", transform, count=32)   # list of (1, 3, 64, 64)
    acc = top1_accuracy(lambda x: model(x), "data/toy_cls", transform)  # percent, None without val/

Layout: `ROOT/train/<class>/*` (calibration) and `ROOT/val/<class>/*` (top-1); class indices
follow the sorted class folder names, as torchvision's ImageFolder and the classification
datamodule. Images are read by the project's one reader (`imagefolder.load_rgb`) and prepared by
the transform the caller passes: the model's own evaluation transform (`imagefolder.data_config`
of the model, at the export size), without mean/std normalisation where the exported graph
normalises inside (`deploy.models.ImageInput`).
"""
from __future__ import annotations

import random
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from PIL import Image

from imagefolder import READ_ERRORS, DataError, class_folders, image_files, is_image, load_rgb

__all__ = ["CalibrationError", "calibration_images", "labelled_files", "val_samples", "top1_accuracy"]

Transform = Callable[[Image.Image], torch.Tensor]


class CalibrationError(DataError):
    """The calibration or evaluation folder cannot be used; the message says what to fix."""


def labelled_files(split: str | Path) -> list[tuple[Path, int]]:
    """(path, class index) of every image under `split/<class>/`, sorted by class then path."""
    split = Path(split)
    return [(p, index) for index, name in enumerate(class_folders(split)) for p in image_files(split / name)]


def _read(path: Path, transform: Transform) -> torch.Tensor | None:
    """The prepared image as (1, 3, H, W), or None when the file cannot be read."""
    try:
        return transform(load_rgb(path)).unsqueeze(0)
    except READ_ERRORS:
        return None


def calibration_images(root: str | Path, transform: Transform, count: int = 64, split: str = "train",
                       seed: int = 0) -> list[torch.Tensor]:
    """Up to `count` prepared images, each (1, 3, H, W), drawn with a fixed seed from all classes
    of `root/split` (or of `root` itself when it has no `split` folder but holds class folders or
    images directly).

    Args:
        root: ImageNet-layout folder (`root/train/<class>/*`).
        transform: RGB image -> (3, H, W) tensor, the model's evaluation transform.
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
    files = [p for p, _ in labelled_files(folder)] or sorted(
        p for p in folder.iterdir() if is_image(p) and p.is_file())
    random.Random(seed).shuffle(files)
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
        raise CalibrationError(f"calibration folder {str(folder)!r} holds {found}: pass an ImageNet-layout folder "
                               f"with {split}/<class>/<image>, e.g. one made by `python tools/make_toy_data.py "
                               "--task cls --out DIR`")
    if unreadable:
        warnings.warn(f"{unreadable} unreadable image files in {folder} were skipped", stacklevel=2)
    return images


def val_samples(root: str | Path, transform: Transform, split: str = "val", limit: int | None = None
                ) -> Iterator[tuple[torch.Tensor, int]]:
    """(prepared image (1, 3, H, W), class index) of every readable image of `root/split`, in
    sorted order (at most `limit`); class indices follow the sorted class folders of `root/train`
    when it exists (the classifier's classes), else those of `root/split`."""
    root = Path(root)
    classes = class_folders(root / "train") or class_folders(root / split)
    index = {name: i for i, name in enumerate(classes)}
    split_classes = class_folders(root / split)
    unknown = [c for c in split_classes if c not in index]
    if unknown:
        raise CalibrationError(f"{root / split} has class folders that {root / 'train'} does not have: "
                               f"{', '.join(unknown[:5])}")
    n = 0
    for path, label in labelled_files(root / split):
        if limit is not None and n >= limit:
            return
        image = _read(path, transform)
        if image is not None:
            n += 1
            yield image, index[split_classes[label]]


def top1_accuracy(predict: Callable[[torch.Tensor], torch.Tensor], root: str | Path, transform: Transform,
                  split: str = "val", limit: int | None = None) -> float | None:
    """Top-1 accuracy in percent of `predict` (image (1, 3, H, W) -> logits (1, classes)) on
    `root/split`, or None when there is no such split or it holds no readable image.

    Raises:
        CalibrationError: the logits have another number of classes than the folder (the
            classifier was trained on other classes).
    """
    classes = class_folders(Path(root) / "train") or class_folders(Path(root) / split)
    correct = total = 0
    for image, label in val_samples(root, transform, split, limit):
        logits = predict(image)
        if logits.shape[-1] != len(classes):
            raise CalibrationError(f"the model has {logits.shape[-1]} classes, {root} has {len(classes)}: "
                                   "its top-1 needs a classifier trained on the same classes")
        correct += int(int(logits.reshape(-1, logits.shape[-1]).argmax(-1)[0]) == label)
        total += 1
    return 100.0 * correct / total if total else None
