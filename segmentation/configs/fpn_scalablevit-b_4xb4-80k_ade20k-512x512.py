# Semantic FPN + ScalableViT-B on ADE20K, 80k iterations.
_base_ = './fpn_scalablevit-s_4xb4-80k_ade20k-512x512.py'

model = dict(
    backbone=dict(
        arch='base',
        drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/scalable_vit_base.pth')),
    neck=dict(in_channels=[96, 192, 384, 768]))
