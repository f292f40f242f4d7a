"""Train a segmenter from a config (single process; `dist_train.sh` launches several).

    python train.py configs/upernet_scalablevit-s_8xb2-160k_ade20k-512x512.py [--work-dir DIR] [--resume [CKPT]]
"""
from scalablevit.openmmlab.runner import train

if __name__ == '__main__':
    train()
