# Mask R-CNN + ViTAEv2*-48M+VSA (the released `ViTAEv2_VSA_widePCM_48M`, 51.09M as a classifier), 3x
# multi-scale. Seed README: 49.9 box / 44.2 mask AP, 69M parameters (this config builds 70.60M; the seed's 69M is
# 1.6M below the released backbone with these heads).
_base_ = './mask-rcnn_vitaev2-s-vsa_fpn_ms-crop-3x_coco.py'

model = dict(
    backbone=dict(arch='48m', drop_path_rate=0.2, init_cfg=dict(checkpoint='checkpoints/vitaev2_vsa_48m.pth')),
    neck=dict(in_channels=[96, 192, 384, 768]))
