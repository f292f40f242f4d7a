# RetinaNet + ScopeViT-XT, 1x: the ScopeViT-T config with the XT backbone (drop path 0.05, as released).
_base_ = './retinanet_scopevit-t_fpn_1x_coco.py'

pretrained = 'checkpoints/scope_vit_xtiny.pth'
model = dict(backbone=dict(arch='xtiny', drop_path_rate=0.05, init_cfg=dict(checkpoint=pretrained)))
