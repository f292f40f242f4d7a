"""Train a detector from a config (single process; `dist_train.sh` launches several).

    python train.py configs/retinanet_scalablevit-s_fpn_1x_coco.py [--work-dir DIR] [--resume [CKPT]] [--amp]
"""
from scalablevit.openmmlab.runner import train

if __name__ == '__main__':
    train()
