"""A small, deterministic, learnable image set in the ImageNet folder layout (no downloads).

Ten classes of drawn shapes and textures with random colours, sizes, positions and noise:
`ROOT/train/<class>/*.JPEG` and `ROOT/val/<class>/*.JPEG`. The same seed writes the same files.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("circle", "square", "triangle", "cross", "ring", "star",
           "hstripes", "vstripes", "checker", "dots")


def _colours(rng: np.random.Generator) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """A background and a foreground colour that differ clearly in brightness."""
    while True:
        bg = rng.integers(0, 256, 3)
        fg = rng.integers(0, 256, 3)
        if abs(int(fg.mean()) - int(bg.mean())) > 70:
            return tuple(int(c) for c in bg), tuple(int(c) for c in fg)


def _draw(name: str, size: int, rng: np.random.Generator) -> Image.Image:
    bg, fg = _colours(rng)
    img = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(img)
    r = rng.uniform(0.22, 0.36) * size            # shape radius
    cx, cy = (rng.uniform(r + 2, size - r - 2) for _ in range(2))
    box = (cx - r, cy - r, cx + r, cy + r)
    if name == "circle":
        d.ellipse(box, fill=fg)
    elif name == "square":
        d.rectangle(box, fill=fg)
    elif name == "triangle":
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fg)
    elif name == "cross":
        w = r * 0.35
        d.rectangle((cx - r, cy - w, cx + r, cy + w), fill=fg)
        d.rectangle((cx - w, cy - r, cx + w, cy + r), fill=fg)
    elif name == "ring":
        d.ellipse(box, outline=fg, width=max(2, int(r * 0.3)))
    elif name == "star":
        pts = [(cx + (r if k % 2 == 0 else r * 0.4) * math.sin(k * math.pi / 5),
                cy - (r if k % 2 == 0 else r * 0.4) * math.cos(k * math.pi / 5)) for k in range(10)]
        d.polygon(pts, fill=fg)
    elif name in ("hstripes", "vstripes"):
        period = int(rng.integers(size // 10, size // 5))
        offset = int(rng.integers(0, period))
        for p in range(-period + offset, size, period):
            rect = (0, p, size, p + period // 2) if name == "hstripes" else (p, 0, p + period // 2, size)
            d.rectangle(rect, fill=fg)
    elif name == "checker":
        cell = int(rng.integers(size // 10, size // 5))
        for i in range(0, size, cell):
            for j in range(0, size, cell):
                if (i // cell + j // cell) % 2 == 0:
                    d.rectangle((i, j, i + cell - 1, j + cell - 1), fill=fg)
    elif name == "dots":
        step = int(rng.integers(size // 8, size // 5))
        rad = max(1.5, step * 0.25)
        for i in range(step // 2, size, step):
            for j in range(step // 2, size, step):
                d.ellipse((i - rad, j - rad, i + rad, j + rad), fill=fg)
    else:
        raise ValueError(f"unknown toy class {name!r}")
    noise = rng.normal(0, 12, (size, size, 3))
    arr = np.clip(np.asarray(img, dtype=np.float64) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def make_toy_classification(out: Path, seed: int = 0, train_per_class: int = 40, val_per_class: int = 20,
                            size: int = 64) -> Path:
    """Write the toy set under `out` (`train/` and `val/`, one folder per class) and return `out`.

    Args:
        out: root folder to create (existing files of the same names are overwritten).
        seed: the same seed gives the same images, byte for byte.
        train_per_class, val_per_class: images per class in each split (val is never trained on).
        size: image side in pixels.
    """
    out = Path(out)
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for c, name in enumerate(CLASSES):
            folder = out / split / name
            folder.mkdir(parents=True, exist_ok=True)
            rng = np.random.default_rng([seed, c, 0 if split == "train" else 1])
            for i in range(count):
                _draw(name, size, rng).save(folder / f"{split}_{name}_{i:04d}.JPEG", quality=92)
    return out
