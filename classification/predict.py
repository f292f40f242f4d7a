"""Top-k predictions of a classifier for an image, a folder (searched recursively) or a glob, with class names.

    python predict.py IMAGES... --checkpoint CKPT [--model NAME] [--topk 5] [--output predictions.csv|.json]
        [--batch-size 64] [--device cuda:0] [--amp] [--class-map classes.txt] [--no-use-ema]

The anchor is timm's inference.py. The checkpoint is read by the package's checkpoint policy (EMA weights when
it has them, unless --no-use-ema); a checkpoint written by main.py names its model and the training folder,
so `--model` is only needed for other files. The images go through the eval transform the model was evaluated
with (main.py's: size, crop, interpolation and mean/std recorded in the checkpoint, else the model's pretrained
cfg). Class names, first found of: `--class-map` (one name a line, timm's format, or a JSON list or
{name: index}), `label_names` in the checkpoint or in the `config.json` beside it (timm's hub folders), the
checkpoint's training folder (its class folders, sorted as ImageFolder sorts them), ImageNet's for an
ImageNet-sized classifier; otherwise the class index. The output file is written once, at the end.
"""
import argparse
import csv
import io
import json
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import timm
import torch
from timm.data import ImageNetInfo, infer_imagenet_subset, resolve_data_config
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets.folder import find_classes

import scalablevit  # noqa: F401  (registers the models in timm)
from scalablevit import checkpoint as checkpoint_io
from scalablevit import images

from errors import UserInputError
from image_data import UnreadableImageError, build_transform, load_rgb
from shards import INFO_FILE

AMP_DTYPES = {'bfloat16': torch.bfloat16, 'float16': torch.float16}
OUTPUT_FORMATS = ('.csv', '.json')
DENSE_HEADS = ('neck.', 'decode_head.', 'rpn_head.', 'roi_head.', 'bbox_head.')  # MMDetection's, MMSegmentation's
EVAL_TRANSFORM_ARGS = ('input_size', 'interpolation', 'eval_crop_ratio', 'mean', 'std')


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('inputs', nargs='+', metavar='IMAGES',
                        help='image files, folders (searched recursively) or quoted glob patterns ("val/**/*.jpg")')
    parser.add_argument('--checkpoint', help='classification checkpoint (main.py\'s, released, timm\'s or a plain '
                                             'state dict); without it, timm\'s pretrained weights of --model '
                                             '(e.g. local-dir:FOLDER)')
    parser.add_argument('--model', help='timm model name (default: the one the checkpoint was trained as)')
    parser.add_argument('--use-ema', action=argparse.BooleanOptionalAction, default=None,
                        help='the EMA weights (--use-ema) or the raw ones (--no-use-ema); default: EMA when the '
                             'checkpoint has them')
    parser.add_argument('--class-map', help='class names: a .txt file with one name a line in class-index order '
                                            '(timm\'s), or a .json list or {name: index}')
    parser.add_argument('--topk', type=int, default=5, help='classes per image')
    parser.add_argument('--output', type=Path, help='write the predictions to this .csv or .json file')
    parser.add_argument('--batch-size', type=int, default=64)
    parser.add_argument('--workers', type=int, default=2, help='data loading processes')
    parser.add_argument('--device', default='cpu', help='e.g. cuda:0')
    parser.add_argument('--amp', action='store_true', help='run the model under autocast (--amp-dtype)')
    parser.add_argument('--amp-dtype', choices=sorted(AMP_DTYPES), default='bfloat16')
    parser.add_argument('--skip-bad-images', action='store_true',
                        help='leave unreadable images out (named on stderr) instead of stopping')
    return parser


def find_images(inputs: List[str]) -> List[str]:
    """The image files `inputs` name (`scalablevit.images.find_images`); a UserInputError if one names none."""
    try:
        return [path for path, _ in images.find_images(inputs)]
    except images.ImageInputError as error:
        raise UserInputError(str(error)) from None


