"""Images to predict on, wherever they are: a folder (class folders or not), one image file, a
text file listing images, or a list of any of these.

`find_images` lists the files; `predict_dataset` makes the dataset `predict` reads (targets from
class folders where the folder is a split of the training classes, none otherwise); and
`predict_images` classifies images with a model in Python, no data module or trainer needed:

    from backbones import create_model
    from classification.image_files import predict_images
    model = create_model("efficientformerv2_s0", pretrained=True)
    for p in predict_images(model, "photos/"):
        print(p["path"], p["classes"][0], p["scores"][0])

A source without any image is a `DataError` (one line at the command line, exit status 2).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from backbones.model_info import class_names  # one home for readable class names
from imagefolder import (IMAGE_EXTENSIONS, DataError, ImageFolderDataset, data_config, eval_transform, is_image,
                         load_rgb, scan_split)

__all__ = ["LIST_SUFFIXES", "NO_TARGET", "find_images", "predict_samples", "predict_dataset", "predict_images",
           "class_names"]

LIST_SUFFIXES = (".txt", ".lst")  # a text file naming one image per line
NO_TARGET = -1  # the target of an image that is not in a class folder


def find_images(source: str | Path | Sequence[str | Path]) -> list[Path]:
    """Image files of `source`: a folder (searched recursively, hidden entries skipped), an image
    file, a text file (.txt, .lst) with one image path per line (relative to its folder; empty
    lines and lines starting with # skipped), or a list of these. Sorted per folder, in the
    order given otherwise.

    Raises:
        DataError: a path that does not exist or is not an image, or no image at all.
    """
    sources = [source] if isinstance(source, (str, Path)) else list(source)
    images: list[Path] = []
    for item in sources:
        path = Path(item)
        if path.is_dir():
            images += sorted(p for p in path.rglob("*") if is_image(p) and p.is_file()
                             and not any(part.startswith(".") for part in p.relative_to(path).parts))
        elif path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
            for n, line in enumerate(path.read_text().splitlines(), 1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                listed = Path(line) if Path(line).is_absolute() else path.parent / line
                if not listed.is_file():
                    raise DataError(f"{path}, line {n}: {line} is not a file")
                images.append(listed)
        elif path.is_file():
            if not is_image(path):
                raise DataError(f"{path} is not an image (extensions {', '.join(IMAGE_EXTENSIONS)}) nor a list of "
                                f"images ({', '.join(LIST_SUFFIXES)})")
            images.append(path)
        else:
            raise DataError(f"{path} does not exist: pass a folder of images, an image file or a text file "
                            "listing images")
    if not images:
        shown = ", ".join(map(str, sources[:3])) + (", ..." if len(sources) > 3 else "")
        raise DataError(f"no image to predict on in {shown or 'an empty list'} (extensions "
                        f"{', '.join(IMAGE_EXTENSIONS)}): pass a folder holding images, an image file or a text "
                        "file listing images")
    return images


def predict_samples(source: str | Path | Sequence[str | Path],
                    class_to_idx: dict[str, int] | None = None) -> list[tuple[str, int]]:
    """(path, target) pairs for `predict`: a folder whose sub-folders are all classes of
    `class_to_idx` is read as a split (targets from its folders, as validation does); anything
    else gives every image of `find_images` with target `NO_TARGET`."""
    if isinstance(source, (str, Path)) and Path(source).is_dir() and class_to_idx:
        folder = Path(source)
        subfolders = [p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
        loose = [p for p in folder.iterdir() if p.is_file() and is_image(p)]
        if subfolders and not loose and all(name in class_to_idx for name in subfolders):
            return scan_split(folder, class_to_idx)
    return [(str(p), NO_TARGET) for p in find_images(source)]


def predict_dataset(source: str | Path | Sequence[str | Path], class_to_idx: dict[str, int] | None,
                    transform: Callable | None, classes: Sequence[str] = ()) -> ImageFolderDataset:
    """The dataset `predict` reads: (image, target, path) of `predict_samples(source, ...)`."""
    return ImageFolderDataset(predict_samples(source, class_to_idx), transform, classes, with_paths=True)


@torch.no_grad()
def predict_images(model: nn.Module, source: str | Path | Sequence[str | Path], top_k: int = 5,
                   batch_size: int = 16, names: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Classify the images of `source` (see `find_images`) with `model`.

    The images are prepared with the model's own evaluation transform (`imagefolder.data_config`:
    its `pretrained_cfg`'s input size, crop, mean and std, as `timm.data.resolve_model_data_config`
    reads them).
    Returns one dict per image: {"path", "classes": top-k names (`names`, else the model's
    `pretrained_cfg["label_names"]` or ImageNet's, see `class_names`; else indices as strings),
    "indices", "scores": softmax probabilities}, highest first.
    """
    paths = find_images(source)
    transform = eval_transform(data_config(model))
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    results: list[dict[str, Any]] = []
    try:
        for start in range(0, len(paths), batch_size):
            chunk = paths[start:start + batch_size]
            batch = torch.stack([transform(load_rgb(p)) for p in chunk]).to(device)
            logits = model(batch)
            logits = logits[0] if isinstance(logits, (tuple, list)) else logits
            probs = logits.float().softmax(dim=1)
            if names is None:  # the checkpoint's class names (`backbones.model_from_checkpoint`), or ImageNet's
                own = (getattr(model, "pretrained_cfg", None) or {}).get("label_names")
                names = class_names(probs.shape[1], own) or [str(i) for i in range(probs.shape[1])]
            scores, indices = probs.topk(min(top_k, probs.shape[1]), dim=1)
            for p, s, i in zip(chunk, scores.tolist(), indices.tolist()):
                results.append({"path": str(p), "classes": [names[j] for j in i], "indices": i, "scores": s})
    finally:
        model.train(was_training)
    return results
