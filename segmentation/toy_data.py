"""A small, deterministic, learnable semantic-segmentation set in the ADE20K layout.

`ROOT/images/{training,validation}/*.jpg` and `ROOT/annotations/{training,validation}/*.png`
(ADEChallengeData2016). Annotations are index PNGs with ADE20K's convention: 0 = ignore
(unlabelled), 1..150 = classes. The toy set uses the first five ids: 1 is a noisy background,
2..5 are four kinds of shapes (disc, rectangle, triangle, ring) with class-typical colours; a
one-pixel ignore outline separates each shape from what is behind it, like ADE20K's unlabelled
boundaries. Training and validation images are drawn from disjoint random streams.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 128
SPLITS = {"training": 200, "validation": 50}
BACKGROUND = 1
SHAPES = {2: "disc", 3: "rectangle", 4: "triangle", 5: "ring"}
_HUES = {2: (220, 60, 50), 3: (50, 200, 70), 4: (60, 90, 230), 5: (230, 200, 40)}


def _outline(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    n = {"disc": 32, "ring": 32, "rectangle": 4, "triangle": 3}[kind]
    sx = 1.0 if kind != "rectangle" else 1.4
    pts = []
    for k in range(n):
        t = angle + 2 * math.pi * k / n + (math.pi / 4 if kind == "rectangle" else 0)
        x, y = sx * r * math.cos(t), r * math.sin(t)
        pts.append((cx + x * math.cos(angle) - y * math.sin(angle), cy + x * math.sin(angle) + y * math.cos(angle)))
    return pts


def _sample(rng: np.random.Generator) -> tuple[Image.Image, Image.Image]:
    bg = rng.integers(80, 176)
    pixels = np.clip(bg + rng.normal(0, 14, (IMAGE_SIZE, IMAGE_SIZE, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(pixels, "RGB")
    label = Image.new("L", (IMAGE_SIZE, IMAGE_SIZE), BACKGROUND)
    draw_img, draw_lbl = ImageDraw.Draw(img), ImageDraw.Draw(label)
    for _ in range(int(rng.integers(2, 5))):
        cls = int(rng.integers(2, 2 + len(SHAPES)))
        kind = SHAPES[cls]
        r = rng.uniform(12, 30)
        cx, cy = rng.uniform(0, IMAGE_SIZE, size=2)
        pts = _outline(kind, cx, cy, r, rng.uniform(0, 2 * math.pi))
        colour = tuple(int(c) for c in np.clip(np.array(_HUES[cls]) + rng.integers(-35, 36, 3), 0, 255))
        if kind == "ring":
            width = max(4, int(r * 0.35))
            draw_img.polygon(pts, outline=colour, width=width)
            draw_lbl.polygon(pts, outline=cls, width=width)
            inner = _outline(kind, cx, cy, r - width + 1, 0.0)
            draw_lbl.polygon(inner, outline=0, width=1)
        else:
            draw_img.polygon(pts, fill=colour)
            draw_lbl.polygon(pts, fill=cls)
        draw_lbl.polygon(pts, outline=0, width=1)
    return img, label


def make_toy_ade20k(out: Path, seed: int = 0, sizes: dict[str, int] | None = None) -> Path:
    """Write the toy ADE20K set under `out` (images/ and annotations/, training and validation).

    Args:
        out: dataset root (the ADEChallengeData2016 folder).
        seed: random seed; the same seed writes the same files.
        sizes: images per split (default `SPLITS`: 200 training, 50 validation).
    """
    out = Path(out)
    sizes = dict(SPLITS if sizes is None else sizes)
    unknown = set(sizes) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown splits {sorted(unknown)}; use {sorted(SPLITS)}")
    for split, count in sizes.items():
        split_index = list(SPLITS).index(split)  # each split its own stream, whichever are written
        rng = np.random.default_rng([seed, split_index])
        images, annotations = out / "images" / split, out / "annotations" / split
        images.mkdir(parents=True, exist_ok=True)
        annotations.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            img, label = _sample(rng)
            stem = f"ADE_{'train' if split == 'training' else 'val'}_{i + 1:08d}"
            img.save(images / f"{stem}.jpg", quality=95)
            label.save(annotations / f"{stem}.png")
    return out
