"""Write an ImageFolder dataset (`train/<class>/<image>`, `val/<class>/<image>`) as WebDataset tar shards for
`classification/main.py --dataset wds`:

    python tools/make_shards.py --data-path data/imagenet --out data/imagenet-wds [--samples-per-shard 1000]

gives `train-000000.tar`, ... (the training images in a shuffled order, so that every shard mixes the classes),
`val-000000.tar`, ... (in folder order) and `_info.json` in timm's format (per split `num_samples`, `filenames`,
`shard_lengths`, plus `classes`), so timm's `create_dataset('wds/...')` reads them too. Each sample holds the
original image file's bytes (`<key>.jpg`, `.png`, ...) and its label (`<key>.cls`). Each shard is written under a
temporary name and renamed when complete, and `_info.json` comes last: an interrupted run leaves no dataset that
looks finished.
"""
import argparse
import json
import os
import random
from pathlib import Path
from typing import Dict, List, Tuple

import webdataset as wds
from torchvision.datasets import ImageFolder

INFO_FILE = '_info.json'


def image_folder_samples(folder: Path) -> Tuple[List[Tuple[str, int]], List[str]]:
    """(path, label) of every image under `folder` and the class names, as torchvision's ImageFolder sees them."""
    if not folder.is_dir():
        raise SystemExit(f'error: {folder} does not exist (expected an ImageFolder split: <class>/<image>)')
    dataset = ImageFolder(str(folder), loader=lambda path: path)
    return dataset.samples, dataset.classes


def write_split(samples: List[Tuple[str, int]], out: Path, split: str, samples_per_shard: int) -> Dict:
    """Write `split`-NNNNNN.tar shards of `samples`; returns the split's entry of _info.json."""
    filenames, lengths = [], []
    for start in range(0, len(samples), samples_per_shard):
        name = f'{split}-{len(filenames):06d}.tar'
        tmp = out / f'.{name}.tmp'
        with wds.TarWriter(str(tmp)) as writer:
            for index, (path, label) in enumerate(samples[start:start + samples_per_shard], start):
                extension = Path(path).suffix.lstrip('.').lower()
                writer.write({'__key__': f'{split}{index:08d}', extension: Path(path).read_bytes(),
                              'cls': str(label)})
        os.replace(tmp, out / name)
        filenames.append(name)
        lengths.append(min(samples_per_shard, len(samples) - start))
    return {'name': split, 'num_samples': len(samples), 'filenames': filenames, 'shard_lengths': lengths}


def make_shards(data_path: Path, out: Path, samples_per_shard: int = 1000, seed: int = 0) -> Dict:
    """Shard `data_path`/{train,val} into `out`; returns the _info.json written."""
    train, classes = image_folder_samples(data_path / 'train')
    val, val_classes = image_folder_samples(data_path / 'val')
    if classes != val_classes:
        raise SystemExit(f'error: train/ and val/ of {data_path} have different class folders')
    random.Random(seed).shuffle(train)
    out.mkdir(parents=True, exist_ok=True)
    info = {'name': data_path.name, 'classes': classes,
            'splits': {'train': write_split(train, out, 'train', samples_per_shard),
                       'val': write_split(val, out, 'val', samples_per_shard)}}
    tmp = out / f'.{INFO_FILE}.tmp'
    tmp.write_text(json.dumps(info, indent=1))
    os.replace(tmp, out / INFO_FILE)
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--data-path', required=True, type=Path, help='folder holding train/ and val/')
    parser.add_argument('--out', required=True, type=Path, help='folder for the shards and _info.json')
    parser.add_argument('--samples-per-shard', type=int, default=1000,
                        help='images per shard (ImageNet: 1000 gives 1282 training shards of ~110 MB)')
    parser.add_argument('--seed', type=int, default=0, help='seed of the training images\' order')
    args = parser.parse_args()
    if args.samples_per_shard < 1:
        raise SystemExit('error: --samples-per-shard must be at least 1')
    info = make_shards(args.data_path, args.out, args.samples_per_shard, args.seed)
    for split, entry in info['splits'].items():
        print(f'{split}: {entry["num_samples"]} images in {len(entry["filenames"])} shards')
    print(f'wrote {args.out / INFO_FILE} ({len(info["classes"])} classes)')


if __name__ == '__main__':
    main()
