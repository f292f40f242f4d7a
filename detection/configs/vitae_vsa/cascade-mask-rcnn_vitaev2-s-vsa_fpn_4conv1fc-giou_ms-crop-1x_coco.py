# Cascade Mask R-CNN + ViTAEv2*-S+VSA, 1x schedule (12 epochs) with the 3x config's multi-scale crops. Seed
# README: 49.8 box / 43.0 mask AP, 77M parameters.
_base_ = './cascade-mask-rcnn_vitaev2-s-vsa_fpn_4conv1fc-giou_ms-crop-3x_coco.py'

max_epochs = 12
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=1000),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[8, 11], gamma=0.1),
]
