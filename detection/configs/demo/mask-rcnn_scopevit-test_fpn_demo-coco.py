# CPU smoke run: the real Mask R-CNN + ScopeViT-T 1x config with a narrow, randomly initialised backbone,
# two epochs on the dataset of make_demo_coco.py (run from detection/: python make_demo_coco.py).
_base_ = ['../scope_vit/mask-rcnn_scopevit-t_fpn_1x_coco.py', './_base_/demo_coco.py']

model = dict(
    backbone=dict(arch='test', drop_path_rate=0., init_cfg=None),  # the paper model's drop path hurts a 0.6 M one
    neck=dict(in_channels=[16, 32, 64, 128]),
    roi_head=dict(bbox_head=dict(num_classes=3), mask_head=dict(num_classes=3)),
    test_cfg=dict(rcnn=dict(score_thr=0.0)))  # keep low scores: a few epochs leave the classifier unsure
train_dataloader = {{_base_.demo_train_dataloader}}
val_dataloader = {{_base_.demo_val_dataloader}}
test_dataloader = val_dataloader
val_evaluator = {{_base_.demo_evaluator}}
test_evaluator = val_evaluator
train_cfg = {{_base_.demo_train_cfg}}
param_scheduler = {{_base_.demo_param_scheduler}}
default_hooks = {{_base_.demo_default_hooks}}
