# Cascade Mask R-CNN + ViTAEv2*-48M+VSA (the released `ViTAEv2_VSA_widePCM_48M`), 3x multi-scale. Seed
# README: 52.9 box / 45.6 mask AP, 108M parameters (this config builds 108.43M).
_base_ = './cascade-mask-rcnn_vitaev2-s-vsa_fpn_4conv1fc-giou_ms-crop-3x_coco.py'

model = dict(
    backbone=dict(arch='48m', drop_path_rate=0.2, init_cfg=dict(checkpoint='checkpoints/vitaev2_vsa_48m.pth')),
    neck=dict(in_channels=[96, 192, 384, 768]))
