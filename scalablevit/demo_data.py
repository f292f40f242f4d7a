"""The command line of the demo dataset generators (`detection/make_demo_coco.py`, `segmentation/make_demo_ade.py`,
`segmentation/make_demo_cityscapes.py`): each has a `make_dataset(out, train_images, val_images, size, seed)` that
writes a dataset of drawn shapes in a benchmark's layout, and runs it with the flags below. The defaults of the
counts, size and seed are those of the script's `make_dataset`, so the function and its command line agree.

    python make_demo_ade.py [--out DIR] [--train-images N] [--val-images N] [--size WIDTH HEIGHT] [--seed S]
"""
import argparse
import inspect
from pathlib import Path
from typing import Callable, Optional, Sequence, Tuple

__all__ = ['demo_dataset_main']

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
