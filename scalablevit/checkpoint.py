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

Formats: PyTorch files (`torch.load(weights_only=True)`: loading never runs pickled code), `.safetensors` files
(recognised by their content, whatever their name) and hub folders as timm's `save_for_hf` / `push_to_hf_hub`
write them (`config.json` beside `model.safetensors` or `pytorch_model.bin`): `load_checkpoint_file` takes any of
them, so every reader above does too, and `timm.create_model('local-dir:DIR', pretrained=True)` reads the folder
by this policy (`read_pretrained_file`).

Integrity: every checkpoint this project writes goes through `save_checkpoint` (classification and the
OpenMMLab runs alike): a temporary file, fsync, then a rename, so a crash leaves the old file or the new one,
never a truncated one; the file records a digest of every tensor (`DIGEST_KEY`; a `.safetensors` file keeps
them as JSON in its metadata under the same key). `load_checkpoint_file` checks
those digests, so a file altered after it was written is an error naming the tensor; files without digests
(the released checkpoints, timm's, mmengine's own) load as before. Model weights with NaN or infinite values
are refused (`check_finite`) wherever weights are loaded.

Mismatches: `StateDictMismatch.compare(state_dict, model)` is the one report of what keeps weights from loading
(tensors of another shape, missing and unexpected keys), used by the timm filters, the OpenMMLab checks and the
classification loaders alike.
"""
import argparse
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes

__all__ = [
    'RAW_KEYS', 'EMA_KEYS', 'DIGEST_KEY', 'TEMPORARY_PATTERN', 'CheckpointError', 'save_checkpoint',
    'load_checkpoint_file', 'tensor_digests', 'check_finite', 'select_state_dict', 'strip_wrapper_prefixes',
    'load_state_dict', 'pretrained_overlay', 'read_pretrained_file', 'StateDictMismatch',
    'filter_for_model', 'HUB_CONFIG_FILE', 'HUB_WEIGHT_FILES', 'hub_weights_file',
    'is_safetensors_file',
]

RAW_KEYS = ('model', 'state_dict')  # DeiT / released checkpoints, timm and mmengine
EMA_KEYS = ('model_ema', 'state_dict_ema')  # DeiT's and timm's EMA copies
WRAPPER_PREFIXES = ('module.', '_orig_mod.')
DIGEST_KEY = 'tensor_sha256'  # {tensor path: sha256 of its dtype, shape and bytes}, written by save_checkpoint
TEMPORARY_PATTERN = '.*.tmp-*'  # save_checkpoint's temporary files (`.NAME.tmp-PID`)
SAFETENSORS_SUFFIX = '.safetensors'
HUB_CONFIG_FILE = 'config.json'  # timm's save_for_hf: architecture, num_classes, model_args, pretrained_cfg
# the weight files timm's `local-dir:` source looks for first, in its order (save_for_hf writes the first two)
HUB_WEIGHT_FILES = ('model.safetensors', 'pytorch_model.bin', 'pytorch_model.pth', 'model.pth')
CHECKPOINT_SUFFIXES = ('.safetensors', '.pth', '.pth.tar', '.bin', '.pt')


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


def _safetensors_payload(state_dict: Mapping[str, Any], path: Path) -> bytes:
    """A flat state dict as safetensors bytes, its tensor digests in the metadata (`DIGEST_KEY`, JSON)."""
    if not isinstance(state_dict, Mapping):
        raise CheckpointError(f'{path}: a .safetensors file holds a state dict, not a {type(state_dict).__name__}')
    tensors, storages = {}, set()
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f'{path}: a .safetensors file holds a flat state dict of tensors, but {key!r} is '
                                  f'a {type(value).__name__}; write a .pth file for a whole training checkpoint')
        value = value.detach().cpu().contiguous()
        storage = value.untyped_storage().data_ptr()
        tensors[key] = value.clone() if storage and storage in storages else value  # safetensors refuses shared
        storages.add(storage)
    # one metadata entry: safetensors orders several at random, and the file's sha256 names a published file
    metadata = {DIGEST_KEY: json.dumps(tensor_digests(tensors), sort_keys=True)}
    return safetensors_bytes(tensors, metadata=metadata)


def _fsync_folder(folder: Path) -> None:
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def save_checkpoint(checkpoint: Any, path: Union[str, Path], hash_in_name: bool = False,
                    overwrite: bool = True) -> Path:
    """Write `checkpoint` atomically with its tensor digests: `torch.save` (digests under `DIGEST_KEY` when it is
    a dict), or a `.safetensors` file when `path` ends so (a flat state dict; digests in the metadata).

    Written to a temporary file in the same folder (`.NAME.tmp-PID`), fsynced, renamed over the final name, and
    the folder fsynced: a crash at any moment (kill -9, power loss, a full disk) leaves either the previous file
    or the new one, never a truncated one. The caller's dict is not modified.

    `hash_in_name` names the file `STEM-<first 8 hex of its sha256>SUFFIX`, as timm's `clean_checkpoint.py` and
    MMDetection's `publish_model.py` do; without `overwrite` an existing file of the final name is an error
    (FileExistsError) and nothing is written. Returns the path written.
    """
    path = Path(path)
    if path.suffix == SAFETENSORS_SUFFIX:
        payload = _safetensors_payload(checkpoint, path)
        return _write_atomically(path, lambda f: f.write(payload), hash_in_name, overwrite)
    if isinstance(checkpoint, dict):
        checkpoint = {**{k: v for k, v in checkpoint.items() if k != DIGEST_KEY},
                      DIGEST_KEY: tensor_digests(checkpoint)}
    return _write_atomically(path, lambda f: torch.save(checkpoint, f), hash_in_name, overwrite)


def _write_atomically(path: Path, write: Callable[[IO[bytes]], Any], hash_in_name: bool,
                      overwrite: bool) -> Path:
    """`write` into `.NAME.tmp-PID`, fsync, rename to the final name (see `save_checkpoint`), fsync the folder."""
    tmp = path.with_name(f'.{path.name}.tmp-{os.getpid()}')
    final = path
    try:
        with open(tmp, 'wb') as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if hash_in_name:
            stem = path.name[:-len(path.suffix)] if path.suffix else path.name
            final = path.with_name(f'{stem}-{_file_sha256(tmp)[:8]}{path.suffix}')
        if not overwrite and final.exists():
            raise FileExistsError(f'{final} exists already (not overwritten)')
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_folder(final.parent)
    return final


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


def is_safetensors_file(path: Union[str, Path]) -> bool:
    """Whether `path` is a safetensors file, by its content (an 8-byte header length, then a JSON header)."""
    with open(path, 'rb') as f:
        head = f.read(9)
    return (len(head) == 9 and head[8:9] == b'{'
            and int.from_bytes(head[:8], 'little') <= os.path.getsize(path) - 8)


def hub_weights_file(folder: Union[str, Path]) -> Path:
    """The weight file of a hub folder (timm's `save_for_hf` / `push_to_hf_hub` layout), chosen as timm's
    `local-dir:` source chooses: the first of `HUB_WEIGHT_FILES`, else the folder's one checkpoint file.

    Raises FileNotFoundError when the folder holds none, or several without one of those names."""
    folder = Path(folder)
    for name in HUB_WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    found = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(CHECKPOINT_SUFFIXES))
    if len(found) == 1:
        return found[0]
    holds = f'several checkpoint files {[p.name for p in found][:5]}' if found else \
        f'no checkpoint file ({", ".join(sorted(p.name for p in folder.iterdir())[:5]) or "it is empty"})'
    raise FileNotFoundError(
        f'checkpoint {folder} is a folder with {holds}: a hub folder (timm\'s save_for_hf) holds '
        f'{HUB_CONFIG_FILE} and one of {", ".join(HUB_WEIGHT_FILES)}; pass the checkpoint file itself otherwise')


def _read_safetensors(path: str, map_location: Union[str, torch.device]) -> Dict[str, Any]:
    """The tensors of a safetensors file (no pickle involved), the digests of its metadata checked."""
    device = str(map_location) if isinstance(map_location, (str, torch.device)) else 'cpu'
    try:
        with safe_open(path, framework='pt', device=device) as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except Exception as e:
        raise CheckpointError(f'cannot read checkpoint {path} (truncated or damaged safetensors file): '
                              f'{type(e).__name__}: {e}') from e
    if DIGEST_KEY in metadata:
        try:
            recorded = json.loads(metadata[DIGEST_KEY])
        except json.JSONDecodeError:
            recorded = None
        _verify_digests({**tensors, DIGEST_KEY: recorded}, path)
    return tensors


def load_checkpoint_file(path: str, map_location: Union[str, torch.device] = 'cpu') -> Dict[str, Any]:
    """The checkpoint dict of a PyTorch file (`torch.load(weights_only=True)`; the argparse.Namespace that
    released/DeiT checkpoints keep under 'args' is allowed), of a safetensors file (its state dict), or of a
    hub folder's weight file (`hub_weights_file`). The tensor digests of a file written by `save_checkpoint`
    are checked.

    Raises FileNotFoundError (missing file, folder without weights) or CheckpointError (unreadable, truncated,
    altered, not a dict), with the path in the message."""
    if os.path.isdir(path):
        path = str(hub_weights_file(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(f'checkpoint {path} does not exist')
    if os.path.getsize(path) == 0:
        raise CheckpointError(f'checkpoint {path} is empty (0 bytes): it was never written completely')
    if is_safetensors_file(path):
        return _read_safetensors(path, map_location)
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
    """A family's create-function kwargs with the local weights timm would read itself read here, by this
    policy: `pretrained_cfg_overlay=dict(file=PATH)` (timm's way to name a local checkpoint: a PyTorch or
    safetensors file, or a hub folder) and the folder of `timm.create_model('local-dir:DIR', pretrained=True)`
    (its `config.json` already chose the model). A missing, empty, truncated or foreign file gets this module's
    messages, and digests and finite weights are checked. The EMA rule is timm's own (EMA weights when present),
    so the weights chosen do not change."""
    if not pretrained:
        return kwargs
    overlay = kwargs.get('pretrained_cfg_overlay') or {}
    if overlay.get('state_dict') is not None:
        return kwargs
    if overlay.get('file'):
        path = str(overlay['file'])
    else:
        cfg = kwargs.get('pretrained_cfg')
        cfg = cfg.to_dict() if hasattr(cfg, 'to_dict') else cfg
        if not (isinstance(cfg, dict) and cfg.get('source') == 'local-dir' and cfg.get('file')):
            return kwargs
        path = str(cfg['file'])
        overlay = dict(overlay, source=None)  # timm reads a local-dir source itself: the state dict goes first
    weights = pretrained_overlay(path)
    return dict(kwargs, pretrained_cfg_overlay=dict({k: v for k, v in overlay.items() if k != 'file'}, **weights))


@dataclass
class StateDictMismatch:
    """What keeps a state dict from loading into a model strictly: tensors of another shape, model keys the
    state dict lacks, state dict keys the model lacks. False when it fits; `str()` is the report, a line each.

    Built by `compare`, which can leave out a prefix (`ignore`: a classifier timm replaces itself), accept a
    classifier of another shape for fine-tuning (`reinitialise`: those keys are listed in `reinitialised`, not in
    `shape_errors`; load `loadable(state_dict)` and they keep the model's fresh initialisation) and accept model
    buffers the state dict lacks (`keep_model_buffers`: listed in `kept_buffers`, not in `missing`).
    """
    shape_errors: List[str] = field(default_factory=list)  # 'key: checkpoint (a, b) vs model (c, d)'
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    reinitialised: List[str] = field(default_factory=list)
    kept_buffers: List[str] = field(default_factory=list)
    limit: int = 8  # names shown per line

    @classmethod
    def compare(cls, state_dict: Mapping[str, Any], model: nn.Module, ignore: Optional[str] = None,
                reinitialise: Optional[str] = None, keep_model_buffers: bool = False) -> 'StateDictMismatch':
        """The mismatch of `state_dict` against `model` (see the class for the options; prefixes end with '.')."""
        model_state = model.state_dict()
        keys = [k for k in state_dict if ignore is None or not k.startswith(ignore)]
        differ = [k for k in keys if k in model_state and tuple(state_dict[k].shape) != tuple(model_state[k].shape)]
        reinitialised = [k for k in differ if reinitialise is not None and k.startswith(reinitialise)]
        shape_errors = [f'{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(model_state[k].shape)}'
                        for k in differ if k not in reinitialised]
        missing = sorted(k for k in model_state if k not in state_dict and (ignore is None or not k.startswith(ignore)))
        buffers = {name for name, _ in model.named_buffers()} if keep_model_buffers else set()
        return cls(shape_errors=shape_errors, missing=[k for k in missing if k not in buffers],
                   unexpected=sorted(k for k in keys if k not in model_state), reinitialised=sorted(reinitialised),
                   kept_buffers=[k for k in missing if k in buffers])

    def __bool__(self) -> bool:
        return bool(self.shape_errors or self.missing or self.unexpected)

    def __str__(self) -> str:
        def summarize(items: List[str]) -> str:
            if not items:
                return 'none'
            more = f' ... and {len(items) - self.limit} more' if len(items) > self.limit else ''
            return ', '.join(items[:self.limit]) + more
        return (f'  shape mismatches: {summarize(self.shape_errors)}\n  missing keys: {summarize(self.missing)}\n'
                f'  unexpected keys: {summarize(self.unexpected)}')

    def loadable(self, state_dict: Mapping[str, Any]) -> Dict[str, Any]:
        """`state_dict` without the re-initialised tensors (for `model.load_state_dict(..., strict=False)`)."""
        return {k: v for k, v in state_dict.items() if k not in self.reinitialised}


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
    mismatch = StateDictMismatch.compare(state_dict, model, ignore=head_prefix)
    if mismatch.shape_errors:
        name = model_name or type(model).__name__
        raise ValueError(f'Checkpoint does not fit this {name} ({len(mismatch.shape_errors)} tensors differ in '
                         f'shape; is it for another variant?)\n{mismatch}')
    if fixed_buffer_suffixes:
        for key, value in model.state_dict().items():
            if key.endswith(fixed_buffer_suffixes) and key not in state_dict:
                state_dict[key] = value
    return state_dict
