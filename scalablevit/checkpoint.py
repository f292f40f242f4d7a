"""The one checkpoint-reading policy of this package: every model family, `main.py`, the OpenMMLab backbones
and the tools turn a checkpoint file into model weights through these functions.

The EMA rule (timm's default too, so `pretrained_cfg_overlay=dict(file=...)` agrees; `pretrained_overlay`
gives the choice):

* `use_ema=None` (the default): the EMA weights (`model_ema`, `state_dict_ema`) when the checkpoint has them,
  the raw weights (`model`, `state_dict`) otherwise;
* `use_ema=True`: the EMA weights, an error if the checkpoint has none;
* `use_ema=False`: the raw weights, an error if the checkpoint has only EMA weights.

Resuming a training run always restores the raw weights into the model and the EMA weights into the EMA.
A file holding a plain state dict (no such keys) is taken as it is. `module.` (DDP) and `_orig_mod.`
(`torch.compile`) prefixes are stripped.
"""
import argparse
import os
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn

__all__ = [
    'RAW_KEYS', 'EMA_KEYS', 'load_checkpoint_file', 'select_state_dict', 'strip_wrapper_prefixes',
    'load_state_dict', 'pretrained_overlay', 'compare_state_dict', 'describe_mismatch', 'filter_for_model',
]

RAW_KEYS = ('model', 'state_dict')  # DeiT / released checkpoints, timm and mmengine
EMA_KEYS = ('model_ema', 'state_dict_ema')  # DeiT's and timm's EMA copies
WRAPPER_PREFIXES = ('module.', '_orig_mod.')


def load_checkpoint_file(path: str) -> Dict[str, Any]:
    """`torch.load(weights_only=True)` on CPU; the argparse.Namespace that released/DeiT checkpoints keep
    under 'args' is allowed. Raises FileNotFoundError or ValueError with the path in the message."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f'checkpoint {path} does not exist')
    with torch.serialization.safe_globals([argparse.Namespace]):
        try:
            checkpoint = torch.load(path, map_location='cpu', weights_only=True)
        except Exception as e:
            raise ValueError(f'cannot read checkpoint {path}: {e}') from e
    if not isinstance(checkpoint, dict):
        raise ValueError(f'checkpoint {path} holds a {type(checkpoint).__name__}, not a state dict')
    return checkpoint


def _first_present(checkpoint: Dict[str, Any], keys: Tuple[str, ...]) -> Optional[str]:
    return next((k for k in keys if isinstance(checkpoint.get(k), dict)), None)


def select_state_dict(checkpoint: Dict[str, Any], use_ema: Optional[bool] = None) -> Tuple[Dict[str, Any], str]:
    """(state dict, where it came from) chosen from a checkpoint dict by the module's EMA rule."""
    raw, ema = _first_present(checkpoint, RAW_KEYS), _first_present(checkpoint, EMA_KEYS)
    if raw is None and ema is None:
        if use_ema:
            raise ValueError('use_ema=True, but the checkpoint holds a plain state dict without EMA weights')
        return strip_wrapper_prefixes(checkpoint), 'state dict'
    if use_ema is True and ema is None:
        raise ValueError(f'use_ema=True, but the checkpoint has no EMA weights ({" / ".join(EMA_KEYS)}); '
                         f'it holds {raw!r}')
    if use_ema is False and raw is None:
        raise ValueError(f'use_ema=False, but the checkpoint holds only EMA weights ({ema!r})')
    key = ema if (use_ema is not False and ema is not None) else raw
    return strip_wrapper_prefixes(checkpoint[key]), key


def strip_wrapper_prefixes(state_dict: Dict[str, Any]) -> Dict[str, Any]:
    """Remove `module.` (DDP) and `_orig_mod.` (torch.compile) prefixes, in any order and number."""
    cleaned = {}
    for k, v in state_dict.items():
        while k.startswith(WRAPPER_PREFIXES):
            k = k.split('.', 1)[1]
        cleaned[k] = v
    return cleaned


