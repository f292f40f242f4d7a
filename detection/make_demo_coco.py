"""Generate a small COCO-format detection/instance-segmentation dataset of coloured shapes.

    python make_demo_coco.py --out data/demo_coco
writes train2017/, val2017/ and annotations/instances_{train,val}2017.json (boxes and polygon masks), the
layout of data/coco/, so a config only needs `data_root` and the class names (`CLASSES`) changed.
"""
import json
import math
from pathlib import Path
from typing import List, Tuple

import numpy as np
from PIL import Image, ImageDraw

from scalablevit.demo_data import demo_dataset_main

CLASSES = ('disc', 'square', 'triangle')
CORNERS = {'disc': 24, 'square': 4, 'triangle': 3}


def shape_polygon(name: str, cx: float, cy: float, radius: float, angle: float) -> List[Tuple[float, float]]:
    corners = CORNERS[name]
    return [(cx + radius * math.cos(angle + 2 * math.pi * i / corners),
             cy + radius * math.sin(angle + 2 * math.pi * i / corners)) for i in range(corners)]


def polygon_area(points: List[Tuple[float, float]]) -> float:
    xs, ys = np.array(points).T
    return float(abs(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1))) / 2)


def make_split(root: Path, split: str, num_images: int, size: Tuple[int, int], rng: np.random.Generator,
               first_annotation_id: int) -> dict:
    width, height = size
    folder = root / f'{split}2017'
    folder.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        noise = rng.normal(0, 12, (height, width, 1)).repeat(3, axis=2)
        canvas = Image.fromarray((rng.integers(70, 180) + noise).clip(0, 255).astype(np.uint8), 'RGB')
        draw = ImageDraw.Draw(canvas)
        for _ in range(rng.integers(1, 4)):
            label = int(rng.integers(len(CLASSES)))
            radius = rng.uniform(0.1, 0.22) * min(width, height)
            cx, cy = rng.uniform(radius, width - radius), rng.uniform(radius, height - radius)
            points = shape_polygon(CLASSES[label], cx, cy, radius, rng.uniform(0, 2 * math.pi))
            draw.polygon(points, fill=tuple(int(c) for c in (np.eye(3)[label] * 200 + rng.integers(0, 55, 3))))
            xs, ys = [p[0] for p in points], [p[1] for p in points]
            x0, y0 = max(min(xs), 0.), max(min(ys), 0.)
            annotations.append(dict(
                id=first_annotation_id + len(annotations), image_id=image_id, category_id=label + 1,
                bbox=[x0, y0, min(max(xs), width) - x0, min(max(ys), height) - y0],
                area=polygon_area(points), segmentation=[[c for p in points for c in p]], iscrowd=0))
        file_name = f'{image_id:06d}.jpg'
        canvas.save(folder / file_name, quality=95)
        images.append(dict(id=image_id, file_name=file_name, width=width, height=height))
    categories = [dict(id=i + 1, name=name) for i, name in enumerate(CLASSES)]
    coco = dict(images=images, annotations=annotations, categories=categories)
    (root / 'annotations').mkdir(parents=True, exist_ok=True)
    (root / 'annotations' / f'instances_{split}2017.json').write_text(json.dumps(coco))
    return coco


def make_dataset(root: Path, train_images: int = 16, val_images: int = 8, size: Tuple[int, int] = (160, 128),
                 seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    train = make_split(root, 'train', train_images, size, rng, first_annotation_id=1)
    make_split(root, 'val', val_images, size, rng, first_annotation_id=len(train['annotations']) + 1)
    return root


if __name__ == '__main__':
    demo_dataset_main(make_dataset, __doc__, default_out='data/demo_coco')
