# Mask R-CNN + FPN with an EfficientFormerV2-S1 backbone on COCO 2017, 1x schedule: the S0
# config with the S1 architecture, its FPN input widths and its ImageNet checkpoint.
_base_ = './mask-rcnn_efficientformerv2-s0_fpn_1x_coco.py'

model = dict(
    backbone=dict(
        arch='s1',
        init_cfg=dict(type='Pretrained', checkpoint='hf-hub:timm/efficientformerv2_s1.snap_dist_in1k')),
    neck=dict(in_channels=[32, 48, 120, 224]))
