# Ours: Mask R-CNN with Swin-T+VSA, MMDetection's Swin-T 3x settings (multi-scale training with crops, 36 epochs).
_base_ = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.py'
custom_imports = dict(imports=['scalablevit.openmmlab'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='SwinVSABackbone',
        arch='tiny',
        drop_path_rate=0.2,
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/swin_tiny_vsa_patch4_window7_224.pth')))
