# Mask R-CNN + ViTAEv2*-S+VSA, 1x schedule (12 epochs) with the 3x config's multi-scale crops (the release's
# "mstrain_480-800_adamw_1x"). Seed README: 45.9 box / 41.4 mask AP; its 37M disagrees with the 39M of the
# 3x row for the same backbone (the models build 39.4M).
_base_ = './mask-rcnn_vitaev2-s-vsa_fpn_ms-crop-3x_coco.py'

max_epochs = 12
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=1000),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[8, 11], gamma=0.1),
]
