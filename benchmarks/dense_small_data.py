"""Do the tiny backbones learn dense tasks as well as a same-size CNN on small real data?

The data are real textures: eleven 96x192 regions of real photographs (scikit-learn's two sample photos and
matplotlib's Grace Hopper portrait), chosen automatically as the most different in colour and texture among
every such region, are the classes. Training images take the left half of each region, validation images the
right half, so no pixel of a validation image was seen in training.

- `seg`: 128x128 mosaics of 3-5 Voronoi cells, each filled with a rescaled, flipped crop of one class's texture,
  labelled per pixel (11 classes), 400 train / 100 val images in ADE20K's folder layout: the classic
  texture-segmentation task (Brodatz mosaics) on real photographs;
- `det`: 128x128 images of 1-3 rectangles of the first eight textures on a background of one of the last three,
  400 train / 100 val, COCO layout;
- `cls`: 64x64 crops of one texture, 11 classes x (150 train + 40 val), ImageFolder layout (classification/main.py
  pre-trains on it).

    python benchmarks/dense_small_data.py --out work/small_data [--tasks seg det] [--backbones ...] [--seeds 0 1 2]

writes the data, pre-trains each backbone with a timm model once with classification/main.py, fine-tunes Semantic FPN
(`seg`: the demo config's neck and head at 64 channels, AdamW lr 2e-3, batch 4, poly decay) and RetinaNet
(`det`: the demo config's, neck and head at 64 channels, AdamW lr 1e-3) for every backbone x setting x seed
through the task's train.py, evaluates the last checkpoint on the validation and on the training images (test.py),
and prints mIoU / mAP@0.5 (mean and spread over seeds); results go to OUT/results.json, so an interrupted run
continues where it stopped (a stopped fine-tuning from its checkpoint with train.py's --resume: same schedule,
other augmentation draws), and runs of other settings may share OUT. Needs scikit-learn (requirements-dev.txt).
"""
import argparse
import ast
import fcntl
import itertools
import json
import os
import re
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DET_DEMO = ROOT / 'detection' / 'configs' / 'demo' / 'retinanet_scalablevit-test_fpn_demo-coco.py'
SEG_DEMO = ROOT / 'segmentation' / 'configs' / 'demo' / 'fpn_scalablevit-test_demo-ade.py'
HEAD_WIDTH = 64  # the demo's Semantic FPN at a quarter of its width (256, 128): the backbones' cost dominates
# setting keys that only fine-tuning reads; the others are architecture arguments, given to pre-training too
FINE_TUNING_KEYS = ('lr', 'drop_path', 'backbone_lr_mult', 'norm_outputs', 'out_indices')
CLASSES = tuple(f'texture_{i:02d}' for i in range(11))
DET_CLASSES = 8  # detection: the first eight textures are objects, the last three only backgrounds


@dataclass(frozen=True)
class Backbone:
    """One row's backbone: `config` holds model.backbone's arguments ({drop_path} filled in); `timm_model` is what
    classification/main.py pre-trains (None: no pre-trained rows); `timm_kwargs` are architecture arguments given
    to both pre-training and model.backbone; `timm_features`: a timm model inside MMSegmentation's TIMMBackbone,
    which loads a pre-trained file by timm's rules (`check_timm_checkpoint` first: timm skips what the file lacks
    without a word)."""
    config: str
    timm_model: Optional[str] = None
    timm_kwargs: Dict[str, Any] = field(default_factory=dict)
    timm_features: bool = False
    tasks: Tuple[str, ...] = ('seg', 'det')


