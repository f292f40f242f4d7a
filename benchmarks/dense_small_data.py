"""Do the tiny backbones learn dense tasks as well as a same-size CNN on small real data?

The data are real textures: eleven 96x192 regions of real photographs (scikit-learn's two sample photos and
matplotlib's Grace Hopper portrait), chosen automatically as the most different in colour and texture among
every such region, are the classes. Training images take the left half of each region, validation images the
right half, so no pixel of a validation image was seen in training.

- `seg`: 128x128 mosaics of 3-5 Voronoi cells, each filled with a rescaled, flipped crop of one class's texture,
  labelled per pixel (11 classes), 400 train / 100 val images in ADE20K's folder layout: the classic
  texture-segmentation task (Brodatz mosaics) on real photographs;
- `cls`: 64x64 crops of one texture, 11 classes x (150 train + 40 val), ImageFolder layout (classification/main.py
  pre-trains on it).

    python benchmarks/dense_small_data.py --out work/small_data [--backbones ...] [--seeds 0 1 2] [--iters 1500]

writes the data, pre-trains each transformer backbone once with classification/main.py, fine-tunes Semantic FPN
(the demo config's neck and head at 64 channels, AdamW lr 2e-3, batch 4, poly decay) for every backbone x
setting x seed through segmentation/train.py, and prints mIoU (mean and spread over seeds); results go to
OUT/results.json, so an interrupted run continues where it stopped. Needs scikit-learn (requirements-dev.txt).
"""
import argparse
import ast
import json
import re
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SEG_DEMO = ROOT / 'segmentation' / 'configs' / 'demo' / 'fpn_scalablevit-test_demo-ade.py'
HEAD_WIDTH = 64  # the demo's Semantic FPN at a quarter of its width (256, 128): the backbones' cost dominates
CLASSES = tuple(f'texture_{i:02d}' for i in range(11))

# backbone name -> (config lines for model.backbone, timm model pre-trained by main.py or None)
BACKBONES: Dict[str, Tuple[str, str]] = {
    'scalable_vit_test': ("dict(type='ScalableViTBackbone', arch='test', drop_path_rate={drop_path})",
                          'scalable_vit_test'),
    'swin_vsa_test': ("dict(type='SwinVSABackbone', arch='test', drop_path_rate={drop_path})", 'swin_vsa_test'),
    'vitaev2_vsa_test': ("dict(type='ViTAEv2VSABackbone', arch='test', drop_path_rate={drop_path})",
                         'vitaev2_vsa_test'),
    'scope_vit_test': ("dict(type='ScopeViTBackbone', arch='test', drop_path_rate={drop_path})", 'scope_vit_test'),
    'resnet18_quarter': ("dict(type='ResNetV1c', depth=18, base_channels=16, num_stages=4, out_indices=(0, 1, 2, 3),"
                         " dilations=(1, 1, 1, 1), strides=(1, 2, 2, 2), norm_cfg=dict(type='BN', requires_grad=True),"
                         " norm_eval=False, style='pytorch', contract_dilation=True)", None),
}


def photographs() -> List[np.ndarray]:
    from matplotlib import cbook
    from sklearn.datasets import load_sample_images
    photos = list(load_sample_images().images)
    photos.append(np.asarray(Image.open(cbook.get_sample_data('grace_hopper.jpg')).convert('RGB')))
    return photos


def texture_regions(photos: List[np.ndarray], count: int = len(CLASSES), height: int = 96,
                    width: int = 192) -> List[np.ndarray]:
    """The `count` most different (height, width) regions of a grid over the photographs: greedy farthest
    points in (mean colour, contrast, edge energy), each feature scaled to unit spread."""
    regions = [photo[top:top + height, left:left + width].astype(np.float64)
               for photo in photos
               for top in range(0, photo.shape[0] - height + 1, height)
               for left in range(0, photo.shape[1] - width + 1, width)]
    grey = [region.mean(axis=2) for region in regions]
    features = np.array([[*region.mean(axis=(0, 1)), g.std(), np.abs(np.diff(g, axis=0)).mean(),
                          np.abs(np.diff(g, axis=1)).mean()] for region, g in zip(regions, grey)])
    features = (features - features.mean(0)) / features.std(0)
    chosen = [int(np.argmax(np.linalg.norm(features - features.mean(0), axis=1)))]
    while len(chosen) < count:
        distance = np.min(np.linalg.norm(features[:, None] - features[chosen][None], axis=2), axis=1)
        chosen.append(int(np.argmax(distance)))
    return [regions[i] for i in chosen]