class ImageList(Dataset):
    """(transformed image, None) or, for an unreadable image, (None, the error message) of each path. Errors
    travel as messages: raised in a loader worker they would reach the user wrapped in the worker's traceback."""

    def __init__(self, paths: List[str], transform):
        self.paths = paths
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Tuple[Optional[torch.Tensor], Optional[str]]:
        try:
            return self.transform(load_rgb(self.paths[index])), None
        except UnreadableImageError as error:
            return None, str(error)


def collate_images(samples: List[Tuple[Optional[torch.Tensor], Optional[str]]]) -> Tuple[Optional[torch.Tensor], list]:
    """(the readable images of a batch stacked, or None; each sample's error message or None)."""
    readable = [image for image, _ in samples if image is not None]
    return (torch.stack(readable) if readable else None), [error for _, error in samples]


def saved_args(checkpoint: Dict[str, Any]) -> Dict[str, Any]:
    """The command line that wrote the checkpoint (main.py's dict, DeiT's argparse.Namespace), or {}."""
    args = checkpoint.get('args')
    if isinstance(args, argparse.Namespace):
        return vars(args)
    return args if isinstance(args, dict) else {}


def create_model(args: argparse.Namespace) -> Tuple[torch.nn.Module, Dict[str, Any], str]:
    """(the model in eval mode with its weights, the checkpoint's saved args, which weights were taken)."""
    if not args.checkpoint:
        if not args.model:
            raise UserInputError('pass --checkpoint CKPT (and --model NAME unless main.py wrote the checkpoint), or a '
                                 '--model with pretrained weights (local-dir:FOLDER)')
        try:
            return timm.create_model(args.model, pretrained=True).eval(), {}, 'pretrained'
        except (RuntimeError, OSError, ValueError) as error:
            raise UserInputError(f'--model {args.model} has no weights here ({error}): pass --checkpoint '
                                 f'FILE') from None
    checkpoint = checkpoint_io.load_checkpoint_file(args.checkpoint)
    try:
        state_dict, chosen = checkpoint_io.select_state_dict(checkpoint, args.use_ema)
        checkpoint_io.check_finite(state_dict, f'checkpoint {args.checkpoint}', f'{chosen!r} weights')
    except ValueError as error:  # CheckpointError included
        raise UserInputError(f'checkpoint {args.checkpoint}: {error}') from None
    if any(k.startswith('backbone.') for k in state_dict) and any(k.startswith(DENSE_HEADS) for k in state_dict):
        raise UserInputError(f'checkpoint {args.checkpoint} holds a detector or segmenter (a backbone and '
                             f'{"/".join(DENSE_HEADS)} weights): predict.py takes classification checkpoints; use '
                             f'detection/demo.py or segmentation/demo.py')
    trained = saved_args(checkpoint)
    name = args.model or trained.get('model')
    if not name:
        raise UserInputError(f'checkpoint {args.checkpoint} does not say which model it holds: pass --model NAME')
    if not timm.is_model(name):
        raise UserInputError(f'{name!r} is not a timm model' + ('' if args.model else
                             ' (the checkpoint\'s); pass --model NAME'))
    kwargs = dict(trained.get('model_kwargs') or {}) if name == trained.get('model') else {}
    pretrained_cfg = timm.models.get_pretrained_cfg(name)
    classifier = pretrained_cfg.classifier if pretrained_cfg is not None else None
    classifier_weight = state_dict.get(f'{classifier}.weight') if classifier else None
    if classifier_weight is not None:
        kwargs['num_classes'] = classifier_weight.shape[0]
    model = timm.create_model(name, **kwargs)
    mismatch = checkpoint_io.StateDictMismatch.compare(state_dict, model)
    if mismatch:
        raise UserInputError(f'checkpoint {args.checkpoint} does not fit {name} (another model or variant? pass the '
                             f'right --model):\n{mismatch}')
    model.load_state_dict(state_dict, strict=True)
    return model.eval(), dict(trained, label_names=checkpoint.get('label_names')), chosen


