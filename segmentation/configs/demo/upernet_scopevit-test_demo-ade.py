# CPU smoke run: the real UperNet + ScopeViT-T config with a narrow, randomly initialised backbone,
# 4 iterations on the dataset of make_demo_ade.py (run from segmentation/: python make_demo_ade.py).
_base_ = ['../scope_vit/upernet_scopevit-t_8xb2-160k_ade20k-512x512.py', './_base_/demo_ade.py']

model = dict(
    data_preprocessor=dict(size={{_base_.demo_crop_size}}),
    backbone=dict(arch='test', drop_path_rate=0., init_cfg=None),  # the paper model's drop path hurts a 0.6 M one
    decode_head=dict(in_channels=[16, 32, 64, 128]),
    auxiliary_head=dict(in_channels=64))
train_dataloader = {{_base_.demo_train_dataloader}}
val_dataloader = {{_base_.demo_val_dataloader}}
test_dataloader = val_dataloader
train_cfg = {{_base_.demo_train_cfg}}
default_hooks = {{_base_.demo_default_hooks}}
