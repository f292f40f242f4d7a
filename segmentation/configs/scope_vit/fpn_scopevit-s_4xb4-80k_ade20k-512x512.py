# Semantic FPN + ScopeViT-S: the ScopeViT-T config with the S backbone (twice the width).
_base_ = './fpn_scopevit-t_4xb4-80k_ade20k-512x512.py'

pretrained = 'checkpoints/scope_vit_small.pth'
model = dict(
    backbone=dict(arch='small', init_cfg=dict(checkpoint=pretrained)),
    neck=dict(in_channels=[64, 128, 256, 512]))
