# Settings shared by the Cityscapes CPU smoke configs: small-scale pipelines and loaders for the dataset that
# make_demo_cityscapes.py generates, and (demo_schedule.py) the smoke run's schedule. Only `demo_*` names, as in
# demo_ade.py.
_base_ = './demo_schedule.py'
demo_data_root = 'data/cityscapes_demo/'
demo_crop_size = (64, 128)
demo_train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=(256, 128), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=demo_crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
demo_test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(256, 128), keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
demo_train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                             dataset=dict(data_root=demo_data_root, pipeline=demo_train_pipeline))
demo_val_dataloader = dict(num_workers=0, persistent_workers=False,
                           dataset=dict(data_root=demo_data_root, pipeline=demo_test_pipeline))
