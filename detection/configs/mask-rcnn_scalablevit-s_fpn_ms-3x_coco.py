# Mask R-CNN + ScalableViT-S, 3x schedule (36 epochs, steps at 27 and 33) with multi-scale training:
# short side 480-800, long side at most 1333. Paper, Table 8: lr 1e-4, weight decay 0.05.
_base_ = './mask-rcnn_scalablevit-s_fpn_1x_coco.py'

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomResize', scale=[(1333, 480), (1333, 800)], keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))

max_epochs = 36
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[27, 33], gamma=0.1),
]
optim_wrapper = dict(optimizer=dict(lr=1e-4, weight_decay=0.05))
