"""The one checkpoint policy of this package: every model family, `main.py`, the OpenMMLab backbones and runs
and the tools turn a checkpoint file into model weights through these functions, and write checkpoints with
`save_checkpoint`.

The EMA rule (timm's default too, so `pretrained_cfg_overlay=dict(file=...)` agrees; `pretrained_overlay`
gives the choice):

* `use_ema=None` (the default): the EMA weights (`model_ema`, `state_dict_ema`) when the checkpoint has them,
  the raw weights (`model`, `state_dict`) otherwise;
* `use_ema=True`: the EMA weights, an error if the checkpoint has none;
* `use_ema=False`: the raw weights, an error if the checkpoint has only EMA weights.

Resuming a training run always restores the raw weights into the model and the EMA weights into the EMA.
A file holding a plain state dict (no such keys) is taken as it is. `module.` (DDP) and `_orig_mod.`
(`torch.compile`) prefixes are stripped.

Integrity: every checkpoint this project writes goes through `save_checkpoint` (classification and the
OpenMMLab runs alike): a temporary file, fsync, then a rename, so a crash leaves the old file or the new one,
never a truncated one; the file records a digest of every tensor (`DIGEST_KEY`). `load_checkpoint_file` checks
those digests, so a file altered after it was written is an error naming the tensor; files without digests
(the released checkpoints, timm's, mmengine's own) load as before. Model weights with NaN or infinite values
are refused (`check_finite`) wherever weights are loaded.
"""
import argparse
import hashlib
import os
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn as nn

__all__ = [
    'RAW_KEYS', 'EMA_KEYS', 'DIGEST_KEY', 'TEMPORARY_PATTERN', 'CheckpointError', 'save_checkpoint',
    'load_checkpoint_file', 'tensor_digests', 'check_finite', 'select_state_dict', 'strip_wrapper_prefixes',
    'load_state_dict', 'pretrained_overlay', 'read_pretrained_file', 'compare_state_dict', 'describe_mismatch',
    'filter_for_model',
]

