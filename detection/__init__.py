"""MMDetection downstream task: the EfficientFormerV2 backbone in mmdet's registry, toy COCO data.

Importing the package registers ``EfficientFormerV2`` in mmdet's `MODELS` and allow-lists the
objects mmengine stores in its checkpoints for torch's safe loading.
"""
from .backbone import EfficientFormerV2
from .safe_loading import allow_mmengine_checkpoints

allow_mmengine_checkpoints()

__all__ = ["EfficientFormerV2", "allow_mmengine_checkpoints"]
