# Semantic FPN + ScalableViT-S on ADE20K: 80k iterations, 4 GPUs x 4 images, 512x512 crops.
# The primitive of the Semantic FPN family: the B and L configs are deltas on this one.
_base_ = 'mmseg::sem_fpn/fpn_r50_4xb4-160k_ade20k-512x512.py'
custom_imports = dict(imports=['scalablevit.openmmlab'], allow_failed_imports=False)

pretrained = 'checkpoints/scalable_vit_small.pth'  # ImageNet-1K weights: ours or the released checkpoint
model = dict(
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='ScalableViTBackbone',
        arch='small',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[64, 128, 256, 512]))

# Paper, Section 4.3 and Table 8: AdamW, lr 1e-4, weight decay 1e-4, poly decay with power 0.9 over 80k
# iterations; no weight decay on norms and the PEG.
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-4),
    paramwise_cfg=dict(norm_decay_mult=0., custom_keys={'pos_block': dict(decay_mult=0.)}))
param_scheduler = [dict(type='PolyLR', power=0.9, eta_min=0., begin=0, end=80000, by_epoch=False)]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=80000, val_interval=8000)
default_hooks = dict(checkpoint=dict(by_epoch=False, interval=8000))
