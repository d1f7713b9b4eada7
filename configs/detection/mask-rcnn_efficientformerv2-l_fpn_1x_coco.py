# Mask R-CNN + FPN with an EfficientFormerV2-L backbone on COCO 2017, 1x schedule: the S0
# config with the L architecture, its FPN input widths and its ImageNet checkpoint.
_base_ = './mask-rcnn_efficientformerv2-s0_fpn_1x_coco.py'

model = dict(
    backbone=dict(
        arch='l',
        init_cfg=dict(type='Pretrained', checkpoint='hf-hub:timm/efficientformerv2_l.snap_dist_in1k')),
    neck=dict(in_channels=[40, 80, 192, 384]))
