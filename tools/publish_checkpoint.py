"""Turn a training checkpoint into the files a user should get, as timm's `clean_checkpoint.py` and MMDetection's
`publish_model.py` do:

    python tools/publish_checkpoint.py output/checkpoint_best.pth release/scalable_vit_small
        -> release/scalable_vit_small-1a2b3c4d.pth, release/scalable_vit_small-5e6f7a8b.safetensors
    python tools/publish_checkpoint.py output/checkpoint_best.pth --hub-dir release/scalable_vit_small_hub
        -> a folder timm loads: timm.create_model('local-dir:release/scalable_vit_small_hub', pretrained=True)
    python tools/publish_checkpoint.py work_dirs/mask_rcnn/epoch_12.pth release/mask_rcnn_svit_s
    python tools/publish_checkpoint.py work_dirs/mask_rcnn/epoch_12.pth release/svit_s_coco_backbone --backbone-only
        -> the backbone's weights for another detector's `backbone.init_cfg=dict(type='Pretrained', checkpoint=...)`

Weights are chosen by the package's EMA rule (`scalablevit.checkpoint.select_state_dict`, as `main.py --eval`:
the EMA weights when the checkpoint has them; `--no-use-ema` the raw ones, `--use-ema` insists on EMA; mmengine's
EMAHook already saves its EMA weights under 'state_dict'); optimizer,
scheduler, loss-scaler, RNG, arguments and message-hub state are dropped. A `.pth` file holds `{'state_dict':
weights}` (plus mmengine's `meta` for a detection/segmentation checkpoint): timm's, mmengine's and this package's
loaders all read it. A `.safetensors` file holds the weights alone. Each file is named `OUT-<first 8 hex digits of
its sha256>.EXT` and records the digest of every tensor, which every reader of the package checks. Files are
written atomically, and an existing file or folder is an error unless `--force`.
"""
import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import timm
import torch
from timm.models import get_pretrained_cfg_value
from timm.models._hub import save_config_for_hf

import scalablevit  # noqa: F401  (registers the models in timm)
from scalablevit import checkpoint as checkpoint_io

FORMATS = ('pth', 'safetensors')
BACKBONE_PREFIX = 'backbone.'  # where MMDetection's and MMSegmentation's models keep the backbone


class PublishError(ValueError):
    """An input or option this tool cannot publish; the message says what to fix."""


def publishable_weights(checkpoint: Dict[str, Any], source: str, use_ema: Optional[bool] = None,
                        backbone_only: bool = False) -> Dict[str, torch.Tensor]:
    """The weights a user should get from `checkpoint` (the EMA rule; with `backbone_only`, the keys under
    'backbone.' without it), checked to be a non-empty dict of finite tensors."""
    try:
        weights, chosen = checkpoint_io.select_state_dict(checkpoint, use_ema)
    except ValueError as e:
        raise PublishError(f'{source}: {e}') from None
    if backbone_only:
        weights = {k[len(BACKBONE_PREFIX):]: v for k, v in weights.items() if k.startswith(BACKBONE_PREFIX)}
        if not weights:
            raise PublishError(f'{source}: --backbone-only, but its {chosen!r} weights have no keys under '
                               f'{BACKBONE_PREFIX!r} (is it a detection or segmentation checkpoint?)')
    others = [k for k, v in weights.items() if not isinstance(v, torch.Tensor)]
    if not weights or others:
        raise PublishError(f'{source} holds no model weights: its {chosen!r} entry '
                           + (f'holds {others[:3]}, which are not tensors' if others else 'is empty'))
    checkpoint_io.check_finite(weights, source, f'{chosen!r} weights')
    return weights


def recorded_model(checkpoint: Dict[str, Any], source: str) -> Optional[str]:
    """The timm model a checkpoint records: main.py's `args.model`, or a hub folder's config.json architecture."""
    args = checkpoint.get('args')
    args = vars(args) if isinstance(args, argparse.Namespace) else args  # released/DeiT checkpoints: a Namespace
    if isinstance(args, dict) and args.get('model'):
        return args['model']
    config = Path(source) / checkpoint_io.HUB_CONFIG_FILE
    return json.loads(config.read_text()).get('architecture') if config.is_file() else None


def hub_model(weights: Dict[str, torch.Tensor], name: str, source: str) -> torch.nn.Module:
    """The timm model `name` with `weights` loaded strictly (the class count read from the classifier's weight,
    0 without one; buffers the weights lack keep the model's)."""
    classifier = get_pretrained_cfg_value(name, 'classifier') or 'head'
    head_weight = weights.get(f'{classifier}.weight')
    model = timm.create_model(name, num_classes=0 if head_weight is None else head_weight.shape[0])
    mismatch = checkpoint_io.StateDictMismatch.compare(weights, model, keep_model_buffers=True)
    if mismatch:
        raise PublishError(f'the weights of {source} do not fit timm model {name} with {model.num_classes} '
                           f'classes (pass the right --model):\n{mismatch}')
    model.load_state_dict(weights, strict=False)
    return model.eval()


