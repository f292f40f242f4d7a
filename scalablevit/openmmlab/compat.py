"""What mmengine 0.10 needs on today's PyTorch: loading its own checkpoints under `torch.load`'s
`weights_only=True` default, and distributed runs (`--launcher pytorch`) on machines without a GPU; and what this
project adds: mmengine's local checkpoint reads and writes go through the package's checkpoint policy
(`use_checkpoint_policy`). Importing this module changes nothing in mmengine: the project's drivers
(`runner.py`) install the checkpoint policy for their runs, and a script of one's own can do the same with
`with use_checkpoint_policy(): ...`."""
import argparse
import codecs
import contextlib
import copyreg
import datetime
import logging
import os
import os.path as osp
import re
from typing import Iterator, Optional

import numpy as np
import torch
import torch.distributed as dist
from mmengine.config import Config
from mmengine.logging import HistoryBuffer, print_log
from mmengine.model import MMDistributedDataParallel
from mmengine.registry import MODEL_WRAPPERS
from mmengine.runner import checkpoint as mmengine_checkpoint
from mmengine.runner import runner as mmengine_runner

from .. import checkpoint as checkpoint_io

__all__ = ['allow_mmengine_checkpoints', 'use_checkpoint_policy', 'CPUDistributedDataParallel',
           'prepare_cpu_distributed']


def _reduce_history_buffer(buffer: HistoryBuffer) -> tuple:
    """Pickle a HistoryBuffer as its data; its statistics methods come back from the class."""
    return HistoryBuffer, (buffer._log_history, buffer._count_history, buffer.max_length)


def allow_mmengine_checkpoints() -> None:
    """Make mmengine checkpoints loadable under PyTorch's `torch.load(weights_only=True)` default.

    mmengine 0.10 calls a bare `torch.load`, and its checkpoints hold the message hub: HistoryBuffers whose
    pickled form includes bound methods (reached through `getattr`, which must never be allowlisted: with
    it a checkpoint can call any function). Checkpoints written after this call pickle HistoryBuffers as
    plain arrays instead, and exactly the types those need are allowlisted (for the whole process:
    `use_checkpoint_policy` undoes it on exit).
    """
    copyreg.pickle(HistoryBuffer, _reduce_history_buffer)
    multiarray = np._core.multiarray if hasattr(np, '_core') else np.core.multiarray
    allowed = [HistoryBuffer, argparse.Namespace, np.ndarray, np.dtype, multiarray._reconstruct, multiarray.scalar,
               codecs.encode]
    allowed += [type(np.dtype(t)) for t in (np.float16, np.float32, np.float64, np.int8, np.int16, np.int32,
                                              np.int64, np.uint8, np.bool_)]
    torch.serialization.add_safe_globals(allowed)


def _is_local(filename: str) -> bool:
    return '://' not in str(filename)


def load_from_local(filename: str, map_location=None) -> dict:
    """mmengine's reader for local files (its `load_from_local`, by the same name so that its log says 'local
    backend'), by the checkpoint policy: digests checked, and NaN or infinite model weights (and optimizer
    state) refused, each with an error naming the file and the tensor."""
    filename = osp.expanduser(filename)
    checkpoint = checkpoint_io.load_checkpoint_file(filename, map_location=map_location)
    checkpoint_io.check_finite(checkpoint.get('state_dict', checkpoint), f'checkpoint {filename}')
    if isinstance(checkpoint.get('optimizer'), dict):
        checkpoint_io.check_finite({'optimizer': checkpoint['optimizer']}, f'checkpoint {filename}',
                                   'optimizer state')
    return checkpoint


def _save_checkpoint(checkpoint: dict, filename: str, file_client_args=None, backend_args=None) -> None:
    """mmengine's `save_checkpoint` with local files written by `scalablevit.checkpoint.save_checkpoint`
    (temporary file, fsync, rename; tensor digests); other backends as mmengine writes them."""
    if _is_local(filename) and file_client_args is None and not backend_args:
        checkpoint_io.save_checkpoint(checkpoint, filename)
    else:
        _mmengine_save_checkpoint(checkpoint, filename, file_client_args=file_client_args,
                                  backend_args=backend_args)


_mmengine_save_checkpoint = mmengine_checkpoint.save_checkpoint


_CHECKPOINT_NAME = re.compile(r'(?:(?:epoch|iter)_\d+|stopped)\.pth')


