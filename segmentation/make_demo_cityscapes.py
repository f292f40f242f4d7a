"""Generate a small semantic-segmentation dataset in Cityscapes' layout and label convention.

    python make_demo_cityscapes.py --out data/cityscapes_demo
writes leftImg8bit/{train,val}/<city>/<name>_leftImg8bit.png and gtFine/{train,val}/<city>/
<name>_gtFine_labelTrainIds.png, what MMSegmentation's CityscapesDataset reads. Labels are train ids (0..18,
255 ignored): the background is road (0), the shapes are person, car and traffic sign (11, 13, 7), and a border
strip is 255. The pictures are those of make_demo_ade.py.
"""
from pathlib import Path
from typing import Tuple

import numpy as np
from make_demo_ade import draw_example
from PIL import Image

from scalablevit.demo_data import demo_dataset_main

# make_demo_ade's labels (0 unlabelled, 1 background, 2..4 shapes) -> Cityscapes train ids
TRAIN_IDS = np.full(256, 255, dtype=np.uint8)
TRAIN_IDS[[1, 2, 3, 4]] = [0, 11, 13, 7]
CITIES = {'train': 'demotown', 'val': 'testville'}


def make_dataset(out: Path, train_images: int = 8, val_images: int = 4, size: Tuple[int, int] = (256, 128),
                 seed: int = 0) -> Path:
    """Write the dataset under `out` and return it."""
    rng = np.random.default_rng(seed)
    for split, count in (('train', train_images), ('val', val_images)):
        images, labels = out / 'leftImg8bit' / split / CITIES[split], out / 'gtFine' / split / CITIES[split]
        images.mkdir(parents=True, exist_ok=True)
        labels.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image, label = draw_example(size, rng)
            name = f'{CITIES[split]}_{i:06d}_000019'
            image.save(images / f'{name}_leftImg8bit.png')
            Image.fromarray(TRAIN_IDS[np.asarray(label)]).save(labels / f'{name}_gtFine_labelTrainIds.png')
    return out


if __name__ == '__main__':
    demo_dataset_main(make_dataset, __doc__, default_out='data/cityscapes_demo')
