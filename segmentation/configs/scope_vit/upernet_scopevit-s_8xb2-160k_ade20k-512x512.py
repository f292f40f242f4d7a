# UperNet + ScopeViT-S: the ScopeViT-T config with the S backbone (twice the width).
_base_ = './upernet_scopevit-t_8xb2-160k_ade20k-512x512.py'

pretrained = 'checkpoints/scope_vit_small.pth'
model = dict(
    backbone=dict(arch='small', init_cfg=dict(checkpoint=pretrained)),
    decode_head=dict(in_channels=[64, 128, 256, 512]),
    auxiliary_head=dict(in_channels=256))