def find_resumable_checkpoint(work_dir: str) -> Optional[str]:
    """mmengine's `find_latest_checkpoint` (the file that `last_checkpoint` names), safe against a kill at any
    moment: mmengine rewrites `last_checkpoint` in place, so a kill then leaves it empty or torn; when it is, or
    names a file that is gone, the checkpoint of the work dir written last (`epoch_N.pth`, `iter_N.pth` or a
    stopped run's `stopped.pth`, by modification time: the numbers of epochs and iterations do not compare) is
    taken instead (every checkpoint there is complete: they are written atomically)."""
    named = mmengine_checkpoint.find_latest_checkpoint(work_dir)
    if named and osp.isfile(named):
        return named
    written = sorted((os.stat(osp.join(work_dir, name)).st_mtime_ns, name) for name in os.listdir(work_dir)
                     if _CHECKPOINT_NAME.fullmatch(name))
    if not written:
        return None
    newest = osp.join(work_dir, written[-1][1])
    print_log(f'{osp.join(work_dir, "last_checkpoint")} ' + (f'names {named}, which does not exist' if named else
              'is missing or empty') + f': resuming from the checkpoint written last, {newest}', logger='current',
              level=logging.WARNING)
    return newest


@contextlib.contextmanager
def use_checkpoint_policy() -> Iterator[None]:
    """Within the block, mmengine's local checkpoint files go through `scalablevit.checkpoint`: the Runner's
    (and so the CheckpointHook's) writes are atomic with digests, so a kill during a save never leaves a truncated
    `epoch_N.pth`; every local read (`load_from`, `--resume`, test.py) checks digests and finite weights and
    loads mmengine's own checkpoints under `weights_only=True` (`allow_mmengine_checkpoints`); `--resume`
    without a file finds the checkpoint by `find_resumable_checkpoint`. mmengine's own behaviour comes back on
    exit. `runner.py`'s drivers run inside it."""
    loaders = dict(mmengine_checkpoint.CheckpointLoader._schemes)
    saved = mmengine_runner.save_checkpoint, mmengine_runner.find_latest_checkpoint
    reducer = copyreg.dispatch_table.get(HistoryBuffer)
    safe_globals = torch.serialization.get_safe_globals()
    allow_mmengine_checkpoints()
    mmengine_checkpoint.CheckpointLoader.register_scheme(prefixes='', loader=load_from_local, force=True)
    mmengine_runner.save_checkpoint = _save_checkpoint
    mmengine_runner.find_latest_checkpoint = find_resumable_checkpoint
    try:
        yield
    finally:
        mmengine_runner.save_checkpoint, mmengine_runner.find_latest_checkpoint = saved
        mmengine_checkpoint.CheckpointLoader._schemes = loaders
        if reducer is None:
            copyreg.dispatch_table.pop(HistoryBuffer, None)
        else:
            copyreg.dispatch_table[HistoryBuffer] = reducer
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(safe_globals)


@MODEL_WRAPPERS.register_module(force=True)
class CPUDistributedDataParallel(MMDistributedDataParallel):
    """mmengine's DDP wrapper for models on the CPU: the Runner passes `device_ids=[LOCAL_RANK]`, which
    PyTorch's DDP rejects for a CPU module, so it is dropped here."""

    def __init__(self, module: torch.nn.Module, device_ids=None, **kwargs):
        super().__init__(module=module, device_ids=None, **kwargs)


def _sync_bn_to_bn(node) -> int:
    """Turn every `type='SyncBN'` norm config under `node` into plain BN in place; returns how many."""
    changed = 0
    if isinstance(node, dict):
        if node.get('type') == 'SyncBN':
            node['type'] = 'BN'
            changed += 1
        for value in node.values():
            changed += _sync_bn_to_bn(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            changed += _sync_bn_to_bn(value)
    return changed


def prepare_cpu_distributed(cfg: Config) -> None:
    """Let `--launcher pytorch` (or `slurm`) run on CPU processes (gloo), e.g. `dist_train.sh CONFIG 2` without
    a GPU.

    mmengine's launcher calls `torch.cuda.set_device` and defaults to NCCL; here the process group is joined
    with gloo first (the Runner then skips its own initialisation) and the model is wrapped by
    `CPUDistributedDataParallel`. SyncBN exists only for GPUs: on CPU it becomes per-process BN, as mmengine
    does for non-distributed runs. With a GPU, nothing changes.
    """
    if cfg.get('launcher', 'none') == 'none' or torch.cuda.is_available():
        return
    if _sync_bn_to_bn(cfg.model):
        print_log('CPU distributed run: SyncBN layers run as per-process BN (SyncBN needs GPUs)',
                  logger='current', level=logging.WARNING)
    dist_cfg = cfg.setdefault('env_cfg', {}).setdefault('dist_cfg', {})
    dist_cfg['backend'] = 'gloo'
    if not dist.is_initialized():
        timeout = datetime.timedelta(seconds=dist_cfg.get('timeout', 1800))
        dist.init_process_group(backend='gloo', timeout=timeout, rank=int(os.environ['RANK']),
                                world_size=int(os.environ['WORLD_SIZE']))
    wrapper = dict(cfg.get('model_wrapper_cfg') or {})
    if wrapper.get('type', 'MMDistributedDataParallel') == 'MMDistributedDataParallel':
        wrapper['type'] = 'CPUDistributedDataParallel'
        wrapper.setdefault('broadcast_buffers', False)
        wrapper.setdefault('find_unused_parameters', cfg.get('find_unused_parameters', False))
        cfg.model_wrapper_cfg = wrapper
