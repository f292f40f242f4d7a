# UperNet + ScopeViT-T on ADE20K: 160k iterations, 8 GPUs x 2 images (16 in total), 512x512 crops,
# auxiliary FCN head on stage 3; the release's settings (AdamW lr 1e-4, weight decay 0.01, 1500-iteration
# linear warm-up, poly decay power 1.0, drop path 0.1) on MMSegmentation 1.x. The primitive of the ScopeViT
# UperNet configs; XT and S are deltas on it (their auxiliary heads read stage 3's real width, 128 and 256,
# where the released configs had 96 and 320).
_base_ = 'mmseg::upernet/upernet_r50_4xb4-160k_ade20k-512x512.py'
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
        norm_eval=True,  # 2 images per GPU: keep the ImageNet BatchNorm statistics
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[32, 64, 128, 256]),
    auxiliary_head=dict(in_channels=128))
train_dataloader = dict(batch_size=2)

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(custom_keys={'ls1.gamma': dict(decay_mult=0.), 'ls2.gamma': dict(decay_mult=0.)}))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', power=1.0, eta_min=0., begin=1500, end=160000, by_epoch=False),
]
