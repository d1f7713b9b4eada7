# Semantic FPN with an EfficientFormerV2-S1 backbone on ADE20K, 512x512, 40k iterations: the S0
# config with the S1 architecture, its FPN input widths and its ImageNet checkpoint.
_base_ = './fpn_efficientformerv2-s0_ade20k-512x512_40k.py'

model = dict(
    backbone=dict(
        arch='s1',
        init_cfg=dict(type='Pretrained', checkpoint='hf-hub:timm/efficientformerv2_s1.snap_dist_in1k')),
    neck=dict(in_channels=[32, 48, 120, 224]))
