"""Checks that stop detection and segmentation runs before a wrong result: the heads' class counts against the
datasets (before the first step), segmentation label values against the class count, COCO annotation files
before pycocotools reads them, and test checkpoints against the config's model.

The drivers (`runner.py`) apply them to every run; each failure is a `DataCheckError` whose message names the
file and the record, or the config entry, to fix.
"""
import json
import math
import os.path as osp
from typing import Any, Dict, Iterator, List, Optional

import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.model import BaseTTAModel, is_model_wrapper
from mmengine.registry import HOOKS

from .. import checkpoint as checkpoint_io

__all__ = ['DataCheckError', 'DataCheckHook', 'validate_coco_file', 'validate_annotation_files',
           'checkpoint_mismatch']


class DataCheckError(ValueError):
    """A dataset, annotation file or checkpoint that does not fit the run; the message says what to fix."""


def unwrapped_model(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside DDP and test-time-augmentation wrappers (what mmengine loads checkpoints into)."""
    while is_model_wrapper(model) or isinstance(model, BaseTTAModel):
        model = model.module
    return model


@HOOKS.register_module(force=True)
class DataCheckHook(Hook):
    """Before training, validation and testing: every head's `num_classes` equals the dataset's class count
    (the backbone's and the RPN's are exempt); at every iteration of a segmentation run: each label map holds
    only class indices and the ignore index (checked on the labels the loss and the metric see)."""

    priority = 'VERY_HIGH'

    def __init__(self):
        self._num_classes: Dict[str, Optional[int]] = {}

    def _check_classes(self, runner, mode: str) -> None:
        loader = getattr(runner, f'{mode}_dataloader')
        dataset = loader.dataset
        classes = dataset.metainfo.get('classes')
        self._num_classes[mode] = None if classes is None else len(classes)
        if classes is None:
            return
        model = unwrapped_model(runner.model)
        for name, module in model.named_modules():
            count = getattr(module, 'num_classes', None)
            parts = name.split('.')
            # the segmentor's own num_classes mirrors its decode head's, which is reported instead
            if (not isinstance(count, int) or not name or 'backbone' in parts or parts[-1] == 'rpn_head'
                    or type(module).__name__ == 'FusedSemanticHead'):
                continue
            if count != len(classes):
                raise DataCheckError(
                    f'model.{name} ({type(module).__name__}) predicts num_classes={count}, but the {mode} dataset '
                    f'({type(dataset).__name__}, {getattr(dataset, "ann_file", "") or dataset.data_root}) has '
                    f'{len(classes)} classes {tuple(classes)[:10]}. Set num_classes={len(classes)} for that head '
                    f'in the config, or the dataset\'s metainfo classes to the {count} classes it should train.')

    def before_train(self, runner) -> None:
        self._check_classes(runner, 'train')

    def before_val(self, runner) -> None:
        self._check_classes(runner, 'val')

    def before_test(self, runner) -> None:
        self._check_classes(runner, 'test')

    def _check_labels(self, runner, mode: str, data_batch: Any) -> None:
        num_classes = self._num_classes.get(mode)
        if num_classes is None or not isinstance(data_batch, dict):
            return
        model = unwrapped_model(runner.model)
        head = getattr(model, 'decode_head', None)
        ignore_index = getattr(head, 'ignore_index', 255)
        for sample in data_batch.get('data_samples') or []:
            label = getattr(sample, 'gt_sem_seg', None)
            if label is None:
                continue
            values = label.data
            bad = ((values < 0) | (values >= num_classes)) & (values != ignore_index)
            if bool(bad.any()):
                found = torch.unique(values[bad]).tolist()[:8]
                reduced = ' (after reduce_zero_label, i.e. the file\'s values minus 1)' \
                    if sample.metainfo.get('reduce_zero_label') else ''
                raise DataCheckError(
                    f'label map {sample.metainfo.get("seg_map_path", "(unknown file)")} holds label values '
                    f'{found}{reduced} outside the {num_classes} classes (0..{num_classes - 1}) and the ignore '
                    f'index {ignore_index}. Fix the file, or the dataset\'s classes and the heads\' num_classes.')

    def before_train_iter(self, runner, batch_idx: int, data_batch: Any = None) -> None:
        self._check_labels(runner, 'train', data_batch)

    def before_val_iter(self, runner, batch_idx: int, data_batch: Any = None) -> None:
        self._check_labels(runner, 'val', data_batch)

    def before_test_iter(self, runner, batch_idx: int, data_batch: Any = None) -> None:
        self._check_labels(runner, 'test', data_batch)


def _coordinates_out_of_range(values: List[float], width: float, height: float) -> Optional[str]:
    """Why x/y pairs `values` cannot be a shape on a width x height image (None when they can): not finite,
    or farther outside the image than its own size."""
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
        return 'a coordinate that is not a finite number'
    xs, ys = values[0::2], values[1::2]
    if min(xs) < -width or max(xs) > 2 * width or min(ys) < -height or max(ys) > 2 * height:
        return (f'coordinates x {min(xs):g}..{max(xs):g}, y {min(ys):g}..{max(ys):g}, far outside the '
                f'{width:g}x{height:g} image')
    return None


def validate_coco_file(path: str) -> None:
    """Check a COCO annotation file before pycocotools sees it: images with sizes, a non-empty annotation
    list (when the file has one: image-info files for test-dev have none), and each annotation's image,
    category, box and polygons/RLE. Raises a DataCheckError naming the file and the record."""
    try:
        with open(path) as f:
            coco = json.load(f)
    except json.JSONDecodeError as e:
        raise DataCheckError(f'annotation file {path} is not valid JSON ({e})') from None
    if not isinstance(coco, dict) or not isinstance(coco.get('images'), list):
        raise DataCheckError(f'annotation file {path} is not in COCO format (no "images" list)')
    images = {}
    for index, image in enumerate(coco['images']):
        size = (image.get('width'), image.get('height')) if isinstance(image, dict) else (None, None)
        if not all(isinstance(v, (int, float)) and v > 0 for v in size):
            raise DataCheckError(f'annotation file {path}: images[{index}] ({image!r:.120}) needs a positive '
                                 f'width and height')
        images[image.get('id')] = size
    if 'annotations' not in coco:
        return
    annotations = coco['annotations']
    if not isinstance(annotations, list) or not annotations:
        raise DataCheckError(f'annotation file {path} has an empty "annotations" list: nothing to train or '
                             f'evaluate on. Point the config at the annotated file (an image-info file for a '
                             f'test server has no "annotations" key at all).')
    categories = {c.get('id') for c in coco.get('categories') or [] if isinstance(c, dict)}
    for index, ann in enumerate(annotations):
        where = f'annotation file {path}: annotations[{index}] (id {ann.get("id") if isinstance(ann, dict) else "?"})'
        if not isinstance(ann, dict):
            raise DataCheckError(f'{where} is not a record')
        if ann.get('image_id') not in images:
            raise DataCheckError(f'{where} refers to image_id {ann.get("image_id")!r}, which "images" lacks')
        if ann.get('category_id') not in categories:
            raise DataCheckError(f'{where} has category_id {ann.get("category_id")!r}, which "categories" lacks')
        width, height = images[ann['image_id']]
        box = ann.get('bbox')
        if not (isinstance(box, list) and len(box) == 4):
            raise DataCheckError(f'{where}: bbox {box!r:.80} is not [x, y, width, height]')
        problem = _coordinates_out_of_range([box[0], box[1], box[0] + box[2], box[1] + box[3]]
                                            if all(isinstance(v, (int, float)) for v in box) else [math.nan],
                                            width, height)
        if problem:
            raise DataCheckError(f'{where}: bbox {box} has {problem}')
        segmentation = ann.get('segmentation')
        if isinstance(segmentation, list):
            for number, polygon in enumerate(segmentation):
                if not isinstance(polygon, list) or len(polygon) < 6 or len(polygon) % 2:
                    raise DataCheckError(f'{where}: polygon {number} needs an even number (at least 6) of '
                                         f'coordinates, it has {polygon!r:.80}')
                problem = _coordinates_out_of_range(polygon, width, height)
                if problem:
                    raise DataCheckError(f'{where}: polygon {number} has {problem}')
        elif isinstance(segmentation, dict):
            if list(segmentation.get('size') or []) != [height, width] or 'counts' not in segmentation:
                raise DataCheckError(f'{where}: RLE mask of size {segmentation.get("size")} on a {height}x{width} '
                                     f'(height x width) image')


def _dataset_configs(node: Any) -> Iterator[dict]:
    """Dataset configs nested in a dataloader / wrapper config (RepeatDataset, ConcatDataset, ...)."""
    if isinstance(node, dict):
        if 'ann_file' in node:
            yield node
        for key in ('dataset', 'datasets'):
            yield from _dataset_configs(node.get(key))
    elif isinstance(node, (list, tuple)):
        for item in node:
            yield from _dataset_configs(item)


def validate_annotation_files(cfg: Config, loaders: tuple = ('train', 'val', 'test')) -> None:
    """Validate the COCO json files of the config's `{loader}_dataloader`s and `{loader}_evaluator`s
    (`validate_coco_file`), each file once."""
    paths = []
    for loader in loaders:
        for dataset in _dataset_configs((cfg.get(f'{loader}_dataloader') or {}).get('dataset')):
            ann_file = dataset['ann_file']
            if ann_file and not osp.isabs(ann_file) and dataset.get('data_root'):
                ann_file = osp.join(dataset['data_root'], ann_file)
            paths.append(ann_file)
        evaluators = cfg.get(f'{loader}_evaluator') or []
        for evaluator in evaluators if isinstance(evaluators, (list, tuple)) else [evaluators]:
            if isinstance(evaluator, dict) and evaluator.get('ann_file'):
                paths.append(evaluator['ann_file'])
    for path in dict.fromkeys(paths):
        if str(path).endswith('.json') and osp.isfile(path):
            validate_coco_file(path)


def checkpoint_mismatch(model: torch.nn.Module, path: str) -> Optional[str]:
    """The mismatch report (`scalablevit.checkpoint.StateDictMismatch`) of the checkpoint at `path` against
    `model` as mmengine would load it (weights under 'state_dict' or the whole dict, `module.` removed), or
    None when it fits exactly."""
    checkpoint = checkpoint_io.load_checkpoint_file(path)
    state_dict = checkpoint_io.strip_wrapper_prefixes(checkpoint.get('state_dict', checkpoint))
    mismatch = checkpoint_io.StateDictMismatch.compare(state_dict, unwrapped_model(model))
    if not mismatch:
        return None
    hint = ''
    if 'state_dict' not in checkpoint and any(k in checkpoint for k in checkpoint_io.RAW_KEYS + checkpoint_io.EMA_KEYS):
        hint = ('\n  (an ImageNet classification checkpoint: use it as the backbone\'s pretrained weights, '
                'model.backbone.init_cfg.checkpoint, and train the detector or segmenter)')
    return str(mismatch) + hint
