# Semantic FPN with an EfficientFormerV2-S2 backbone on ADE20K, 512x512, 40k iterations: the S0
# config with the S2 architecture, its FPN input widths and its ImageNet checkpoint.
_base_ = './fpn_efficientformerv2-s0_ade20k-512x512_40k.py'

model = dict(
    backbone=dict(
        arch='s2',
        init_cfg=dict(type='Pretrained', checkpoint='hf-hub:timm/efficientformerv2_s2.snap_dist_in1k')),
    neck=dict(in_channels=[32, 64, 144, 288]))
