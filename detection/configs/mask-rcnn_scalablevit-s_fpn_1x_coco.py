# Mask R-CNN + ScalableViT-S, 1x schedule (12 epochs), single scale 1333x800, 8 GPUs x 2 images.
# The primitive of the Mask R-CNN family: the other Mask R-CNN configs are deltas on this one.
_base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'
custom_imports = dict(imports=['scalablevit.openmmlab'], allow_failed_imports=False)

pretrained = 'checkpoints/scalable_vit_small.pth'  # ImageNet-1K weights: ours or the released checkpoint
model = dict(
    backbone=dict(
        _delete_=True,
        type='ScalableViTBackbone',
        arch='small',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[64, 128, 256, 512]))

# Paper, Table 8: AdamW, lr 2e-4, weight decay 1e-4; no decay on norms and the PEG.
# The 500-iteration linear warm-up and the steps at epochs 8 and 11 come from the base schedule.
optim_wrapper = dict(
    optimizer=dict(_delete_=True, type='AdamW', lr=2e-4, betas=(0.9, 0.999), weight_decay=1e-4),
    paramwise_cfg=dict(norm_decay_mult=0., custom_keys={'pos_block': dict(decay_mult=0.)}))
