# Settings shared by the ADE20K CPU smoke configs: small-scale pipelines and loaders for the dataset that
# make_demo_ade.py generates, and (demo_schedule.py) the smoke run's schedule. Only `demo_*` names, so this file
# can sit beside a model config in _base_ (mmengine refuses a key that two bases both set); each demo config binds
# them, e.g. `train_cfg = {{_base_.demo_train_cfg}}`, merging them into its model config's values.
_base_ = './demo_schedule.py'
demo_data_root = 'data/demo_ade/ADEChallengeData2016'
demo_crop_size = (64, 64)
demo_train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=(512, 96), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=demo_crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
demo_test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(512, 96), keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
demo_train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                             dataset=dict(data_root=demo_data_root, pipeline=demo_train_pipeline))
demo_val_dataloader = dict(num_workers=0, persistent_workers=False,
                           dataset=dict(data_root=demo_data_root, pipeline=demo_test_pipeline))