def write_hub_folder(model: torch.nn.Module, folder: Path, overwrite: bool) -> List[Path]:
    """A folder as timm's `save_for_hf` writes it (config.json, model.safetensors), renamed into place whole."""
    if folder.exists() and not overwrite:
        raise FileExistsError(f'{folder} exists already (not overwritten)')
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f'.{folder.name}.tmp-{os.getpid()}')
    old = folder.with_name(f'.{folder.name}.old-{os.getpid()}')
    try:
        tmp.mkdir()
        save_config_for_hf(model, str(tmp / checkpoint_io.HUB_CONFIG_FILE))
        checkpoint_io.save_checkpoint(model.state_dict(), tmp / checkpoint_io.HUB_WEIGHT_FILES[0])
        if folder.exists():
            folder.rename(old)
        try:
            tmp.rename(folder)
        except OSError:
            if old.exists():
                old.rename(folder)
            raise
    finally:
        for leftover in (tmp, old):
            if leftover.is_dir():
                shutil.rmtree(leftover)
            elif leftover.exists():
                leftover.unlink()
    return [folder / checkpoint_io.HUB_CONFIG_FILE, folder / checkpoint_io.HUB_WEIGHT_FILES[0]]


def publish(source: str, out: Optional[str], formats: Sequence[str] = FORMATS, use_ema: Optional[bool] = None,
            backbone_only: bool = False, hub_dir: Optional[str] = None, model_name: Optional[str] = None,
            overwrite: bool = False) -> List[Path]:
    """Write the published files of checkpoint `source` (see the module docstring); returns their paths."""
    checkpoint = checkpoint_io.load_checkpoint_file(source)
    weights = publishable_weights(checkpoint, source, use_ema, backbone_only)
    model = None
    if hub_dir:  # checked before anything is written
        name = model_name or recorded_model(checkpoint, source)
        if not name:
            raise PublishError(f'{source} does not record its model: pass --model NAME (the timm model) for '
                               f'--hub-dir')
        if not timm.is_model(name):
            given = '--model' if model_name else f'the model recorded in {source}'
            raise PublishError(f'{given}, {name!r}, is not a timm model: pass --model NAME (e.g. '
                               f'{timm.list_models("scalable_vit_*")[0]!r}) for --hub-dir')
        model = hub_model(weights, name, source)
        if Path(hub_dir).exists() and not overwrite:
            raise FileExistsError(f'{hub_dir} exists already (not overwritten)')
    written = []
    if out:
        stem = Path(out)
        if stem.suffix in ('.pth', checkpoint_io.SAFETENSORS_SUFFIX):
            stem = stem.with_suffix('')
        stem.parent.mkdir(parents=True, exist_ok=True)
        meta = checkpoint.get('meta') if isinstance(checkpoint.get('meta'), dict) and not backbone_only else None
        payloads = {'pth': dict(state_dict=weights, **({'meta': meta} if meta else {})), 'safetensors': weights}
        for fmt in dict.fromkeys(formats):
            written.append(checkpoint_io.save_checkpoint(payloads[fmt], stem.with_name(f'{stem.name}.{fmt}'),
                                                         hash_in_name=True, overwrite=overwrite))
    if model is not None:
        written += write_hub_folder(model, Path(hub_dir), overwrite)
    return written


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('checkpoint', help='a checkpoint of classification/main.py or of a detection/segmentation '
                                           'run (or any file or hub folder the package reads)')
    parser.add_argument('out', nargs='?', help='output name without the hash: OUT-<sha256[:8]>.pth / .safetensors')
    parser.add_argument('--format', dest='formats', nargs='+', choices=FORMATS, default=list(FORMATS),
                        help='files to write (default: both)')
    parser.add_argument('--use-ema', action=argparse.BooleanOptionalAction, default=None,
                        help='EMA weights (--use-ema: required) or raw ones (--no-use-ema); default: EMA when the '
                             'checkpoint has them, as --eval')
    parser.add_argument('--backbone-only', action='store_true',
                        help="a detector's or segmenter's backbone ('backbone.' keys, prefix removed), for "
                             "another model's backbone.init_cfg")
    parser.add_argument('--hub-dir', help="also write a hub folder (config.json + model.safetensors, as timm's "
                                          "save_for_hf) that timm.create_model('local-dir:DIR') loads")
    parser.add_argument('--model', dest='model_name',
                        help="the timm model for --hub-dir (default: the one recorded in the checkpoint's args)")
    parser.add_argument('--force', action='store_true', help='overwrite existing files')
    args = parser.parse_args(argv)
    if not args.out and not args.hub_dir:
        parser.error('nothing to write: give OUT and/or --hub-dir')
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        written = publish(args.checkpoint, args.out, args.formats, args.use_ema, args.backbone_only, args.hub_dir,
                          args.model_name, args.force)
    except (PublishError, FileNotFoundError, FileExistsError, checkpoint_io.CheckpointError) as e:
        hint = ': pass --force to overwrite it' if isinstance(e, FileExistsError) else ''
        print(f'error: {e}{hint}', file=sys.stderr)
        return 2
    for path in written:
        print(f'wrote {path} ({path.stat().st_size / 2 ** 20:.1f} MiB)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
