# Mask R-CNN + ViTAEv2*-S+VSA, 3x schedule (36 epochs), multi-scale 480-800 training with crops, AdamW lr 1e-4,
# weight decay 0.05 (none on norms and bias tables): the release's settings (its configs follow Swin's), as a
# delta on MMDetection 3.x's own Swin-T config. The primitive of the ViTAEv2+VSA Mask R-CNN configs. Seed
# README: 48.1 box / 42.9 mask AP, 39M parameters.
_base_ = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.py'
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
