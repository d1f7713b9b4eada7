"""MMSegmentation downstream task: the EfficientFormerV2 backbone in mmseg's registry, toy ADE20K.

The backbone is the one of `detection.backbone` (itself a wrapper of `backbones`), registered
here in mmseg's `MODELS` too; importing the package also allow-lists mmengine's checkpoint
objects for torch's safe loading.
"""
from mmseg.registry import MODELS

from detection.backbone import EfficientFormerV2
from detection.safe_loading import allow_mmengine_checkpoints

MODELS.register_module(module=EfficientFormerV2)
allow_mmengine_checkpoints()

__all__ = ["EfficientFormerV2"]
