# UperNet + ScopeViT-XT: the ScopeViT-T config with the XT backbone (drop path 0.05, as released).
_base_ = './upernet_scopevit-t_8xb2-160k_ade20k-512x512.py'

pretrained = 'checkpoints/scope_vit_xtiny.pth'
model = dict(backbone=dict(arch='xtiny', drop_path_rate=0.05, init_cfg=dict(checkpoint=pretrained)))
