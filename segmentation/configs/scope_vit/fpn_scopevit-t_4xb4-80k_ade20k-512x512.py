# Semantic FPN + ScopeViT-T on ADE20K: 80k iterations, 4 GPUs x 4 images, 512x512 crops; the release's
# settings (AdamW lr 2e-4, weight decay 1e-4, poly decay power 0.9, drop path 0.1) on MMSegmentation 1.x.
# The primitive of the ScopeViT Semantic FPN configs; XT and S are deltas on it. LayerScale is exempt from
# weight decay as the release meant; test images resized to multiples of 32 run as they are.
_base_ = 'mmseg::sem_fpn/fpn_r50_4xb4-160k_ade20k-512x512.py'
custom_imports = dict(imports=['scalablevit.openmmlab'], allow_failed_imports=False)

pretrained = 'checkpoints/scope_vit_tiny.pth'  # ImageNet-1K weights (none were published: train them)
model = dict(
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='ScopeViTBackbone',
        arch='tiny',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.1,
        norm_outputs=False,  # the stage maps are already BatchNorm-normed
        norm_eval=True,  # 4 images per GPU: keep the ImageNet BatchNorm statistics
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[32, 64, 128, 256]))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-4, betas=(0.9, 0.999), weight_decay=1e-4),
    paramwise_cfg=dict(custom_keys={'ls1.gamma': dict(decay_mult=0.), 'ls2.gamma': dict(decay_mult=0.)}))
param_scheduler = [dict(type='PolyLR', power=0.9, eta_min=0., begin=0, end=80000, by_epoch=False)]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=80000, val_interval=8000)
default_hooks = dict(checkpoint=dict(by_epoch=False, interval=8000))