def load_state_dict(path: str, use_ema: Optional[bool] = None, prefix: Optional[str] = None) -> Dict[str, Any]:
    """The model weights in a checkpoint file, by the module's EMA rule.

    `prefix` keeps only the keys under it, without it (e.g. 'backbone.' to take a detector's backbone).
    """
    state_dict, _ = select_state_dict(load_checkpoint_file(path), use_ema)
    if prefix:
        state_dict = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        if not state_dict:
            raise ValueError(f'checkpoint {path} has no keys under prefix {prefix!r}')
    return state_dict


def pretrained_overlay(path: str, use_ema: Optional[bool] = None) -> Dict[str, Any]:
    """timm's `pretrained_cfg_overlay` for a local checkpoint read by this policy:
    `timm.create_model(name, pretrained=True, pretrained_cfg_overlay=pretrained_overlay(path))` then applies the
    model's checkpoint filter and replaces a classifier of another class count, as for released weights."""
    return dict(state_dict=load_state_dict(path, use_ema))


def compare_state_dict(
        state_dict: Dict[str, torch.Tensor],
        model: nn.Module,
        skip_prefix: Optional[str] = None,
) -> Tuple[List[str], List[str], List[str]]:
    """(shape mismatches, missing keys, unexpected keys) of `state_dict` against `model`."""
    model_shapes = {k: v.shape for k, v in model.state_dict().items()}
    keys = [k for k in state_dict if skip_prefix is None or not k.startswith(skip_prefix)]
    shape_errors = [
        f'{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(model_shapes[k])}'
        for k in keys if k in model_shapes and state_dict[k].shape != model_shapes[k]
    ]
    missing = sorted(k for k in model_shapes
                     if k not in state_dict and (skip_prefix is None or not k.startswith(skip_prefix)))
    unexpected = sorted(k for k in keys if k not in model_shapes)
    return shape_errors, missing, unexpected


def describe_mismatch(shape_errors: List[str], missing: List[str], unexpected: List[str], limit: int = 8) -> str:
    """The mismatch report: a line each for shape mismatches, missing and unexpected keys."""
    def summarize(items: List[str]) -> str:
        if not items:
            return 'none'
        more = f' ... and {len(items) - limit} more' if len(items) > limit else ''
        return ', '.join(items[:limit]) + more
    return (f'  shape mismatches: {summarize(shape_errors)}\n  missing keys: {summarize(missing)}\n'
            f'  unexpected keys: {summarize(unexpected)}')


def filter_for_model(
        state_dict: Dict[str, Any],
        model: nn.Module,
        head_prefix: str = 'head.',
        model_name: Optional[str] = None,
        fixed_buffer_suffixes: Tuple[str, ...] = (),
) -> Dict[str, Any]:
    """The generic `checkpoint_filter_fn` body: unwrap (EMA rule) and clean the state dict, drop the classifier
    for a headless model, and raise a ValueError with the mismatch report when tensors differ in shape (the
    classifier excepted: timm replaces it itself when the class count differs). Buffers whose keys end with one
    of `fixed_buffer_suffixes` (constants such as `relative_position_index`) are taken from the model when the
    checkpoint was saved without them."""
    if _first_present(state_dict, RAW_KEYS + EMA_KEYS) is not None:
        state_dict, _ = select_state_dict(state_dict)
    else:
        state_dict = strip_wrapper_prefixes(state_dict)
    if isinstance(getattr(model, 'head', None), nn.Identity) or getattr(model, 'num_classes', 1) == 0:
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith(head_prefix)}
    shape_errors, missing, unexpected = compare_state_dict(state_dict, model, skip_prefix=head_prefix)
    if shape_errors:
        name = model_name or type(model).__name__
        raise ValueError(
            f'Checkpoint does not fit this {name} ({len(shape_errors)} tensors differ in shape; is it for '
            f'another variant?)\n{describe_mismatch(shape_errors, missing, unexpected)}'
        )
    if fixed_buffer_suffixes:
        for key, value in model.state_dict().items():
            if key.endswith(fixed_buffer_suffixes) and key not in state_dict:
                state_dict[key] = value
    return state_dict
