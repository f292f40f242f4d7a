# UperNet + ScalableViT-L on ADE20K, 160k iterations.
_base_ = './upernet_scalablevit-s_8xb2-160k_ade20k-512x512.py'

model = dict(
    backbone=dict(
        arch='large',
        drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/scalable_vit_large.pth')),
    decode_head=dict(in_channels=[128, 256, 512, 1024]),
    auxiliary_head=dict(in_channels=512))
