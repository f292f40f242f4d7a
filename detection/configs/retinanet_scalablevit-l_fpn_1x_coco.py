# RetinaNet + ScalableViT-L, 1x schedule.
_base_ = './retinanet_scalablevit-s_fpn_1x_coco.py'

model = dict(
    backbone=dict(
        arch='large',
        drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/scalable_vit_large.pth')),
    neck=dict(in_channels=[256, 512, 1024]))
