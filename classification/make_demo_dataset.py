"""Generate a small, learnable image-classification dataset in ImageFolder layout (train/ and val/).

Each class is a coloured shape (hue and shape both depend on the class) at a random position, size and
rotation on a noisy background, so a model can learn it in minutes on a CPU while chance stays at 1/classes.
"""
import argparse
from pathlib import Path

from scalablevit.demo_data import make_demo_image_folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--out', default='data/demo', help='output folder (gets train/ and val/)')
    parser.add_argument('--classes', type=int, default=10)
    parser.add_argument('--train-per-class', type=int, default=100)
    parser.add_argument('--val-per-class', type=int, default=30)
    parser.add_argument('--size', type=int, default=64, help='image width (and height, unless --height) in pixels')
    parser.add_argument('--height', type=int, help='image height in pixels (ImageNet-like: --size 500 --height 375)')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    out = make_demo_image_folder(Path(args.out), args.classes, args.train_per_class, args.val_per_class, args.size,
                                 args.seed, args.height)
    print(f'wrote {args.classes} classes x ({args.train_per_class} train + {args.val_per_class} val) images to {out}')


if __name__ == '__main__':
    main()
