# Cascade Mask R-CNN + ViTAEv2*-S+VSA with 4conv1fc box heads and GIoU loss, 3x multi-scale with crops: the
# release's settings, as a delta on MMDetection 3.x's ConvNeXt cascade config (same heads and augmentation)
# with the Swin optimizer (AdamW lr 1e-4, wd 0.05, no decay on norms and bias tables; fp32). The primitive of
# the ViTAEv2+VSA cascade configs. Seed README: 51.9 box / 44.8 mask AP, 77M parameters.
_base_ = 'mmdet::convnext/cascade-mask-rcnn_convnext-t-p4-w7_fpn_4conv1fc-giou_amp-ms-crop-3x_coco.py'
custom_imports = dict(imports=['scalablevit.openmmlab'], allow_failed_imports=False)

pretrained = 'checkpoints/vitaev2_vsa_s.pth'  # ImageNet-1K weights (none were published: train them)
model = dict(
    backbone=dict(
        _delete_=True,
        type='ViTAEv2VSABackbone',
        arch='s',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.1,
        norm_eval=True,  # 2 images per GPU: keep the ImageNet BatchNorm statistics of the PCMs
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[64, 128, 256, 512]))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={
        'relative_position_bias_table': dict(decay_mult=0.),
        'norm': dict(decay_mult=0.),
    }))
