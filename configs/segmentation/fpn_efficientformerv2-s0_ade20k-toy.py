# CPU toy run of the S0 Semantic FPN config on the generated toy ADE20K set
# (`python tools/make_toy_data.py --task seg --out data/toy_ade20k`): 128x128 images using ADE20K
# ids 1..5, 128x128 crops, BN instead of SyncBN, short iteration schedule. The 150-class head,
# losses, data pipeline steps and IoUMetric are the real config's.
_base_ = './fpn_efficientformerv2-s0_ade20k-512x512_40k.py'

data_root = 'data/toy_ade20k/'
crop_size = (128, 128)
max_iters = 500
norm_cfg = dict(type='BN', requires_grad=True)

model = dict(
    data_preprocessor=dict(size=crop_size),
    # the classifier `make demo` trains on the toy classification set (64 px images: the grid of
    # its attention-bias tables), as users start from ImageNet weights (224 px)
    backbone=dict(img_size=64,
                  init_cfg=dict(checkpoint='artifacts/cls_toy/efficientformerv2_s0.safetensors')),
    decode_head=dict(norm_cfg=norm_cfg))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=(128, 128), ratio_range=(0.75, 1.5), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.9),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(128, 128), keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=8, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader

train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
optim_wrapper = dict(optimizer=dict(lr=1e-3))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(type='PolyLR', power=0.9, eta_min=0.0, begin=50, end=max_iters, by_epoch=False),
]
default_hooks = dict(logger=dict(interval=20), checkpoint=dict(interval=max_iters, max_keep_ckpts=1))