QUARTER_RESNET_D = dict(channels=(16, 32, 64, 128), stem_width=32)  # ResNet-18-D, deep stem 32-32-64
BACKBONES: Dict[str, Backbone] = {
    'scalable_vit_test': Backbone("type='ScalableViTBackbone', arch='test', drop_path_rate={drop_path}",
                                  'scalable_vit_test'),
    'swin_vsa_test': Backbone("type='SwinVSABackbone', arch='test', drop_path_rate={drop_path}", 'swin_vsa_test'),
    'vitaev2_vsa_test': Backbone("type='ViTAEv2VSABackbone', arch='test', drop_path_rate={drop_path}",
                                 'vitaev2_vsa_test'),
    'scope_vit_test': Backbone("type='ScopeViTBackbone', arch='test', drop_path_rate={drop_path}", 'scope_vit_test'),
    # ResNetV1c-18 (deep stem, 64 channels) at a quarter of its width, in MMSegmentation's and MMDetection's ResNet
    'resnet18_quarter': Backbone("type='ResNet', depth=18, deep_stem=True, stem_channels=64, base_channels=16, "
                                 "norm_cfg=dict(type='BN', requires_grad=True), norm_eval=False, style='pytorch'"),
    # the same CNN as a timm model (ResNet-18-D: deep stem, average-pool shortcuts), so that main.py pre-trains
    # it like the transformers; MMSegmentation only (TIMMBackbone)
    'resnet18d_quarter': Backbone("type='TIMMBackbone', model_name='resnet18d', features_only=True, "
                                  "out_indices=(1, 2, 3, 4)", 'resnet18d', QUARTER_RESNET_D,
                                  timm_features=True, tasks=('seg',)),
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


def texture_halves() -> Dict[int, List[np.ndarray]]:
    """The class regions split for training (0: left halves) and validation (1: right halves)."""
    regions = texture_regions(photographs())
    return {0: [r[:, :r.shape[1] // 2] for r in regions], 1: [r[:, r.shape[1] // 2:] for r in regions]}


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
    halves = texture_halves()
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


def boxes_on_texture(halves: List[np.ndarray], size: int, rng: np.random.Generator
                     ) -> Tuple[np.ndarray, List[Tuple[int, int, int, int]], List[int]]:
    """A size x size background crop of one of the last three textures with 1-3 rectangles (24-56 pixels a
    side, at most 0.1 IoU between them) of the first eight; (image, (x, y, w, h) boxes, labels)."""
    image = texture_crop(halves[int(rng.integers(DET_CLASSES, len(halves)))], size, rng)
    boxes: List[Tuple[int, int, int, int]] = []
    labels: List[int] = []
    for _ in range(int(rng.integers(1, 4))):
        for _try in range(20):
            w, h = (int(v) for v in rng.integers(24, 57, 2))
            box = (int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1)), w, h)
            if all(box_iou(box, other) <= 0.1 for other in boxes):
                break
        else:
            continue
        x, y = box[:2]
        labels.append(int(rng.integers(DET_CLASSES)))
        image[y:y + h, x:x + w] = texture_crop(halves[labels[-1]], max(w, h), rng)[:h, :w]
        boxes.append(box)
    return image, boxes, labels


def make_detection_data(out: Path, seed: int = 1) -> None:
    """Write OUT/det: `boxes_on_texture` images in COCO's layout, 400 train / 100 val."""
    root = out / 'det'
    if (root / 'done').exists():
        return
    rng = np.random.default_rng(seed)
    halves = texture_halves()
    for split, half, count in (('train', 0, 400), ('val', 1, 100)):
        (root / f'{split}2017').mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for image_id in range(1, count + 1):
            image, boxes, labels = boxes_on_texture(halves[half], 128, rng)
            for box, label in zip(boxes, labels):
                annotations.append(dict(id=len(annotations) + 1, image_id=image_id, category_id=label + 1,
                                        bbox=list(box), area=box[2] * box[3], iscrowd=0))
            file_name = f'{image_id:04d}.jpg'
            Image.fromarray(image.astype(np.uint8)).save(root / f'{split}2017' / file_name, quality=95)
            images.append(dict(id=image_id, file_name=file_name, width=image.shape[1], height=image.shape[0]))
        coco = dict(images=images, annotations=annotations,
                    categories=[dict(id=i + 1, name=name) for i, name in enumerate(CLASSES[:DET_CLASSES])])
        (root / 'annotations').mkdir(exist_ok=True)
        (root / 'annotations' / f'instances_{split}2017.json').write_text(json.dumps(coco))
    (root / 'done').write_text('ok\n')


def box_iou(a: Tuple[int, int, int, int], b: Tuple[int, int, int, int]) -> float:
    """IoU of two (x, y, w, h) boxes."""
    w = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    h = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return w * h / (a[2] * a[3] + b[2] * b[3] - w * h)


def pretrain(out: Path, model: str, epochs: int, model_kwargs: Dict[str, Any]) -> Path:
    """classification/main.py's recipe on the texture crops (64x64), with the setting's architecture arguments
    (`--model-kwargs`); the checkpoint of its last epoch."""
    arguments = [f'{key}={value!r}'.replace(' ', '') for key, value in sorted(model_kwargs.items())]
    folder = out / 'pretrained' / '_'.join([model] + [re.sub(r'[^\w.=-]', '', a) for a in arguments])
    checkpoint = folder / 'checkpoint.pth'
    if (folder / 'done').exists():
        return checkpoint
    command = [sys.executable, 'main.py', '--model', model, '--data-path', str(out / 'cls'), '--input-size', '64',
               '--batch-size', '64', '--epochs', str(epochs),
               '--lr', '1e-3', '--warmup-epochs', '5', '--num_workers', '2', '--output_dir', str(folder)]
    if arguments:
        command += ['--model-kwargs', *arguments]
    subprocess.run(command, cwd=ROOT / 'classification', check=True, stdout=subprocess.DEVNULL)
    (folder / 'done').write_text('ok\n')
    return checkpoint


def check_timm_checkpoint(spec: Backbone, checkpoint: Path) -> None:
    """Stop unless `checkpoint` holds every tensor of the timm backbone's feature model at its shape: timm's
    features loader would leave the rest randomly initialised and say nothing."""
    import timm

    from scalablevit.checkpoint import load_state_dict
    weights = load_state_dict(str(checkpoint))
    features = timm.create_model(spec.timm_model, features_only=True, **spec.timm_kwargs).state_dict()
    wrong = [name for name, tensor in features.items()
             if name not in weights or weights[name].shape != tensor.shape]
    if wrong:
        raise SystemExit(f'{checkpoint} lacks {len(wrong)} of the {len(features)} tensors of {spec.timm_model} '
                         f'{spec.timm_kwargs} (or has them at another shape), e.g. {wrong[:3]}: is it this '
                         f'model\'s pre-training?')


def backbone_config(backbone: str, pretrained: Optional[Path], drop_path: float, **backbone_kwargs: Any) -> str:
    """`model.backbone` of the fine-tuning configs; `backbone_kwargs` are the ablations' extra backbone
    arguments (e.g. norm_outputs=False, out_indices=(1, 2, 3))."""
    spec = BACKBONES[backbone]
    extra = ''.join(f', {key}={value!r}' for key, value in dict(spec.timm_kwargs, **backbone_kwargs).items())
    if spec.timm_features:  # timm's loader (the classifier is dropped)
        init = (f"pretrained=True, pretrained_cfg_overlay=dict(file='{pretrained}')" if pretrained
                else 'pretrained=False')
    else:
        init = 'init_cfg=' + (f"dict(type='Pretrained', checkpoint='{pretrained}')" if pretrained else 'None')
    return f"dict({spec.config.format(drop_path=drop_path)}, _delete_=True, {init}{extra})"


def segmentation_config(out: Path, backbone: str, pretrained: Optional[Path], iters: int, seed: int, lr: float,
                        drop_path: float, backbone_lr_mult: float = 1.0, **backbone_kwargs: Any) -> str:
    """The Semantic FPN demo config on the texture mosaics for one backbone."""
    data = out / 'seg'
    return f'''_base_ = ['{SEG_DEMO}']
crop_size = (128, 128)
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone={backbone_config(backbone, pretrained, drop_path, **backbone_kwargs)},
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


def detection_config(out: Path, backbone: str, pretrained: Optional[Path], iters: int, seed: int, lr: float,
                     drop_path: float, backbone_lr_mult: float = 1.0, **backbone_kwargs: Any) -> str:
    """The RetinaNet demo config on the texture boxes for one backbone: stages 1-3 into the FPN (P3-P7)."""
    data = out / 'det'
    warmup = max(1, min(100, iters // 10))
    backbone_kwargs.setdefault('out_indices', (1, 2, 3))
    return f'''_base_ = ['{DET_DEMO}']
model = dict(
    backbone={backbone_config(backbone, pretrained, drop_path, **backbone_kwargs)},
    neck=dict(in_channels=[32, 64, 128], out_channels={HEAD_WIDTH}),
    bbox_head=dict(num_classes={DET_CLASSES}, in_channels={HEAD_WIDTH}, feat_channels={HEAD_WIDTH}),
    test_cfg=dict(score_thr=0.05))
metainfo = dict(classes={CLASSES[:DET_CLASSES]!r})
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='RandomResize', scale=(128, 128), ratio_range=(0.75, 1.25), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(128, 128), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(batch_size=4, num_workers=1, persistent_workers=True,
                        dataset=dict(data_root='{data}', metainfo=metainfo, pipeline=train_pipeline,
                                     ann_file='annotations/instances_train2017.json',
                                     data_prefix=dict(img='train2017/')))
val_dataloader = dict(batch_size=1, num_workers=1, persistent_workers=True,
                      dataset=dict(data_root='{data}', metainfo=metainfo, pipeline=test_pipeline,
                                   ann_file='annotations/instances_val2017.json', data_prefix=dict(img='val2017/')))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file='{data}/annotations/instances_val2017.json', metric='bbox')
test_evaluator = val_evaluator
optim_wrapper = dict(optimizer=dict(lr={lr}), clip_grad=dict(max_norm=35, norm_type=2), paramwise_cfg=dict(
    custom_keys={{'backbone': dict(lr_mult={backbone_lr_mult}),
                 'pos_block': dict(lr_mult={backbone_lr_mult}, decay_mult=0.)}}))
param_scheduler = [dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end={warmup}),
                   dict(type='PolyLR', power=0.9, eta_min=0., begin={warmup}, end={iters}, by_epoch=False)]
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters={iters}, val_interval={iters})
default_hooks = dict(checkpoint=dict(by_epoch=False, interval={iters}), logger=dict(interval=100))
log_processor = dict(by_epoch=False)
randomness = dict(seed={seed})
'''


# task -> (config maker, driver folder, metric, default lr, test data swapped to the training images)
TASKS = {
    'seg': (segmentation_config, 'segmentation', 'mIoU', 2e-3,
            "dict(dataset=dict(data_prefix=dict(img_path='images/training', seg_map_path='annotations/training')))"),
    'det': (detection_config, 'detection', 'coco/bbox_mAP_50', 1e-3,
            "dict(dataset=dict(ann_file='annotations/instances_train2017.json', data_prefix=dict(img='train2017/')))"),
}


def fine_tune(out: Path, task: str, name: str, config: str, iters: int) -> Dict[str, float]:
    """The task's train.py on the config, then its test.py on the training images (without augmentation);
    the final metric (mIoU, or mAP@0.5 in 0-1) on the validation images (`val`) and on the training images
    (`train`): how well each backbone fits the data against how well it generalises."""
    _, driver, metric, _, training_images = TASKS[task]
    work = out / 'runs' / name
    work.mkdir(parents=True, exist_ok=True)
    (work / 'config.py').write_text(config)
    # a run stopped by a signal (or killed after a checkpoint) continues from its last checkpoint
    resume = ['--resume'] if (work / 'last_checkpoint').exists() else []
    with open(work / 'train.log', 'a') as f:
        subprocess.run([sys.executable, 'train.py', str(work / 'config.py'), '--work-dir', str(work), *resume],
                       cwd=ROOT / driver, check=True, stdout=f, stderr=subprocess.STDOUT)
    # every session of the run in order (a resumed run logs into a new timestamp folder; one resumed at its
    # last iteration logs nothing)
    lines = [json.loads(line) for scalars in sorted(work.glob('*/vis_data/scalars.json'))
             for line in scalars.read_text().splitlines()]
    # (MMDetection's CocoMetric reports nothing when no box scores above the threshold: mAP 0 then)
    result = dict(val=([line[metric] for line in lines if metric in line] or [0.])[-1])
    fit = work / 'fit'
    fit.mkdir(exist_ok=True)
    fit_config = [f"_base_ = ['{work / 'config.py'}']", f'test_dataloader = {training_images}']
    if task == 'det':
        fit_config.append(f"test_evaluator = dict(ann_file='{out}/det/annotations/instances_train2017.json')")
    (fit / 'config.py').write_text('\n'.join(fit_config) + '\n')
    with open(fit / 'test.log', 'w') as f:
        subprocess.run([sys.executable, 'test.py', str(fit / 'config.py'), str(work / f'iter_{iters}.pth'),
                        '--work-dir', str(fit)], cwd=ROOT / driver, check=True, stdout=f, stderr=subprocess.STDOUT)
    result['train'] = json.loads(sorted(fit.glob('*/*.json'))[-1].read_text()).get(metric, 0.)
    return result


def read_results(path: Path) -> Dict[str, Dict[str, float]]:
    return json.loads(path.read_text()) if path.exists() else {}


def add_result(path: Path, key: str, result: Dict[str, float]) -> None:
    """Add one run's result to OUT/results.json under a lock: runs of other settings may share OUT."""
    with open(path.with_suffix('.lock'), 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        results = dict(read_results(path), **{key: result})
        temporary = path.with_suffix('.tmp')
        temporary.write_text(json.dumps(results, indent=1))
        os.replace(temporary, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--out', type=Path, default=Path('work/small_data'))
    parser.add_argument('--tasks', nargs='+', default=list(TASKS), choices=list(TASKS),
                        help='seg: Semantic FPN, mIoU; det: RetinaNet, mAP@0.5')
    parser.add_argument('--backbones', nargs='+', default=list(BACKBONES), choices=list(BACKBONES))
    parser.add_argument('--settings', nargs='+', default=['scratch', 'pretrained'],
                        help='scratch | pretrained | NAME:scratch|pretrained:KEY=VALUE,... where KEY is lr, '
                             'drop_path, backbone_lr_mult or a backbone argument (e.g. norm_outputs=False); '
                             'architecture arguments (e.g. sr_ratios=(4,2,1,1)) go to pre-training too')
    parser.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2])
    parser.add_argument('--iters', type=int, default=1500)
    parser.add_argument('--pretrain-epochs', type=int, default=60)
    parser.add_argument('--drop-path', type=float, default=0.0, help="default: the demo configs' (0 for tiny models)")
    parser.add_argument('--lr', type=float, default=None, help='default: 2e-3 (seg), 1e-3 (det)')
    args = parser.parse_args()
    if args.iters < 2:
        parser.error(f'--iters must be at least 2 (a warm-up and a decay), got {args.iters}')
    out = args.out.resolve()
    make_data(out)
    if 'det' in args.tasks:
        make_detection_data(out)
    results_path = out / 'results.json'
    for task, backbone in itertools.product(args.tasks, args.backbones):
        if task not in BACKBONES[backbone].tasks:
            print(f'{backbone}: {"/".join(BACKBONES[backbone].tasks)} only, no {task} rows', flush=True)
    for task, backbone, setting in itertools.product(args.tasks, args.backbones, args.settings):
        name, _, options = setting.partition(':')
        base, _, overrides = options.partition(':') if options else (name, '', '')
        make_config, _, _, task_lr, _ = TASKS[task]
        values: Dict[str, Any] = dict(drop_path=args.drop_path, lr=args.lr or task_lr)
        for item in filter(None, re.split(r',(?=\w+=)', overrides)):  # sr_ratios=(4,2,1,1) stays whole
            key, _, value = item.partition('=')
            values[key] = ast.literal_eval(value)
        spec = BACKBONES[backbone]
        if task not in spec.tasks or (base == 'pretrained' and spec.timm_model is None):
            continue
        for seed in args.seeds:
            key = f'{task}/{backbone}/{name}/seed{seed}'
            if key in read_results(results_path):
                continue
            pretrained = None
            if base == 'pretrained':
                architecture = {k: v for k, v in values.items() if k not in FINE_TUNING_KEYS}
                pretrained = pretrain(out, spec.timm_model, args.pretrain_epochs,
                                      dict(spec.timm_kwargs, **architecture))
                if spec.timm_features:
                    check_timm_checkpoint(spec, pretrained)
            config = make_config(out, backbone, pretrained, args.iters, seed, **values)
            result = fine_tune(out, task, key.replace('/', '_'), config, args.iters)
            add_result(results_path, key, result)
            print(f'{key}: {TASKS[task][2]} {result["val"]:.3f} (training images: {result["train"]:.3f})', flush=True)
    print_table(read_results(results_path))


def print_table(results: Dict[str, Dict[str, float]]) -> None:
    """Mean, spread ((max - min) / 2) and seeds of every task / backbone / setting, on the validation images
    and on the training images."""
    rows: Dict[str, List[Dict[str, float]]] = {}
    for key, result in results.items():
        rows.setdefault(key.rsplit('/', 1)[0], []).append(result)
    print(f'{"task / backbone / setting":48} {"val":>7} {"spread":>7} {"train":>7} seeds  (seg: mIoU, det: mAP@0.5)')
    for row, row_results in sorted(rows.items()):
        val = [result['val'] for result in row_results]
        train = [result['train'] for result in row_results if 'train' in result]
        fit = f'{statistics.mean(train):7.3f}' if train else f'{"-":>7}'
        print(f'{row:48} {statistics.mean(val):7.3f} {(max(val) - min(val)) / 2:7.3f} {fit} {len(val)}')


if __name__ == '__main__':
    main()
