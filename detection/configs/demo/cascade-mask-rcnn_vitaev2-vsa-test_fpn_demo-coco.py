# CPU smoke run: the real Cascade Mask R-CNN + ViTAEv2*-S+VSA 1x config (4conv1fc GIoU heads, multi-scale crops)
# with a narrow, randomly initialised backbone, two epochs on the dataset of make_demo_coco.py (run from
# detection/: python make_demo_coco.py). The 4conv1fc heads make it ~13 min on 2 CPU cores: not in the test tiers,
# whose one-step check covers these heads (the Mask R-CNN demo is the end-to-end test).
_base_ = ['../vitae_vsa/cascade-mask-rcnn_vitaev2-s-vsa_fpn_4conv1fc-giou_ms-crop-1x_coco.py', './_base_/demo_coco.py']

# a list in a config replaces its base list: the three stages' heads are restated with 3 classes
_stage_stds = ([0.1, 0.1, 0.2, 0.2], [0.05, 0.05, 0.1, 0.1], [0.033, 0.033, 0.067, 0.067])
model = dict(
    backbone=dict(arch='test', drop_path_rate=0., init_cfg=None),  # the paper model's drop path hurts a 0.6 M one
    neck=dict(in_channels=[16, 32, 64, 128]),
    roi_head=dict(
        bbox_head=[
            dict(type='ConvFCBBoxHead', num_shared_convs=4, num_shared_fcs=1, in_channels=256, conv_out_channels=256,
                 fc_out_channels=1024, roi_feat_size=7, num_classes=3, reg_class_agnostic=False, reg_decoded_bbox=True,
                 bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0., 0., 0., 0.], target_stds=stds),
                 norm_cfg=dict(type='SyncBN', requires_grad=True),
                 loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
                 loss_bbox=dict(type='GIoULoss', loss_weight=10.0))
            for stds in _stage_stds
        ],
        mask_head=dict(num_classes=3)),
    test_cfg=dict(rcnn=dict(score_thr=0.0)))  # keep low scores: a few epochs leave the classifier unsure
train_dataloader = {{_base_.demo_train_dataloader}}
val_dataloader = {{_base_.demo_val_dataloader}}
test_dataloader = val_dataloader
val_evaluator = {{_base_.demo_evaluator}}
test_evaluator = val_evaluator
train_cfg = {{_base_.demo_train_cfg}}
param_scheduler = {{_base_.demo_param_scheduler}}
default_hooks = {{_base_.demo_default_hooks}}
