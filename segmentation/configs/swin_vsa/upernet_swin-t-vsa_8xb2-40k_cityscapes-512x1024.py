# Ours: no official segmentation config exists for VSA. UperNet with a Swin-T+VSA backbone on Cityscapes
# 512x1024 crops, 40k iterations (the seed README: Swin-T 78.9 -> Swin-T+VSA 80.8 mIoU), with MMSegmentation's
# Swin UperNet settings (AdamW lr 6e-5, wd 0.01, 1500 warm-up iterations, poly decay) on its Cityscapes data.
_base_ = [
    'mmseg::_base_/models/upernet_swin.py', 'mmseg::_base_/datasets/cityscapes.py',
    'mmseg::_base_/default_runtime.py', 'mmseg::_base_/schedules/schedule_40k.py'
]
custom_imports = dict(imports=['scalablevit.openmmlab'], allow_failed_imports=False)
crop_size = (512, 1024)
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        _delete_=True,
        type='SwinVSABackbone',
        arch='tiny',
        drop_path_rate=0.3,
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/swin_tiny_vsa_patch4_window7_224.pth')),
    decode_head=dict(in_channels=[96, 192, 384, 768], num_classes=19),
    auxiliary_head=dict(in_channels=384, num_classes=19))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(custom_keys={
        'relative_position_bias_table': dict(decay_mult=0.),
        'norm': dict(decay_mult=0.),
    }))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=1500, end=40000, by_epoch=False),
]
# 8 GPUs x 2 images
train_dataloader = dict(batch_size=2)
