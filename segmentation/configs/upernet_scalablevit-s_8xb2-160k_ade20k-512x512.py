# UperNet + ScalableViT-S on ADE20K: 160k iterations, 8 GPUs x 2 images, 512x512 crops, auxiliary FCN head
# on stage 3 (loss weight 0.4). The primitive of the UperNet family: B and L are deltas on this one.
_base_ = 'mmseg::upernet/upernet_r50_4xb4-160k_ade20k-512x512.py'
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
    decode_head=dict(in_channels=[64, 128, 256, 512]),
    auxiliary_head=dict(in_channels=256))
train_dataloader = dict(batch_size=2)

# Paper, Section 4.3 and Table 8: AdamW, lr 6e-5, weight decay 0.01, 1500-iteration linear warm-up, then
# poly decay with power 1.0 over 160k iterations; no weight decay on norms and the PEG.
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(norm_decay_mult=0., custom_keys={'pos_block': dict(decay_mult=0.)}))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', power=1.0, eta_min=0., begin=1500, end=160000, by_epoch=False),
]
