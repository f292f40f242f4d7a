"""Generate a small, learnable image-classification dataset in ImageFolder layout (train/ and val/).

Each class is a coloured shape (hue and shape both depend on the class) at a random position, size and
rotation on a noisy background, so a model can learn it in minutes on a CPU while chance stays at 1/classes.
"""
import argparse
import colorsys
import math
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ('disc', 'square', 'triangle', 'cross', 'ring')


def draw_example(label: int, num_classes: int, size: int, rng: np.random.Generator,
                 height: Optional[int] = None) -> Image.Image:
    """One `size` wide, `height` (default: `size`) tall image of class `label`."""
    width, height = size, height or size
    background = rng.integers(60, 196) + rng.normal(0, 18, (height, width, 1)).repeat(3, axis=2)
    image = Image.fromarray(background.clip(0, 255).astype(np.uint8), 'RGB')
    draw = ImageDraw.Draw(image)

    hue = (label / num_classes + rng.uniform(-0.02, 0.02)) % 1.0
    color = tuple(int(255 * c) for c in colorsys.hsv_to_rgb(hue, rng.uniform(0.7, 1.0), rng.uniform(0.75, 1.0)))
    radius = rng.uniform(0.22, 0.38) * min(width, height)
    cx, cy = rng.uniform(radius, width - radius), rng.uniform(radius, height - radius)
    angle = rng.uniform(0, 2 * math.pi)

    def polygon(corners: int, scale: float = 1.0):
        return [(cx + scale * radius * math.cos(angle + 2 * math.pi * i / corners),
                 cy + scale * radius * math.sin(angle + 2 * math.pi * i / corners)) for i in range(corners)]

    shape = SHAPES[label % len(SHAPES)]
    if shape == 'disc':
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=color)
    elif shape == 'square':
        draw.polygon(polygon(4), fill=color)
    elif shape == 'triangle':
        draw.polygon(polygon(3), fill=color)
    elif shape == 'cross':
        width = radius / 3
        for a in (angle, angle + math.pi / 2):
            dx, dy = math.cos(a), math.sin(a)
            draw.polygon([(cx + radius * dx - width * dy, cy + radius * dy + width * dx),
                          (cx + radius * dx + width * dy, cy + radius * dy - width * dx),
                          (cx - radius * dx + width * dy, cy - radius * dy - width * dx),
                          (cx - radius * dx - width * dy, cy - radius * dy + width * dx)], fill=color)
    else:
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], outline=color,
                     width=max(2, min(width, height) // 12))
    return image


def make_dataset(out: Path, num_classes: int = 10, train_per_class: int = 100, val_per_class: int = 30,
                 size: int = 64, seed: int = 0, height: Optional[int] = None) -> Path:
    """Write `out`/{train,val}/class_XX/*.jpg and return `out`."""
    rng = np.random.default_rng(seed)
    for split, count in (('train', train_per_class), ('val', val_per_class)):
        for label in range(num_classes):
            folder = out / split / f'class_{label:02d}'
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                draw_example(label, num_classes, size, rng, height).save(folder / f'{i:04d}.jpg', quality=92)
    return out


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
    out = make_dataset(Path(args.out), args.classes, args.train_per_class, args.val_per_class, args.size, args.seed,
                       args.height)
    print(f'wrote {args.classes} classes x ({args.train_per_class} train + {args.val_per_class} val) images to {out}')


if __name__ == '__main__':
    main()
