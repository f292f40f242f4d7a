"""Distributed setup, metric logging, crash-safe checkpoints and RNG state for the classification pipeline."""
import argparse
import datetime
import json
import logging
import os
import random
import sys
import time
from collections import defaultdict, deque
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional

import numpy as np
import torch
import torch.distributed as dist
from timm.utils import init_distributed_device

from scalablevit import checkpoint as checkpoint_io
from scalablevit import run_folder
from scalablevit.distributed import set_slurm_rendezvous

logger = logging.getLogger('classification')


class UserInputError(ValueError):
    """Bad input from the command line or the data: reported as one message, without a traceback."""


class SmoothedValue:
    """A series of values: windowed median/average for the log line, global average for the epoch."""

    def __init__(self, window_size: int = 20, fmt: str = '{median:.4f} ({global_avg:.4f})'):
        self.deque = deque(maxlen=window_size)
        self.total = 0.0
        self.count = 0
        self.fmt = fmt

    def update(self, value: float, n: int = 1) -> None:
        self.deque.append(value)
        self.count += n
        self.total += value * n

    def synchronize_between_processes(self) -> None:
        """Sum count and total over all ranks (the window stays local)."""
        if not is_dist_avail_and_initialized():
            return
        t = torch.tensor([self.count, self.total], dtype=torch.float64, device=_collective_device())
        dist.barrier()
        dist.all_reduce(t)
        self.count, self.total = int(t[0].item()), t[1].item()

    @property
    def median(self) -> float:
        return torch.tensor(list(self.deque)).median().item()

    @property
    def avg(self) -> float:
        return torch.tensor(list(self.deque), dtype=torch.float32).mean().item()

    @property
    def global_avg(self) -> float:
        return self.total / max(self.count, 1)

    @property
    def value(self) -> float:
        return self.deque[-1]

    def __str__(self) -> str:
        return self.fmt.format(median=self.median, avg=self.avg, global_avg=self.global_avg, value=self.value)


class MetricLogger:
    """Named SmoothedValues plus a progress line with ETA every `print_freq` iterations."""

    def __init__(self, delimiter: str = '  '):
        self.meters = defaultdict(SmoothedValue)
        self.delimiter = delimiter

    def update(self, **kwargs: float) -> None:
        for name, value in kwargs.items():
            if isinstance(value, torch.Tensor):
                value = value.item()
            self.meters[name].update(value)

    def add_meter(self, name: str, meter: SmoothedValue) -> None:
        self.meters[name] = meter

    def synchronize_between_processes(self) -> None:
        for meter in self.meters.values():
            meter.synchronize_between_processes()

    def __getattr__(self, name: str) -> SmoothedValue:
        if name in self.__dict__.get('meters', {}):
            return self.meters[name]
        raise AttributeError(name)

    def __str__(self) -> str:
        return self.delimiter.join(f'{name}: {meter}' for name, meter in self.meters.items())

    def log_every(self, iterable: Iterable, print_freq: int, header: str = '') -> Iterator:
        total = len(iterable)
        width = len(str(total))
        start = end = time.time()
        iter_time = SmoothedValue(fmt='{avg:.4f}')
        data_time = SmoothedValue(fmt='{avg:.4f}')
        for i, obj in enumerate(iterable):
            data_time.update(time.time() - end)
            yield obj
            iter_time.update(time.time() - end)
            if i % print_freq == 0 or i == total - 1:
                eta = datetime.timedelta(seconds=int(iter_time.global_avg * (total - i - 1)))
                logger.info(f'{header} [{i:>{width}}/{total}]  eta: {eta}  {self}  '
                            f'time: {iter_time}  data: {data_time}')
            end = time.time()
        elapsed = datetime.timedelta(seconds=int(time.time() - start))
        logger.info(f'{header} Total time: {elapsed} ({(time.time() - start) / max(total, 1):.4f} s / it)')


def is_dist_avail_and_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    return dist.get_world_size() if is_dist_avail_and_initialized() else 1


def get_rank() -> int:
    return dist.get_rank() if is_dist_avail_and_initialized() else 0


def is_main_process() -> bool:
    return get_rank() == 0


def _collective_device() -> torch.device:
    return torch.device('cuda') if dist.get_backend() == 'nccl' else torch.device('cpu')


def setup_logging(rank: int) -> None:
    """Rank-aware logging: rank 0 logs progress (INFO) to stdout; other ranks log only warnings and errors, to
    stderr and prefixed with their rank, so a failure on any rank stays visible."""
    handler = _ConsoleHandler()
    handler.setFormatter(logging.Formatter('%(message)s' if rank == 0 else f'[rank {rank}] %(message)s'))
    logger.handlers = [handler]
    logger.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    logger.propagate = False


class _ConsoleHandler(logging.Handler):
    """INFO to the current sys.stdout, WARNING and above to sys.stderr (looked up per record, so redirected
    streams are followed)."""

    def emit(self, record: logging.LogRecord) -> None:
        stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
        stream.write(self.format(record) + '\n')
        stream.flush()


