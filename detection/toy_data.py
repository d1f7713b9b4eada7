"""A small, deterministic, learnable instance-segmentation set in the COCO 2017 layout.

`ROOT/annotations/instances_{train,val}2017.json` and `ROOT/{train,val}2017/*.jpg`: 160x160
images with 1 to 3 large, high-contrast, non-overlapping shapes of three classes (circle,
square, triangle) on a noisy background. Circles and triangles carry polygon masks, squares
compressed RLE masks (both are COCO's own encodings). Train and val images are drawn from
disjoint random streams of the same distribution. The same seed writes the same files.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

CLASSES = ("circle", "square", "triangle")
IMAGE_SIZE = 160
SPLITS = {"train": 240, "val": 60}
_HUES = {"circle": (220, 60, 50), "square": (50, 200, 70), "triangle": (60, 90, 230)}


def _polygon(name: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Vertices of a shape of radius `r` centred at (cx, cy), rotated by `angle`."""
    if name == "circle":
        n, phase = 32, 0.0
    elif name == "square":
        n, phase, r = 4, math.pi / 4 + angle, r * 0.95
    else:
        n, phase = 3, angle
    return [(cx + r * math.cos(phase + 2 * math.pi * k / n), cy + r * math.sin(phase + 2 * math.pi * k / n))
            for k in range(n)]


def _place(rng: np.random.Generator, count: int) -> list[tuple[float, float, float]]:
    """Centres and radii of `count` shapes inside the image that do not overlap."""
    placed: list[tuple[float, float, float]] = []
    for _ in range(200):
        if len(placed) == count:
            break
        r = rng.uniform(16, 34)
        cx, cy = rng.uniform(r + 2, IMAGE_SIZE - r - 2, size=2)
        if all(math.hypot(cx - x, cy - y) > r + q + 4 for x, y, q in placed):
            placed.append((cx, cy, r))
    return placed


def _colour(name: str, rng: np.random.Generator) -> tuple[int, int, int]:
    base = np.array(_HUES[name]) + rng.integers(-35, 36, 3)
    return tuple(int(c) for c in np.clip(base, 0, 255))


def _image(rng: np.random.Generator, image_id: int, file_name: str, first_ann_id: int):
    """One image (PIL) and its COCO annotations."""
    bg = rng.integers(90, 166)
    noise = rng.normal(0, 12, (IMAGE_SIZE, IMAGE_SIZE, 3))
    pixels = np.clip(bg + noise, 0, 255).astype(np.uint8)
    anns = []
    for cx, cy, r in _place(rng, int(rng.integers(1, 4))):
        label = int(rng.integers(len(CLASSES)))
        name = CLASSES[label]
        poly = _polygon(name, cx, cy, r, rng.uniform(0, 2 * math.pi))
        flat = [round(v, 2) for xy in poly for v in xy]
        if name == "square":  # rasterised here, stored as compressed RLE
            canvas = Image.new("L", (IMAGE_SIZE, IMAGE_SIZE), 0)
            ImageDraw.Draw(canvas).polygon(poly, fill=1)
            binary = np.array(canvas, dtype=np.uint8)
            rle = mask_utils.encode(np.asfortranarray(binary))
            segmentation = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
        else:  # stored as a polygon; pixels follow COCO's own rasterisation of it
            segmentation = [flat]
            binary = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(segmentation, IMAGE_SIZE, IMAGE_SIZE)))
        pixels[binary.astype(bool)] = _colour(name, rng)
        ys, xs = np.nonzero(binary)
        x0, y0 = int(xs.min()), int(ys.min())
        bbox = [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1]
        anns.append({"id": first_ann_id + len(anns), "image_id": image_id, "category_id": label + 1,
                     "segmentation": segmentation, "area": int(binary.sum()), "bbox": bbox, "iscrowd": 0})
    info = {"id": image_id, "file_name": file_name, "width": IMAGE_SIZE, "height": IMAGE_SIZE}
    return Image.fromarray(pixels, "RGB"), info, anns


def make_toy_coco(out: Path, seed: int = 0, sizes: dict[str, int] | None = None) -> Path:
    """Write the toy COCO set under `out` (train2017/val2017 and their annotation files).

    Args:
        out: dataset root.
        seed: random seed; the same seed writes the same files.
        sizes: images per split (default `SPLITS`: 240 train, 60 val).
    """
    out = Path(out)
    sizes = dict(SPLITS if sizes is None else sizes)
    unknown = set(sizes) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown splits {sorted(unknown)}; use {sorted(SPLITS)}")
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    categories = [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(CLASSES)]
    for split, count in sizes.items():
        split_index = list(SPLITS).index(split)  # each split its own stream, whichever are written
        rng = np.random.default_rng([seed, split_index])
        folder = out / f"{split}2017"
        folder.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for i in range(count):
            image_id = split_index * 100000 + i + 1
            file_name = f"{image_id:012d}.jpg"
            img, info, anns = _image(rng, image_id, file_name, len(annotations) + 1 + split_index * 1000000)
            img.save(folder / file_name, quality=95)
            images.append(info)
            annotations.extend(anns)
        doc = {"info": {"description": f"EfficientFormerV2 toy COCO ({split}, seed {seed})"},
               "images": images, "annotations": annotations, "categories": categories}
        (out / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(doc))
    return out
