# RetinaNet + ScopeViT-T, 1x schedule (12 epochs), single scale 1333x800, 8 GPUs x 2 images: the release's
# settings (AdamW lr 1e-4, weight decay 0.05, drop path 0.1) on MMDetection 3.x. The primitive of the
# ScopeViT RetinaNet configs; XT and S are deltas on it.
# Differences from the released config, which targets mmdet 2.x: the FPN takes stages 1-3 and starts at level
# 0 (stage 0 feeds nothing in RetinaNet; an unused output would stop multi-GPU DDP), LayerScale is exempt
# from weight decay as the release meant (its `layer_scale` key matched no parameter), and inputs padded to
# multiples of 32 run as they are (the released backbone needed multiples of 256).
_base_ = 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'
custom_imports = dict(imports=['scalablevit.openmmlab'], allow_failed_imports=False)

pretrained = 'checkpoints/scope_vit_tiny.pth'  # ImageNet-1K weights (none were published: train them)
model = dict(
    backbone=dict(
        _delete_=True,
        type='ScopeViTBackbone',
        arch='tiny',
        out_indices=(1, 2, 3),
        drop_path_rate=0.1,
        norm_outputs=False,  # the stage maps are already BatchNorm-normed
        norm_eval=True,  # 2 images per GPU: keep the ImageNet BatchNorm statistics
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[64, 128, 256], start_level=0, num_outs=5))

optim_wrapper = dict(
    optimizer=dict(_delete_=True, type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={'ls1.gamma': dict(decay_mult=0.), 'ls2.gamma': dict(decay_mult=0.)}))
