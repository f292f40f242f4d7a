# Settings shared by the CPU smoke configs: small-scale pipelines and loaders for the dataset that
# make_demo_coco.py generates, and the smoke run's schedule. Only `demo_*` names, so this file can sit beside a
# model config in _base_ (mmengine refuses a key that two bases both set); each demo config binds them, e.g.
# `train_cfg = {{_base_.demo_train_cfg}}`, merging them into its model config's values.
demo_data_root = 'data/demo_coco/'
demo_metainfo = dict(classes=('disc', 'square', 'triangle'))
demo_train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=(160, 128), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
demo_test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(160, 128), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
demo_train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=demo_data_root, metainfo=demo_metainfo, ann_file='annotations/instances_train2017.json',
                 data_prefix=dict(img='train2017/'), pipeline=demo_train_pipeline))
demo_val_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=demo_data_root, metainfo=demo_metainfo, ann_file='annotations/instances_val2017.json',
                 data_prefix=dict(img='val2017/'), pipeline=demo_test_pipeline))
demo_evaluator = dict(ann_file=demo_data_root + 'annotations/instances_val2017.json')

# two epochs, a 4-iteration warm-up, a log line every 2 iterations
demo_train_cfg = dict(max_epochs=2)
demo_param_scheduler = [dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=4)]
demo_default_hooks = dict(logger=dict(interval=2))
