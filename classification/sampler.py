"""Resumable, seeded sampling for training: which images an epoch visits, in which order, and how each one is
augmented are functions of (seed, epoch, rank, position) alone, so a run stopped in the middle of an epoch
continues with exactly the batches and augmentations the uninterrupted run would have had, and the results do
not depend on --num_workers.
"""
import random
import signal
from contextlib import contextmanager
from typing import Iterator, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, get_worker_info

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)  # what Slurm (and a cluster's preemption) sends before the kill


def sample_seeds(seed: int, epoch: int, rank: int, count: int) -> np.ndarray:
    """`count` independent 63-bit seeds, one per position of this rank's share of the epoch."""
    return np.random.default_rng([seed, epoch, rank]).integers(2 ** 63 - 1, size=count, dtype=np.int64)


def seed_everything(seed: int) -> None:
    """Seed the three generators timm's transforms draw from (python's random, numpy, torch's CPU generator;
    not `torch.manual_seed`, which also reseeds every accelerator's generator: slow per sample, and it would
    overwrite the training loop's CUDA stream)."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.default_generator.manual_seed(seed)


@contextmanager
def augmentation_seed(seed: int):
    """Draw what happens inside from `seed`: in a DataLoader worker its generators are re-seeded; in the main
    process (--num_workers 0) their states are restored after, so the training loop's own random streams
    (drop path, mixup) are untouched."""
    if get_worker_info() is not None:
        seed_everything(seed)
        yield
        return
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        seed_everything(seed)
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])


class ResumableSampler(Sampler):
    """An epoch-seeded sampler (DistributedSampler, timm's RepeatAugSampler: `set_epoch(e)` alone fixes the
    order of epoch e) that yields (index, sample seed) pairs and can start at any position of the epoch:
    `set_epoch(epoch, start)` skips the first `start` samples without loading them."""

    def __init__(self, sampler: Sampler, seed: int, rank: int):
        self.sampler = sampler
        self.seed = seed
        self.rank = rank
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.sampler.set_epoch(epoch)
        self.epoch = epoch
        self.start = start

    def __len__(self) -> int:
        return len(self.sampler) - self.start

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        indices = list(self.sampler)
        seeds = sample_seeds(self.seed, self.epoch, self.rank, len(indices)).tolist()
        return iter(zip(indices[self.start:], seeds[self.start:]))


class SeededSamples(Dataset):
    """`dataset[(index, seed)]`: the item, with its augmentation drawn from `seed` (`augmentation_seed`)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: Tuple[int, int]):
        index, seed = item
        with augmentation_seed(seed):
            return self.dataset[index]


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader `worker_init_fn`: workers ignore SIGTERM/SIGUSR1, which Slurm sends to every process of a job
    step, so that the main process can finish its step and save (it shuts its workers down itself)."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
