"""Resumable, seeded sampling for training: which images an epoch visits, in which order, and how each one is
augmented are functions of (seed, epoch, position in the epoch) alone, so a run stopped in the middle of an
epoch continues with exactly the batches and augmentations the uninterrupted run would have had, on the same
number of processes or on another, and the results do not depend on --num_workers.
"""
import random
from contextlib import contextmanager
from typing import Iterator, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, get_worker_info


def sample_seeds(seed: int, epoch: int, rank: int, count: int) -> np.ndarray:
    """`count` independent 63-bit seeds, one per position of stream `rank` of the epoch (an ImageFolder epoch
    has one stream, a shard epoch one per rank and loader worker)."""
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


class EpochOrder(Sampler):
    """One rank's share of an epoch whose order does not depend on the process layout.

    The epoch is a permutation of the dataset fixed by (seed, epoch), each image `repeats` times in a row
    (timm's repeated augmentation: the copies land on consecutive ranks of one step), `len(dataset)` positions
    long. Rank r of `world_size` takes positions start + r, start + r + world_size, ... in whole batches, so
    after every rank's first m batches the epoch's first m x batch x world_size positions are trained, no
    other: a run stopped there resumes from that count of samples (`set_epoch(epoch, start)`) on any number of
    processes and batch size, training each remaining position once. Yields (index, augmentation seed); the
    seed belongs to the position, so a sample is augmented alike in every layout."""

    def __init__(self, dataset_size: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 repeats: int = 1):
        self.dataset_size = dataset_size
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.repeats = repeats
        self.epoch = 0
        self.start = 0
        self.epoch_repeats = repeats

    def set_epoch(self, epoch: int, start: int = 0, repeats: Optional[int] = None) -> None:
        """Epoch `epoch` from global position `start` (the samples already trained by the ranks together);
        `repeats`: that of the run which trained them, when resuming its epoch."""
        if not 0 <= start <= self.dataset_size:
            raise ValueError(f'epoch position {start} lies outside the {self.dataset_size} samples of an epoch')
        self.epoch = epoch
        self.start = start
        self.epoch_repeats = self.repeats if repeats is None else repeats

    def __len__(self) -> int:
        """This rank's samples: whole global batches of what is left of the epoch."""
        return (self.dataset_size - self.start) // (self.world_size * self.batch_size) * self.batch_size

    def positions(self) -> range:
        """The epoch positions this rank trains, in order."""
        return range(self.start + self.rank, self.start + len(self) * self.world_size, self.world_size)

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        permutation = np.random.default_rng([self.seed, self.epoch]).permutation(self.dataset_size)
        # epoch position p holds image permutation[p // repeats]
        seeds = sample_seeds(self.seed, self.epoch, 0, self.dataset_size)
        return ((int(permutation[p // self.epoch_repeats]), int(seeds[p])) for p in self.positions())


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
