"""Demo datasets of drawn shapes, small enough to train on a CPU in minutes, in the layouts of the benchmarks:
ImageNet's class folders (`make_demo_image_folder`), COCO (`make_demo_coco`), ADE20K (`make_demo_ade`) and
Cityscapes (`make_demo_cityscapes`), and the command line the generator scripts share (`demo_dataset_main`):

    python detection/make_demo_coco.py [--out DIR] [--train-images N] [--val-images N] [--size WIDTH HEIGHT] [--seed S]

Each dense generator is `make_demo_*(out, train_images, val_images, size, seed)`; the defaults of the command line
are those of the function, so the two agree.
"""
import argparse
import colorsys
import inspect
import json
import math
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

__all__ = ['demo_dataset_main', 'draw_classification_example', 'draw_segmentation_example', 'make_demo_ade',
           'make_demo_cityscapes', 'make_demo_coco', 'make_demo_image_folder']

# ImageNet's layout: a coloured shape per class (hue and shape both depend on it) on a noisy background
IMAGE_FOLDER_SHAPES = ('disc', 'square', 'triangle', 'cross', 'ring')


def draw_classification_example(label: int, num_classes: int, size: int, rng: np.random.Generator,
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

    shape = IMAGE_FOLDER_SHAPES[label % len(IMAGE_FOLDER_SHAPES)]
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


def make_demo_image_folder(out: Path, num_classes: int = 10, train_per_class: int = 100, val_per_class: int = 30,
                            size: int = 64, seed: int = 0, height: Optional[int] = None) -> Path:
    """Write `out`/{train,val}/class_XX/*.jpg and return `out`."""
    rng = np.random.default_rng(seed)
    for split, count in (('train', train_per_class), ('val', val_per_class)):
        for label in range(num_classes):
            folder = out / split / f'class_{label:02d}'
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                image = draw_classification_example(label, num_classes, size, rng, height)
                image.save(folder / f'{i:04d}.jpg', quality=92)
    return out


# COCO: boxes and polygon masks
COCO_CLASSES = ('disc', 'square', 'triangle')
COCO_CORNERS = {'disc': 24, 'square': 4, 'triangle': 3}


def _shape_polygon(name: str, cx: float, cy: float, radius: float, angle: float) -> List[Tuple[float, float]]:
    corners = COCO_CORNERS[name]
    return [(cx + radius * math.cos(angle + 2 * math.pi * i / corners),
             cy + radius * math.sin(angle + 2 * math.pi * i / corners)) for i in range(corners)]


def _polygon_area(points: List[Tuple[float, float]]) -> float:
    xs, ys = np.array(points).T
    return float(abs(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1))) / 2)


