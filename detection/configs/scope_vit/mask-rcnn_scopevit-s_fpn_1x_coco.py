# Mask R-CNN + ScopeViT-S, 1x: the ScopeViT-T config with the S backbone (twice the width).
_base_ = './mask-rcnn_scopevit-t_fpn_1x_coco.py'

pretrained = 'checkpoints/scope_vit_small.pth'
model = dict(
    backbone=dict(arch='small', init_cfg=dict(checkpoint=pretrained)),
    neck=dict(in_channels=[64, 128, 256, 512]))