RAW_KEYS = ('model', 'state_dict')  # DeiT / released checkpoints, timm and mmengine
EMA_KEYS = ('model_ema', 'state_dict_ema')  # DeiT's and timm's EMA copies
WRAPPER_PREFIXES = ('module.', '_orig_mod.')
DIGEST_KEY = 'tensor_sha256'  # {tensor path: sha256 of its dtype, shape and bytes}, written by save_checkpoint
TEMPORARY_PATTERN = '.*.tmp-*'  # save_checkpoint's temporary files (`.NAME.tmp-PID`)


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used as it is: unreadable or truncated, altered since it was written,
    or holding non-finite weights. The message names the file (and the tensor)."""


def _tensor_leaves(obj: Any, prefix: str = '') -> Iterator[Tuple[str, Union[torch.Tensor, np.ndarray]]]:
    """(path, tensor) of every tensor and numeric array nested in dicts, lists and tuples, in order;
    paths join keys with '.' (e.g. 'optimizer.state.3.exp_avg')."""
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        yield prefix, obj
    elif isinstance(obj, Mapping):
        for key, value in obj.items():
            yield from _tensor_leaves(value, f'{prefix}.{key}' if prefix else str(key))
    elif isinstance(obj, (list, tuple)):
        for index, value in enumerate(obj):
            yield from _tensor_leaves(value, f'{prefix}.{index}' if prefix else str(index))


def _digest(value: Union[torch.Tensor, np.ndarray]) -> Optional[str]:
    if isinstance(value, torch.Tensor):
        if value.layout != torch.strided:
            return None
        value = value.detach()
        header = f'{value.dtype}{tuple(value.shape)}'
        data = value.cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
    else:
        if value.dtype.hasobject:
            return None
        header = f'{value.dtype}{value.shape}'
        data = np.ascontiguousarray(value).reshape(-1).view(np.uint8)
    digest = hashlib.sha256(header.encode())
    digest.update(data)
    return digest.hexdigest()


def tensor_digests(checkpoint: Mapping[str, Any]) -> Dict[str, str]:
    """sha256 of every tensor in a checkpoint dict (the digest record itself excluded), by path."""
    digests = {}
    for path, value in _tensor_leaves({k: v for k, v in checkpoint.items() if k != DIGEST_KEY}):
        digest = _digest(value)
        if digest is not None:
            digests[path] = digest
    return digests


def save_checkpoint(checkpoint: Any, path: Union[str, Path]) -> None:
    """torch.save `checkpoint` atomically, with its tensor digests when it is a dict (`DIGEST_KEY`).

    Written to a temporary file in the same folder (`.NAME.tmp-PID`), fsynced, renamed over `path`, and the
    folder fsynced: a crash at any moment (kill -9, power loss, a full disk) leaves either the previous file or
    the new one, never a truncated one. The caller's dict is not modified.
    """
    path = Path(path)
    if isinstance(checkpoint, dict):
        checkpoint = {**{k: v for k, v in checkpoint.items() if k != DIGEST_KEY},
                      DIGEST_KEY: tensor_digests(checkpoint)}
    tmp = path.with_name(f'.{path.name}.tmp-{os.getpid()}')
    try:
        with open(tmp, 'wb') as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _verify_digests(checkpoint: Dict[str, Any], path: str) -> None:
    """Every tensor that has a recorded digest must still match it. Tensors removed or added since (a file
    edited on purpose: optimizer state dropped, EMA weights added) are not an error; strict loading checks the
    keys a model needs."""
    recorded = checkpoint.get(DIGEST_KEY)
    if not isinstance(recorded, dict):
        raise CheckpointError(f'checkpoint {path}: its digest record ({DIGEST_KEY!r}) is damaged')
    actual = tensor_digests(checkpoint)
    changed = [k for k in recorded if k in actual and actual[k] != recorded[k]]
    if changed:
        more = f' (and {len(changed) - 3} more)' if len(changed) > 3 else ''
        raise CheckpointError(
            f'checkpoint {path} has been altered or damaged since it was written: the values of tensor(s) '
            f'{", ".join(changed[:3])}{more} differ from the digests recorded when it was written. Use another '
            f'copy or an earlier checkpoint; a file edited on purpose must be saved without its '
            f'{DIGEST_KEY!r} entry.')


def check_finite(tensors: Mapping[str, Any], source: str, what: str = 'model weights') -> None:
    """Raise a CheckpointError naming the first tensors of `tensors` (nested dicts/lists allowed) that hold
    NaN or infinite values: weights like that give NaN losses or meaningless metrics, never a useful run."""
    bad = []
    for path, value in _tensor_leaves(tensors):
        if isinstance(value, torch.Tensor) and value.is_floating_point() and value.layout == torch.strided:
            finite = torch.isfinite(value)
            if not bool(finite.all()):
                bad.append(f'{path} ({int((~finite).sum())} of {value.numel()} values)')
        elif isinstance(value, np.ndarray) and np.issubdtype(value.dtype, np.floating) \
                and not np.isfinite(value).all():
            bad.append(f'{path} ({int((~np.isfinite(value)).sum())} of {value.size} values)')
    if bad:
        more = f' and {len(bad) - 3} more tensors' if len(bad) > 3 else ''
        raise CheckpointError(f'{source}: NaN or infinite values in the {what}: {", ".join(bad[:3])}{more}. '
                              f'Use an earlier checkpoint (the run diverged before this one was written).')


def load_checkpoint_file(path: str, map_location: Union[str, torch.device] = 'cpu') -> Dict[str, Any]:
    """`torch.load(weights_only=True)`; the argparse.Namespace that released/DeiT checkpoints keep under
    'args' is allowed. The tensor digests of a file written by `save_checkpoint` are checked.

    Raises FileNotFoundError (missing file) or CheckpointError (unreadable, truncated, altered, not a dict),
    with the path in the message."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f'checkpoint {path} does not exist' if not os.path.isdir(path) else
                                f'checkpoint {path} is a folder, not a checkpoint file')
    if os.path.getsize(path) == 0:
        raise CheckpointError(f'checkpoint {path} is empty (0 bytes): it was never written completely')
    with torch.serialization.safe_globals([argparse.Namespace]):
        try:
            checkpoint = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as e:
            raise CheckpointError(f'cannot read checkpoint {path} (truncated, damaged or not a PyTorch '
                                  f'checkpoint): {type(e).__name__}: {e}') from e
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f'checkpoint {path} holds a {type(checkpoint).__name__}, not a state dict')
    if DIGEST_KEY in checkpoint:
        _verify_digests(checkpoint, path)
        checkpoint = {k: v for k, v in checkpoint.items() if k != DIGEST_KEY}
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
    state_dict, chosen = select_state_dict(load_checkpoint_file(path), use_ema)
    if prefix:
        state_dict = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        if not state_dict:
            raise ValueError(f'checkpoint {path} has no keys under prefix {prefix!r}')
    check_finite(state_dict, f'checkpoint {path}', f'{chosen!r} weights')
    return state_dict


def pretrained_overlay(path: str, use_ema: Optional[bool] = None) -> Dict[str, Any]:
    """timm's `pretrained_cfg_overlay` for a local checkpoint read by this policy:
    `timm.create_model(name, pretrained=True, pretrained_cfg_overlay=pretrained_overlay(path))` then applies the
    model's checkpoint filter and replaces a classifier of another class count, as for released weights."""
    return dict(state_dict=load_state_dict(path, use_ema))


def read_pretrained_file(pretrained: bool, kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """A family's create-function kwargs with `pretrained_cfg_overlay=dict(file=PATH)` (timm's way to name a
    local checkpoint) read here, by this policy, instead of by timm's bare `torch.load`: a missing, empty,
    truncated or foreign file gets this module's messages, and digests and finite weights are checked. The
    EMA rule is timm's own (EMA weights when present), so the weights chosen do not change."""
    overlay = kwargs.get('pretrained_cfg_overlay') or {}
    if not pretrained or not overlay.get('file') or overlay.get('state_dict') is not None:
        return kwargs
    weights = pretrained_overlay(str(overlay['file']))
    return dict(kwargs, pretrained_cfg_overlay=dict({k: v for k, v in overlay.items() if k != 'file'}, **weights))


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
    check_finite(state_dict, 'pretrained checkpoint')
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
