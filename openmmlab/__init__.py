"""The EfficientFormerV2 backbone in OpenMMLab, shared by MMDetection and MMSegmentation.

Depends on mmengine (and `backbones`, and `deploy.latency` for the benchmark), never on mmdet or
mmseg: `detection/` and `segmentation/` hold the task code and each needs only its own OpenMMLab
package.

- `openmmlab.backbone`: `EfficientFormerV2`, an mmengine `BaseModule`, registered once in
  mmengine's root `MODELS`, where mmdet's and mmseg's registries find it.
- `openmmlab.safe_loading`: allow-list for mmengine checkpoints under torch's safe loading.
- `openmmlab.checkpoint_check`: a run's checkpoint checked against the built model before the run.
- `openmmlab.runner`: train and test a config with mmengine's Runner (tools/mm_train.py,
  tools/mm_test.py, the dense demos).
- `openmmlab.benchmark`: forward time and memory of the backbone at dense-task sizes.
- `openmmlab.console`: what tools/mm_train.py and tools/mm_test.py show (progress, one summary line).

Importing the package registers the backbone and allow-lists mmengine's checkpoint objects;
configs do it with ``custom_imports = dict(imports=['openmmlab'], allow_failed_imports=False)``.
"""
from .backbone import EfficientFormerV2
from .safe_loading import allow_mmengine_checkpoints

allow_mmengine_checkpoints()

__all__ = ["EfficientFormerV2", "allow_mmengine_checkpoints"]
