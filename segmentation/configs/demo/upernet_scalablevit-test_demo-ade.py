# CPU smoke run: the real UperNet + ScalableViT-S config (auxiliary head included) with a narrow, randomly
# initialised backbone, 4 iterations on the dataset of make_demo_ade.py (from segmentation/: python make_demo_ade.py).
_base_ = ['../upernet_scalablevit-s_8xb2-160k_ade20k-512x512.py', './_base_/demo_ade.py']

model = dict(
    data_preprocessor=dict(size={{_base_.demo_crop_size}}),
    backbone=dict(arch='test', init_cfg=None),
    decode_head=dict(in_channels=[16, 32, 64, 128]),
    auxiliary_head=dict(in_channels=64))
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        dataset=dict(data_root={{_base_.demo_data_root}}, pipeline={{_base_.demo_train_pipeline}}))
val_dataloader = dict(num_workers=0, persistent_workers=False,
                      dataset=dict(data_root={{_base_.demo_data_root}}, pipeline={{_base_.demo_test_pipeline}}))
test_dataloader = val_dataloader
train_cfg = dict(max_iters=4, val_interval=4)
default_hooks = dict(checkpoint=dict(interval=4), logger=dict(interval=2))