def init_distributed(args: argparse.Namespace) -> torch.device:
    """Join the process group that torchrun, `torch.distributed.launch --use_env` or Slurm describe (timm's
    `init_distributed_device`: NCCL on GPU, gloo on CPU), set up rank-aware logging and return the device.

    Sets args.distributed, args.rank, args.world_size, args.local_rank and args.device. Under `srun` the
    rendezvous (MASTER_ADDR: the step's first node) comes from `scalablevit.distributed`.
    """
    set_slurm_rendezvous()
    device = init_distributed_device(args)
    setup_logging(args.rank)
    if args.distributed:
        logger.info(f'distributed init (rank {args.rank} of {args.world_size}, {dist.get_backend()})')
    return device


def atomic_save(obj: Any, path: Path) -> None:
    """Write a checkpoint crash-safely, with its tensor digests (`scalablevit.checkpoint.save_checkpoint`).

    A crash at any moment leaves either the previous file or the new one, never a truncated one.
    """
    checkpoint_io.save_checkpoint(obj, path)


def atomic_write_text(text: str, path: Path) -> None:
    path = Path(path)
    tmp = path.with_name(f'.{path.name}.tmp-{os.getpid()}')
    with open(tmp, 'w') as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def lock_output_dir(output_dir: Path) -> run_folder.RunFolderLock:
    """Take `--output_dir` for this run (one run per folder), after checking that it and log.txt are writable;
    removes the temporary files of writes a killed run left behind. A UserInputError names the run that
    holds the folder, or what is not writable."""
    try:
        return run_folder.lock_run_folder(output_dir, files_to_append=('log.txt',))
    except run_folder.RunFolderError as e:
        raise UserInputError(str(e)) from None


def load_model_weights(model: torch.nn.Module, checkpoint: Dict[str, Any], source: str,
                       use_ema: Optional[bool] = None) -> str:
    """Load model weights from any supported checkpoint layout by the package's checkpoint policy
    (`scalablevit.checkpoint`: EMA weights when present unless `use_ema=False`), strictly; a CheckpointError
    names missing, unexpected and shape-mismatched keys (e.g. a checkpoint for another model or class count).
    Returns which weights were loaded ('model', 'model_ema', ...)."""
    try:
        state_dict, chosen = checkpoint_io.select_state_dict(checkpoint, use_ema)
    except ValueError as e:
        raise checkpoint_io.CheckpointError(f'checkpoint {source}: {e}') from None
    checkpoint_io.check_finite(state_dict, f'checkpoint {source}', f'{chosen!r} weights')
    mismatch = checkpoint_io.StateDictMismatch.compare(state_dict, model)
    if mismatch:
        kind = 'another variant?' if mismatch.shape_errors else 'another model?'
        raise checkpoint_io.CheckpointError(
            f'checkpoint {source} does not fit --model {model.pretrained_cfg["architecture"]} with '
            f'{model.num_classes} classes ({kind} the class count comes from the class folders under '
            f'--data-path):\n{mismatch}')
    model.load_state_dict(state_dict, strict=True)
    return chosen


def capture_rng_state() -> Dict[str, Any]:
    """Every RNG the training loop draws from, in a form `torch.load(weights_only=True)` accepts."""
    np_state = np.random.get_state()
    state = {
        'python': random.getstate(),
        'numpy': (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        'torch': torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Dict[str, Any]) -> None:
    random.setstate(_to_tuple(state['python']))
    kind, keys, pos, has_gauss, cached = state['numpy']
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


def _to_tuple(value: Any) -> Any:
    return tuple(_to_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def append_log(output_dir: Path, stats: Dict[str, Any]) -> None:
    with open(Path(output_dir) / 'log.txt', 'a') as f:
        f.write(json.dumps(stats) + '\n')


def _log_records(log: Path) -> List[tuple]:
    """(line, record) of each line of log.txt. A torn last line (a run killed while appending it) is dropped
    with a warning; an unreadable line elsewhere is an error naming the file and the line."""
    lines = log.read_text().splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append((line, json.loads(line)))
        except json.JSONDecodeError:
            if number != len(lines):
                raise UserInputError(f'{log}, line {number}, is not a JSON record: {line[:80]!r}. Remove or '
                                     f'repair that line.') from None
            logger.warning(f'{log}: dropped its incomplete last line ({line[:80]!r}: a run was stopped while '
                           f'writing it)')
    return records


def truncate_log(output_dir: Path, start_epoch: int) -> None:
    """Drop log lines of epochs that will be trained again (a run killed after logging, before saving) and a
    torn last line."""
    log = Path(output_dir) / 'log.txt'
    if not log.exists():
        return
    kept = [line for line, record in _log_records(log) if record.get('epoch', -1) < start_epoch]
    atomic_write_text(''.join(line + '\n' for line in kept), log)
