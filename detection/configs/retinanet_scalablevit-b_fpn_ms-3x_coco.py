# RetinaNet + ScalableViT-B, 3x schedule with multi-scale training.
_base_ = './retinanet_scalablevit-s_fpn_ms-3x_coco.py'

model = dict(
    backbone=dict(
        arch='base',
        drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/scalable_vit_base.pth')),
    neck=dict(in_channels=[192, 384, 768]))