def _make_coco_split(root: Path, split: str, num_images: int, size: Tuple[int, int], rng: np.random.Generator,
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
            label = int(rng.integers(len(COCO_CLASSES)))
            radius = rng.uniform(0.1, 0.22) * min(width, height)
            cx, cy = rng.uniform(radius, width - radius), rng.uniform(radius, height - radius)
            points = _shape_polygon(COCO_CLASSES[label], cx, cy, radius, rng.uniform(0, 2 * math.pi))
            draw.polygon(points, fill=tuple(int(c) for c in (np.eye(3)[label] * 200 + rng.integers(0, 55, 3))))
            xs, ys = [p[0] for p in points], [p[1] for p in points]
            x0, y0 = max(min(xs), 0.), max(min(ys), 0.)
            annotations.append(dict(
                id=first_annotation_id + len(annotations), image_id=image_id, category_id=label + 1,
                bbox=[x0, y0, min(max(xs), width) - x0, min(max(ys), height) - y0],
                area=_polygon_area(points), segmentation=[[c for p in points for c in p]], iscrowd=0))
        file_name = f'{image_id:06d}.jpg'
        canvas.save(folder / file_name, quality=95)
        images.append(dict(id=image_id, file_name=file_name, width=width, height=height))
    categories = [dict(id=i + 1, name=name) for i, name in enumerate(COCO_CLASSES)]
    coco = dict(images=images, annotations=annotations, categories=categories)
    (root / 'annotations').mkdir(parents=True, exist_ok=True)
    (root / 'annotations' / f'instances_{split}2017.json').write_text(json.dumps(coco))
    return coco


def make_demo_coco(root: Path, train_images: int = 16, val_images: int = 8, size: Tuple[int, int] = (160, 128),
                   seed: int = 0) -> Path:
    """Write train2017/, val2017/ and annotations/instances_{train,val}2017.json under `root`; returns it."""
    rng = np.random.default_rng(seed)
    train = _make_coco_split(root, 'train', train_images, size, rng, first_annotation_id=1)
    _make_coco_split(root, 'val', val_images, size, rng, first_annotation_id=len(train['annotations']) + 1)
    return root


# ADE20K: labels 0 (unlabelled, ignored by `reduce_zero_label`), 1 (wall: the background), 2..4 (shapes)
ADE_WALL, ADE_FIRST_SHAPE = 1, 2
ADE_SHAPE_CORNERS = (24, 4, 3)  # disc, square, triangle -> labels 2, 3, 4


def draw_segmentation_example(size: Tuple[int, int], rng: np.random.Generator) -> Tuple[Image.Image, Image.Image]:
    """A picture of 1-3 shapes and its label map in ADE20K's convention."""
    width, height = size
    noise = rng.normal(0, 10, (height, width, 1)).repeat(3, axis=2)
    image = Image.fromarray((rng.integers(90, 160) + noise).clip(0, 255).astype(np.uint8), 'RGB')
    label = Image.new('L', size, ADE_WALL)
    draw_image, draw_label = ImageDraw.Draw(image), ImageDraw.Draw(label)
    for _ in range(rng.integers(1, 4)):
        kind = int(rng.integers(len(ADE_SHAPE_CORNERS)))
        radius = rng.uniform(0.12, 0.25) * min(size)
        cx, cy = rng.uniform(radius, width - radius), rng.uniform(radius, height - radius)
        angle = rng.uniform(0, 2 * math.pi)
        corners = ADE_SHAPE_CORNERS[kind]
        points = [(cx + radius * math.cos(angle + 2 * math.pi * i / corners),
                   cy + radius * math.sin(angle + 2 * math.pi * i / corners)) for i in range(corners)]
        draw_image.polygon(points, fill=tuple(int(c) for c in np.eye(3)[kind] * 190 + rng.integers(0, 60, 3)))
        draw_label.polygon(points, fill=ADE_FIRST_SHAPE + kind)
    draw_label.rectangle([0, 0, width - 1, 2], fill=0)  # unlabelled strip: ignored in training and metrics
    return image, label


def make_demo_ade(out: Path, train_images: int = 16, val_images: int = 8, size: Tuple[int, int] = (128, 96),
                  seed: int = 0) -> Path:
    """Write the dataset under `out`/ADEChallengeData2016 and return that folder."""
    root = out / 'ADEChallengeData2016'
    rng = np.random.default_rng(seed)
    for split, count in (('training', train_images), ('validation', val_images)):
        (root / 'images' / split).mkdir(parents=True, exist_ok=True)
        (root / 'annotations' / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image, label = draw_segmentation_example(size, rng)
            name = f'ADE_{split[:5]}_{i:08d}'
            image.save(root / 'images' / split / f'{name}.jpg', quality=95)
            label.save(root / 'annotations' / split / f'{name}.png')
    return root


# Cityscapes: make_demo_ade's pictures, its labels (0 unlabelled, 1 background, 2..4 shapes) as train ids
CITYSCAPES_TRAIN_IDS = np.full(256, 255, dtype=np.uint8)
CITYSCAPES_TRAIN_IDS[[1, 2, 3, 4]] = [0, 11, 13, 7]
CITYSCAPES_CITIES = {'train': 'demotown', 'val': 'testville'}


def make_demo_cityscapes(out: Path, train_images: int = 8, val_images: int = 4, size: Tuple[int, int] = (256, 128),
                         seed: int = 0) -> Path:
    """Write the dataset under `out` and return it."""
    rng = np.random.default_rng(seed)
    for split, count in (('train', train_images), ('val', val_images)):
        city = CITYSCAPES_CITIES[split]
        images, labels = out / 'leftImg8bit' / split / city, out / 'gtFine' / split / city
        images.mkdir(parents=True, exist_ok=True)
        labels.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image, label = draw_segmentation_example(size, rng)
            name = f'{city}_{i:06d}_000019'
            image.save(images / f'{name}_leftImg8bit.png')
            Image.fromarray(CITYSCAPES_TRAIN_IDS[np.asarray(label)]).save(labels / f'{name}_gtFine_labelTrainIds.png')
    return out


MakeDataset = Callable[[Path, int, int, Tuple[int, int], int], Path]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'must be a whole number, got {text!r}') from None
    if value < 1:
        raise argparse.ArgumentTypeError(f'must be at least 1, got {value}')
    return value


def demo_dataset_main(make_dataset: MakeDataset, description: str, default_out: str,
                      argv: Optional[Sequence[str]] = None) -> Path:
    """Parse the generator's flags (`argv`, default `sys.argv[1:]`), write the dataset, say where; returns its
    folder. `description` is the script's docstring (`--help` shows it)."""
    defaults = {name: p.default for name, p in inspect.signature(make_dataset).parameters.items()}
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', default=default_out, help='where to write it (default: %(default)s)')
    parser.add_argument('--train-images', type=_positive_int, default=defaults['train_images'],
                        help='training images (default: %(default)s)')
    parser.add_argument('--val-images', type=_positive_int, default=defaults['val_images'],
                        help='validation images (default: %(default)s)')
    parser.add_argument('--size', type=_positive_int, nargs=2, default=defaults['size'], metavar=('WIDTH', 'HEIGHT'),
                        help='image size in pixels (default: %(default)s)')
    parser.add_argument('--seed', type=int, default=defaults['seed'], help='(default: %(default)s)')
    args = parser.parse_args(argv)
    root = make_dataset(Path(args.out), args.train_images, args.val_images, tuple(args.size), args.seed)
    print(f'wrote {args.train_images} training and {args.val_images} validation images to {root}')
    return root
