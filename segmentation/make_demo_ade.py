"""Generate a small semantic-segmentation dataset in ADE20K's layout and label convention.

    python make_demo_ade.py --out data/demo_ade
writes ADEChallengeData2016/images/{training,validation}/*.jpg and annotations/{training,validation}/*.png.
Labels follow ADE20K: 0 is "other" (ignored through `reduce_zero_label`), 1..150 are the classes; here the
background is class 1 (wall), the shapes are classes 2-4, and a border strip is left at 0.
"""
import math
from pathlib import Path
from typing import Tuple

import numpy as np
from PIL import Image, ImageDraw

from scalablevit.demo_data import demo_dataset_main

WALL, FIRST_SHAPE = 1, 2
SHAPE_CORNERS = (24, 4, 3)  # disc, square, triangle -> labels 2, 3, 4


def draw_example(size: Tuple[int, int], rng: np.random.Generator) -> Tuple[Image.Image, Image.Image]:
    width, height = size
    noise = rng.normal(0, 10, (height, width, 1)).repeat(3, axis=2)
    image = Image.fromarray((rng.integers(90, 160) + noise).clip(0, 255).astype(np.uint8), 'RGB')
    label = Image.new('L', size, WALL)
    draw_image, draw_label = ImageDraw.Draw(image), ImageDraw.Draw(label)
    for _ in range(rng.integers(1, 4)):
        kind = int(rng.integers(len(SHAPE_CORNERS)))
        radius = rng.uniform(0.12, 0.25) * min(size)
        cx, cy = rng.uniform(radius, width - radius), rng.uniform(radius, height - radius)
        angle = rng.uniform(0, 2 * math.pi)
        corners = SHAPE_CORNERS[kind]
        points = [(cx + radius * math.cos(angle + 2 * math.pi * i / corners),
                   cy + radius * math.sin(angle + 2 * math.pi * i / corners)) for i in range(corners)]
        draw_image.polygon(points, fill=tuple(int(c) for c in np.eye(3)[kind] * 190 + rng.integers(0, 60, 3)))
        draw_label.polygon(points, fill=FIRST_SHAPE + kind)
    draw_label.rectangle([0, 0, width - 1, 2], fill=0)  # unlabelled strip: ignored in training and metrics
    return image, label


def make_dataset(out: Path, train_images: int = 16, val_images: int = 8, size: Tuple[int, int] = (128, 96),
                 seed: int = 0) -> Path:
    """Write the dataset under `out`/ADEChallengeData2016 and return that folder."""
    root = out / 'ADEChallengeData2016'
    rng = np.random.default_rng(seed)
    for split, count in (('training', train_images), ('validation', val_images)):
        (root / 'images' / split).mkdir(parents=True, exist_ok=True)
        (root / 'annotations' / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image, label = draw_example(size, rng)
            name = f'ADE_{split[:5]}_{i:08d}'
            image.save(root / 'images' / split / f'{name}.jpg', quality=95)
            label.save(root / 'annotations' / split / f'{name}.png')
    return root


if __name__ == '__main__':
    demo_dataset_main(make_dataset, __doc__, default_out='data/demo_ade')
