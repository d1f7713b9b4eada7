# Mask R-CNN + FPN with an EfficientFormerV2-S0 backbone on COCO 2017, 1x schedule (12 epochs),
# 1333x800, AdamW lr 2e-4, weight decay 0.05 (paper Section 5.2). The model, data, schedule and
# runtime come from mmdet's packaged Mask R-CNN R-50 config; only the backbone, the FPN input
# widths and the optimizer change. The backbone starts from timm's ImageNet weights on the
# Hugging Face Hub (the official ones, converted), fetched into huggingface_hub's cache on first
# use (offline: HF_HUB_OFFLINE=1 reads the cache); a local file (project, official or timm
# format) works too: --cfg-options model.backbone.init_cfg.checkpoint=FILE.
_base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'

custom_imports = dict(imports=['openmmlab'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='EfficientFormerV2',
        arch='s0',
        out_indices=(0, 1, 2, 3),
        frozen_stages=-1,
        norm_eval=True,
        # the project's attention bias, for training from ImageNet weights; the official COCO and
        # ADE20K weights select 'dense' (the official dense bias at their resolution) by themselves
        bias_mode='offset',
        init_cfg=dict(type='Pretrained', checkpoint='hf-hub:timm/efficientformerv2_s0.snap_dist_in1k')),
    neck=dict(in_channels=[32, 48, 96, 176], out_channels=256, num_outs=5))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-4, weight_decay=0.05))
