"""Image classification with Lightning: EfficientFormerV2 on ImageNet-1K in its folder layout.

`ImageClassifier` (LightningModule, `classification.module`), `ImageNetDataModule`
(LightningDataModule, `classification.data`) and the CLI
(`python -m classification fit|validate|test|predict --config ...`). The names are imported
lazily so that `classification.toy_data` does not pull in Lightning.
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

_LAZY = {"ImageClassifier": ".module", "ImageNetDataModule": ".data", "DataError": "imagefolder"}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
