# RetinaNet + ScalableViT-S, 1x schedule (12 epochs), single scale 1333x800, 8 GPUs x 2 images.
# The primitive of the RetinaNet family: the other RetinaNet configs are deltas on this one.
# The FPN takes stages 1-3 (strides 8-32) and adds P6/P7 from the last input, as MMDetection's Swin RetinaNet:
# stage 0 feeds nothing in RetinaNet, so it is not returned (an unused output would leave its norm without
# gradients and stop multi-GPU DDP).
_base_ = 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'
custom_imports = dict(imports=['scalablevit.openmmlab'], allow_failed_imports=False)

pretrained = 'checkpoints/scalable_vit_small.pth'  # ImageNet-1K weights: ours or the released checkpoint
model = dict(
    backbone=dict(
        _delete_=True,
        type='ScalableViTBackbone',
        arch='small',
        out_indices=(1, 2, 3),
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[128, 256, 512], start_level=0, num_outs=5))

# Paper, Table 8: AdamW, lr 1e-4, weight decay 1e-4; no decay on norms and the PEG.
# The 500-iteration linear warm-up and the steps at epochs 8 and 11 come from the base schedule.
optim_wrapper = dict(
    optimizer=dict(_delete_=True, type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-4),
    paramwise_cfg=dict(norm_decay_mult=0., custom_keys={'pos_block': dict(decay_mult=0.)}))