def read_class_map(path: str) -> List[str]:
    """Class names in class-index order from a .txt (one a line) or .json (a list, or {name: index}) file."""
    file = Path(path)
    if not file.is_file():
        raise UserInputError(f'--class-map {path} does not exist')
    if file.suffix.lower() == '.json':
        try:
            names = json.loads(file.read_text(encoding='utf-8'))
        except json.JSONDecodeError as error:
            raise UserInputError(f'--class-map {path} is not valid JSON: {error}') from None
        if isinstance(names, dict):
            if sorted(names.values()) != list(range(len(names))):
                raise UserInputError(f'--class-map {path}: the indices of {{name: index}} must be 0..N-1, each once')
            names = sorted(names, key=names.get)
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise UserInputError(f'--class-map {path} must hold a list of names or {{name: index}}')
        return names
    names = [line.strip() for line in file.read_text(encoding='utf-8').splitlines()]
    while names and not names[-1]:
        names.pop()
    return names


def training_folder_classes(trained: Dict[str, Any]) -> Optional[Tuple[List[str], str]]:
    """(class names, where from) of the data main.py trained on, when that data is here."""
    root = trained.get('data_path')
    if not root:
        return None
    if trained.get('dataset') == 'wds':
        info = Path(root) / INFO_FILE
        if info.is_file():
            classes = json.loads(info.read_text()).get('classes')
            return (list(classes), str(info)) if classes else None
        return None
    train = Path(root) / 'train'
    if not train.is_dir():
        return None
    try:
        return find_classes(str(train))[0], str(train)
    except FileNotFoundError:
        return None


def stored_class_names(model: torch.nn.Module, trained: Dict[str, Any], checkpoint: Optional[str]
                       ) -> Optional[Tuple[Any, str]]:
    """(timm's `label_names`, where from) kept in the checkpoint, the model's pretrained cfg (hub folders) or
    the `config.json` beside the checkpoint, if any."""
    if trained.get('label_names'):
        return trained['label_names'], f'checkpoint {checkpoint}'
    if model.pretrained_cfg.get('label_names'):
        return model.pretrained_cfg['label_names'], 'the model\'s pretrained cfg'
    beside = Path(checkpoint).with_name('config.json') if checkpoint else None
    if beside is not None and beside.is_file():
        try:
            names = json.loads(beside.read_text(encoding='utf-8')).get('label_names')
        except (json.JSONDecodeError, AttributeError):
            names = None
        if names:
            return names, str(beside)
    return None


def resolve_class_names(model: torch.nn.Module, trained: Dict[str, Any], args: argparse.Namespace
                        ) -> Tuple[Optional[List[str]], str]:
    """(names by class index or None, where they came from), in the order of the module docstring."""
    stored = None if args.class_map else stored_class_names(model, trained, args.checkpoint)
    folder = None if args.class_map or stored else training_folder_classes(trained)
    subset = infer_imagenet_subset(model)
    if args.class_map:
        names, source = read_class_map(args.class_map), f'--class-map {args.class_map}'
    elif stored is not None:
        names, source = stored
        if isinstance(names, dict):  # timm's {index: name} for indices with gaps
            names = [names.get(str(i), names.get(i, str(i))) for i in range(model.num_classes)]
        names = [str(n) for n in names]
    elif folder is not None:
        names, source = folder
    elif subset is not None:
        info = ImageNetInfo(subset)
        names = [info.index_to_description(i) for i in range(model.num_classes)]
        source = f'ImageNet ({subset})'
    else:
        return None, 'class indices (no class names found: pass --class-map FILE)'
    if len(names) != model.num_classes:
        raise UserInputError(f'{source} lists {len(names)} classes, the model has {model.num_classes}')
    return names, source


def eval_transform(model: torch.nn.Module, trained: Dict[str, Any]):
    """main.py's eval transform (`datasets.build_transform`) with the settings the checkpoint was evaluated with,
    else the model's pretrained cfg's."""
    config = resolve_data_config({}, model=model)
    settings = argparse.Namespace(input_size=config['input_size'][-1], interpolation=config['interpolation'],
                                  eval_crop_ratio=config['crop_pct'], mean=config['mean'], std=config['std'])
    for name in EVAL_TRANSFORM_ARGS:
        if trained.get(name) is not None:
            setattr(settings, name, trained[name])
    return build_transform(False, settings)


