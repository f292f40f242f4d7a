"""ImageNet-style datasets (ImageFolder `train/` and `val/`) and the DeiT train/eval transforms, via timm."""
import argparse
import multiprocessing
import os
import warnings
from pathlib import Path
from typing import Callable, Optional, Tuple

import numpy as np
from PIL import Image, UnidentifiedImageError
from timm.data import create_transform
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from errors import UserInputError


class UnreadableImageError(RuntimeError):
    """An image file that PIL cannot decode (one-argument constructor, so DataLoader workers re-raise it)."""


def to_rgb(image: Image.Image, path: str = 'image') -> Image.Image:
    """`image` as 8-bit RGB, its values mapped by the range of its mode rather than clipped at 255:

    * 16-bit grey ('I;16', 'I;16B', 'I;16L') maps 0..65535 to 0..255; so does 32-bit integer grey ('I', where
      16-bit files also land) when its values fit in 0..65535, otherwise its own minimum..maximum;
    * float grey ('F') maps 0..1 to 0..255 when its values lie there, keeps 0..255 values, otherwise maps its
      own minimum..maximum; NaN or infinite pixels make the image unreadable;
    * 48-bit RGB arrives from PIL as 8-bit RGB (the high byte of each channel); grey, palette (with its
      transparency), alpha (dropped) and CMYK modes convert through PIL.
    """
    mode = image.mode
    if mode.startswith('I;16') or mode in ('I', 'F'):
        values = np.asarray(image, dtype=np.float64)
        if not np.isfinite(values).all():
            raise UnreadableImageError(f'image {path} ({mode}) has NaN or infinite pixels. Replace or delete the '
                                       f'file, or pass --skip-bad-images to skip unreadable files.')
        low, high = (values.min(), values.max()) if values.size else (0.0, 0.0)
        if mode.startswith('I;16') or (mode == 'I' and low >= 0 and high <= 65535):
            values = values * (255 / 65535)
        elif mode == 'F' and low >= 0 and high <= 1:
            values = values * 255
        elif not (mode == 'F' and low >= 0 and high <= 255):
            values = (values - low) * (255 / (high - low)) if high > low else np.zeros_like(values)
        image = Image.fromarray(np.round(values).astype(np.uint8), 'L')
    elif mode == 'P' and 'transparency' in image.info:
        image = image.convert('RGBA')
    return image.convert('RGB')


def load_rgb(path: str) -> Image.Image:
    """Open an image as 8-bit RGB (`to_rgb`: high-bit-depth, grey, palette, alpha and CMYK modes converted)."""
    try:
        with open(path, 'rb') as f:
            image = Image.open(f)
            image.load()
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise UnreadableImageError(
            f'cannot read image {path} ({e}). Replace or delete the file, or pass --skip-bad-images '
            f'to skip unreadable files.') from e
    return to_rgb(image, path)


class CheckedImageFolder(ImageFolder):
    """ImageFolder whose unreadable images raise an error naming the file, or, with `skip_bad_images`,
    are replaced by the next readable image and counted (across DataLoader workers)."""

    def __init__(self, root: str, transform: Optional[Callable] = None, skip_bad_images: bool = False):
        super().__init__(root, transform=transform, loader=load_rgb)
        self.skip_bad_images = skip_bad_images
        self._skipped = multiprocessing.Value('i', 0)

    @property
    def num_skipped(self) -> int:
        return self._skipped.value

    def __getitem__(self, index: int):
        for attempt in range(len(self.samples)):
            try:
                return super().__getitem__((index + attempt) % len(self.samples))
            except UnreadableImageError as e:
                if not self.skip_bad_images:
                    raise
                with self._skipped.get_lock():
                    self._skipped.value += 1
                warnings.warn(f'skipped an unreadable image: {e.__cause__ or e} '
                              f'({self.samples[(index + attempt) % len(self.samples)][0]})')
        raise UnreadableImageError(f'no readable image in {self.root}')


def check_image_folder(folder: Path, split: str) -> None:
    """Raise a UserInputError that says what to fix if `folder` is not an ImageFolder split."""
    if not folder.is_dir():
        raise UserInputError(
            f'--data-path must contain train/ and val/ folders (ImageFolder layout: {split}/<class>/<image>); '
            f'{folder} does not exist.')
    class_dirs = [d for d in folder.iterdir() if d.is_dir()]
    if not class_dirs:
        loose = [f.name for f in folder.iterdir() if f.is_file()][:3]
        raise UserInputError(
            f'{folder} has no class folders: images must be in {split}/<class>/<image>'
            + (f' (found loose files such as {loose})' if loose else '') + '.')
    extensions = tuple(IMG_EXTENSIONS)
    empty = [d.name for d in class_dirs
             if not any(name.lower().endswith(extensions) for _, _, files in os.walk(d) for name in files)]
    if empty:
        raise UserInputError(
            f'class folders without images in {folder}: {sorted(empty)[:5]} (supported extensions: '
            f'{", ".join(IMG_EXTENSIONS)}).')


def build_dataset(is_train: bool, args: argparse.Namespace) -> Tuple[CheckedImageFolder, int]:
    """The train or val split of `args.data_path` and its number of classes."""
    root = Path(args.data_path)
    if not root.is_dir():
        raise UserInputError(f'--data-path {root} does not exist: point it at the folder holding train/ and val/.')
    split = 'train' if is_train else 'val'
    check_image_folder(root / split, split)
    dataset = CheckedImageFolder(str(root / split), transform=build_transform(is_train, args),
                                 skip_bad_images=args.skip_bad_images)
    return dataset, len(dataset.classes)


def build_transform(is_train: bool, args: argparse.Namespace) -> Callable:
    """DeiT's transforms: RandAugment, random erasing etc. for training; resize + center crop for eval (size,
    crop, interpolations and mean/std resolved from the model's pretrained cfg by main.py)."""
    if is_train:
        return create_transform(
            input_size=args.input_size,
            is_training=True,
            color_jitter=args.color_jitter,
            auto_augment=None if args.aa in (None, '', 'none') else args.aa,  # --aa none: no RandAugment
            interpolation=args.train_interpolation,
            re_prob=args.reprob,
            re_mode=args.remode,
            re_count=args.recount,
            mean=args.mean,
            std=args.std,
        )
    return create_transform(
        input_size=args.input_size,
        is_training=False,
        interpolation=args.interpolation,
        crop_pct=args.eval_crop_ratio,
        mean=args.mean,
        std=args.std,
    )
