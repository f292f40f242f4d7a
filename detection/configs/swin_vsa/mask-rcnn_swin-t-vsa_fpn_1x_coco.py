# Ours: no official detection config exists for Swin+VSA. Mask R-CNN with a Swin-T+VSA backbone and
# MMDetection's own Swin-T 1x settings (AdamW lr 1e-4, wd 0.05, no decay on norms and bias tables).
_base_ = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py'
custom_imports = dict(imports=['scalablevit.openmmlab'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='SwinVSABackbone',
        arch='tiny',
        drop_path_rate=0.2,
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/swin_tiny_vsa_patch4_window7_224.pth')))