@torch.inference_mode()
def predict(model: torch.nn.Module, loader: DataLoader, topk: int, device: torch.device,
            amp_dtype: Optional[torch.dtype], skip_bad_images: bool) -> Dict[int, Tuple[List[int], List[float]]]:
    """{image index: (top-k class indices, their probabilities)} of the readable images (in loader order);
    an unreadable image stops with its message, or with `skip_bad_images` is named on stderr and left out."""
    results = {}
    start = 0
    for batch, errors in loader:
        for offset, error in enumerate(errors):
            if error is not None:
                if not skip_bad_images:
                    raise UnreadableImageError(error)
                print(f'skipped: {error}', file=sys.stderr, flush=True)
        indices = [start + offset for offset, error in enumerate(errors) if error is None]
        start += len(errors)
        if batch is None:
            continue
        with torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext():
            logits = model(batch.to(device))
        probs, classes = logits.float().softmax(-1).topk(topk, dim=-1)
        for index, row_classes, row_probs in zip(indices, classes.tolist(), probs.tolist()):
            results[index] = (row_classes, row_probs)
    return results


def format_predictions(paths: List[str], results: Dict[int, Tuple[List[int], List[float]]],
                       names: Optional[List[str]], suffix: str, meta: Dict[str, Any]) -> str:
    """The predictions as CSV (image, class_1, label_1, prob_1, ...) or JSON ({...meta, predictions: [...]})."""
    def label(index: int) -> str:
        return names[index] if names is not None else str(index)

    rows = [(paths[i], *results[i]) for i in sorted(results)]
    if suffix == '.json':
        return json.dumps(dict(meta, predictions=[
            dict(image=path, topk=[dict(index=c, label=label(c), prob=round(p, 6)) for c, p in zip(classes, probs)])
            for path, classes, probs in rows]), indent=1) + '\n'
    k = len(rows[0][1]) if rows else 0
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator='\n')
    columns = [f'{column}_{rank}' for rank in range(1, k + 1) for column in ('class', 'label', 'prob')]
    writer.writerow(['image'] + columns)
    for path, classes, probs in rows:
        writer.writerow([path] + [value for c, p in zip(classes, probs) for value in (c, label(c), f'{p:.6f}')])
    return buffer.getvalue()


def main(args: argparse.Namespace) -> None:
    if args.topk < 1 or args.batch_size < 1 or args.workers < 0:
        raise UserInputError('--topk and --batch-size must be at least 1, --workers at least 0')
    if args.output is not None:
        if args.output.suffix.lower() not in OUTPUT_FORMATS:
            raise UserInputError(f'--output {args.output}: the format comes from the suffix, one of '
                                 f'{", ".join(OUTPUT_FORMATS)}')
        if not args.output.parent.is_dir():
            raise UserInputError(f'--output {args.output}: folder {args.output.parent} does not exist')
    paths = find_images(args.inputs)
    device = torch.device(args.device)
    model, trained, chosen = create_model(args)
    names, source = resolve_class_names(model, trained, args)
    model.to(device)
    loader = DataLoader(ImageList(paths, eval_transform(model, trained)), batch_size=args.batch_size,
                        num_workers=args.workers, collate_fn=collate_images)
    results = predict(model, loader, min(args.topk, model.num_classes), device,
                      AMP_DTYPES[args.amp_dtype] if args.amp else None, args.skip_bad_images)
    if not results:
        raise UserInputError(f'none of the {len(paths)} images could be read')
    print(f'{len(results)} images, {model.pretrained_cfg["architecture"]} ({chosen} weights), labels from {source}',
          file=sys.stderr)
    meta = dict(model=model.pretrained_cfg['architecture'], checkpoint=args.checkpoint, weights=chosen,
                labels=source)
    suffix = args.output.suffix.lower() if args.output is not None else '.csv'
    text = format_predictions(paths, results, names, suffix, meta)
    if args.output is None:
        sys.stdout.write(text)
    else:
        images.write_atomically(text, args.output)
        print(f'wrote {args.output}', file=sys.stderr)


if __name__ == '__main__':
    arguments = get_args_parser().parse_args()
    try:
        main(arguments)
    except (UserInputError, UnreadableImageError, checkpoint_io.CheckpointError, FileNotFoundError) as error:
        print(f'error: {error}', file=sys.stderr, flush=True)
        sys.exit(2)