def texture_crop(region: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A random square crop (60-100 % of the region's side), flipped at random, resized to size x size."""
    side = int(region.shape[0] * rng.uniform(0.6, 1.0))
    top, left = rng.integers(0, region.shape[0] - side + 1), rng.integers(0, region.shape[1] - side + 1)
    crop = region[top:top + side, left:left + side]
    crop = crop[:, ::-1] if rng.random() < 0.5 else crop
    return np.asarray(Image.fromarray(crop.astype(np.uint8)).resize((size, size), Image.BILINEAR), np.float64)


def mosaic(halves: List[np.ndarray], size: int, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """A size x size Voronoi mosaic of 3-5 cells, each a texture crop of a random class; (image, labels)."""
    seeds = rng.uniform(0, size, (int(rng.integers(3, 6)), 2))
    rows, cols = np.mgrid[0:size, 0:size]
    cell = np.argmin((rows[..., None] - seeds[:, 0]) ** 2 + (cols[..., None] - seeds[:, 1]) ** 2, axis=2)
    classes = rng.integers(0, len(halves), len(seeds))
    image = np.zeros((size, size, 3))
    for index, label in enumerate(classes):
        image[cell == index] = texture_crop(halves[label], size, rng)[cell == index]
    return image, classes[cell].astype(np.uint8)


def make_data(out: Path, seed: int = 0) -> None:
    """Write OUT/seg (ADE20K layout, 400 + 100 mosaics) and OUT/cls (ImageFolder, 11 x (150 + 40) crops)."""
    if (out / 'done').exists():
        return
    rng = np.random.default_rng(seed)
    regions = texture_regions(photographs())
    halves = {0: [r[:, :r.shape[1] // 2] for r in regions], 1: [r[:, r.shape[1] // 2:] for r in regions]}
    for split, half, count in (('training', 0, 400), ('validation', 1, 100)):
        for kind in ('images', 'annotations'):
            (out / 'seg' / kind / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image, label = mosaic(halves[half], 128, rng)
            Image.fromarray(image.astype(np.uint8)).save(out / 'seg' / 'images' / split / f'{i:04d}.jpg', quality=95)
            Image.fromarray(label).save(out / 'seg' / 'annotations' / split / f'{i:04d}.png')
    for split, half, per_class in (('train', 0, 150), ('val', 1, 40)):
        for label, name in enumerate(CLASSES):
            folder = out / 'cls' / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                crop = texture_crop(halves[half][label], 64, rng)
                Image.fromarray(crop.astype(np.uint8)).save(folder / f'{i:04d}.jpg', quality=95)
    (out / 'done').write_text('ok\n')


def pretrain(out: Path, model: str, epochs: int) -> Path:
    """classification/main.py's recipe on the texture crops (64x64); the checkpoint of its last epoch."""
    folder = out / 'pretrained' / model
    checkpoint = folder / 'checkpoint.pth'
    if (folder / 'done').exists():
        return checkpoint
    command = [sys.executable, 'main.py', '--model', model, '--data-path', str(out / 'cls'), '--input-size', '64',
               '--batch-size', '64', '--epochs', str(epochs),
               '--lr', '1e-3', '--warmup-epochs', '5', '--num_workers', '2', '--output_dir', str(folder)]
    subprocess.run(command, cwd=ROOT / 'classification', check=True, stdout=subprocess.DEVNULL)
    (folder / 'done').write_text('ok\n')
    return checkpoint


def fine_tune_config(out: Path, backbone: str, pretrained: Optional[Path], iters: int, seed: int, lr: float,
                     drop_path: float, backbone_lr_mult: float = 1.0, **backbone_kwargs: Any) -> str:
    """The Semantic FPN demo config on the texture mosaics for one backbone; `backbone_kwargs` are the
    ablations' extra backbone arguments (e.g. norm_outputs=False)."""
    backbone_cfg = BACKBONES[backbone][0].format(drop_path=drop_path)
    extra = ''.join(f', {key}={value!r}' for key, value in backbone_kwargs.items())
    init = f"dict(type='Pretrained', checkpoint='{pretrained}')" if pretrained else 'None'
    data = out / 'seg'
    return f'''_base_ = ['{SEG_DEMO}']
crop_size = (128, 128)
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(_delete_=True, init_cfg={init}{extra}, **{backbone_cfg}),
    neck=dict(in_channels=[16, 32, 64, 128], out_channels={HEAD_WIDTH}),
    decode_head=dict(in_channels=[{HEAD_WIDTH}] * 4, channels={HEAD_WIDTH}, num_classes={len(CLASSES)}))
metainfo = dict(classes={CLASSES!r})
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=False),
    dict(type='RandomResize', scale=(128, 128), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(128, 128), keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=False),
    dict(type='PackSegInputs'),
]
dataset = dict(type='BaseSegDataset', data_root='{data}', metainfo=metainfo, img_suffix='.jpg',
               seg_map_suffix='.png', reduce_zero_label=False)
train_dataloader = dict(batch_size=4, num_workers=1, persistent_workers=True,
                        dataset=dict(_delete_=True, data_prefix=dict(img_path='images/training',
                                     seg_map_path='annotations/training'), pipeline=train_pipeline, **dataset))
val_dataloader = dict(batch_size=1, num_workers=1, persistent_workers=True,
                      dataset=dict(_delete_=True, data_prefix=dict(img_path='images/validation',
                                   seg_map_path='annotations/validation'), pipeline=test_pipeline, **dataset))
test_dataloader = val_dataloader
optim_wrapper = dict(optimizer=dict(lr={lr}), paramwise_cfg=dict(custom_keys={{
    'backbone': dict(lr_mult={backbone_lr_mult}), 'pos_block': dict(lr_mult={backbone_lr_mult}, decay_mult=0.)}}))
param_scheduler = [dict(type='PolyLR', power=0.9, eta_min=0., begin=0, end={iters}, by_epoch=False)]
train_cfg = dict(max_iters={iters}, val_interval={iters})
default_hooks = dict(checkpoint=dict(interval={iters}), logger=dict(interval=100))
randomness = dict(seed={seed})
'''


def fine_tune(out: Path, name: str, config: str) -> float:
    """segmentation/train.py on the config; the final mIoU."""
    work = out / 'runs' / name
    work.mkdir(parents=True, exist_ok=True)
    (work / 'config.py').write_text(config)
    log = work / 'train.log'
    with open(log, 'w') as f:
        subprocess.run([sys.executable, 'train.py', str(work / 'config.py'), '--work-dir', str(work)],
                       cwd=ROOT / 'segmentation', check=True, stdout=f, stderr=subprocess.STDOUT)
    scalars = sorted(work.glob('*/vis_data/scalars.json'))[-1]
    lines = [json.loads(line) for line in scalars.read_text().splitlines()]
    return [line['mIoU'] for line in lines if 'mIoU' in line][-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--out', type=Path, default=Path('work/small_data'))
    parser.add_argument('--backbones', nargs='+', default=list(BACKBONES), choices=list(BACKBONES))
    parser.add_argument('--settings', nargs='+', default=['scratch', 'pretrained'],
                        help='scratch | pretrained | NAME:scratch|pretrained:KEY=VALUE,... where KEY is lr, '
                             'drop_path, backbone_lr_mult or a backbone argument (e.g. norm_outputs=False)')
    parser.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2])
    parser.add_argument('--iters', type=int, default=1500)
    parser.add_argument('--pretrain-epochs', type=int, default=60)
    parser.add_argument('--drop-path', type=float, default=0.1)
    parser.add_argument('--lr', type=float, default=2e-3)
    args = parser.parse_args()
    out = args.out.resolve()
    make_data(out)
    results_path = out / 'results.json'
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    for backbone in args.backbones:
        for setting in args.settings:
            name, _, options = setting.partition(':')
            base, _, overrides = options.partition(':') if options else (name, '', '')
            values: Dict[str, Any] = dict(drop_path=args.drop_path, lr=args.lr)
            for item in filter(None, re.split(r',(?=\w+=)', overrides)):  # sr_ratios=(4,2,1,1) stays whole
                key, _, value = item.partition('=')
                values[key] = ast.literal_eval(value)
            timm_name = BACKBONES[backbone][1]
            if base == 'pretrained' and timm_name is None:
                continue
            for seed in args.seeds:
                key = f'{backbone}/{name}/seed{seed}'
                if key in results:
                    continue
                pretrained = pretrain(out, timm_name, args.pretrain_epochs) if base == 'pretrained' else None
                config = fine_tune_config(out, backbone, pretrained, args.iters, seed, **values)
                results[key] = fine_tune(out, key.replace('/', '_'), config)
                results_path.write_text(json.dumps(results, indent=1))
                print(f'{key}: mIoU {results[key]:.2f}', flush=True)
    rows: Dict[str, List[float]] = {}
    for key, value in results.items():
        rows.setdefault(key.rsplit('/', 1)[0], []).append(value)
    print(f'{"backbone / setting":44} {"mIoU":>6} {"spread":>7} seeds')
    for row, values in rows.items():
        spread = (max(values) - min(values)) / 2
        print(f'{row:44} {statistics.mean(values):6.2f} {spread:7.2f} {len(values)}')


if __name__ == '__main__':
    main()
