# CPU smoke run: the real UperNet + Swin-T+VSA Cityscapes config with a narrow, randomly initialised backbone,
# 4 iterations on the dataset of make_demo_cityscapes.py (from segmentation/: python make_demo_cityscapes.py).
_base_ = ['../swin_vsa/upernet_swin-t-vsa_8xb2-40k_cityscapes-512x1024.py', './_base_/demo_cityscapes.py']

model = dict(
    data_preprocessor=dict(size={{_base_.demo_crop_size}}),
    backbone=dict(arch='test', drop_path_rate=0., init_cfg=None),  # the paper model's drop path hurts a 0.6 M one
    decode_head=dict(in_channels=[16, 32, 64, 128], channels=32),
    auxiliary_head=dict(in_channels=64, channels=16))
train_dataloader = {{_base_.demo_train_dataloader}}
val_dataloader = {{_base_.demo_val_dataloader}}
test_dataloader = val_dataloader
train_cfg = {{_base_.demo_train_cfg}}
default_hooks = {{_base_.demo_default_hooks}}
