# Semantic FPN with an EfficientFormerV2-S0 backbone on ADE20K (150 classes), 512x512 crops,
# 40k iterations at a global batch of 32 (8 GPUs x 4 images), AdamW lr 2e-4, weight decay 1e-4,
# poly decay (power 0.9), single-scale test (paper Section 5.2). Model, data and runtime come
# from mmseg's packaged bases. The backbone starts from timm's ImageNet weights on the Hugging
# Face Hub (the official ones, converted), fetched into huggingface_hub's cache on first use
# (offline: HF_HUB_OFFLINE=1 reads the cache); a local file (project, official or timm format)
# works too: --cfg-options model.backbone.init_cfg.checkpoint=FILE.
_base_ = [
    'mmseg::_base_/models/fpn_r50.py',
    'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_40k.py',
]

custom_imports = dict(imports=['openmmlab'], allow_failed_imports=False)

crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    pretrained=None,  # the base's ResNet weights; the backbone's init_cfg loads ImageNet weights
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
    neck=dict(in_channels=[32, 48, 96, 176], out_channels=256, num_outs=4),
    decode_head=dict(num_classes=150))

# 4 images per GPU on 8 GPUs: global batch 32
train_dataloader = dict(batch_size=4)
auto_scale_lr = dict(enable=False, base_batch_size=32)

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-4, weight_decay=1e-4),
    clip_grad=None)
param_scheduler = [
    dict(type='PolyLR', power=0.9, eta_min=0.0, begin=0, end=40000, by_epoch=False)
]
