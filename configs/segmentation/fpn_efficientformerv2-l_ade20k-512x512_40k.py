# Semantic FPN with an EfficientFormerV2-L backbone on ADE20K, 512x512, 40k iterations: the S0
# config with the L architecture, its FPN input widths and its ImageNet checkpoint.
_base_ = './fpn_efficientformerv2-s0_ade20k-512x512_40k.py'

model = dict(
    backbone=dict(
        arch='l',
        init_cfg=dict(type='Pretrained', checkpoint='hf-hub:timm/efficientformerv2_l.snap_dist_in1k')),
    neck=dict(in_channels=[40, 80, 192, 384]))
