"""ImageNet as WebDataset tar shards (`--dataset wds`), read with the `webdataset` library.

`--data-path` holds `train-000000.tar`, ... and `val-000000.tar`, ... (`tools/make_shards.py` writes them from an
ImageFolder) and `_info.json` in timm's format: per split `num_samples`, `filenames` and `shard_lengths`, plus
`classes` (label i is classes[i]). A sample is `<key>.jpg` (or .png, ...: the original image bytes) and `<key>.cls`.

Training: the epoch's shard order is shuffled by (seed, epoch); rank r takes every world-th shard and each of its
loader workers every workers-th of those, reads them sequentially, shuffles samples in a buffer and batches them.
Every rank takes the same number of batches per epoch (the ImageFolder path's), a worker cycling through its
shards to fill its share, so DDP ranks step together. Each worker's stream and every sample's augmentation seed
are functions of (seed, epoch, rank, worker role, position), so an epoch replays exactly: a resumed run skips the
batches it had already trained on by reading past them without decoding. That needs the same --num_workers
(which shards a worker reads depends on it); for ImageFolder it does not. With --skip-bad-images, each skipped
image before the resume point shifts the resumed stream by one sample.
"""
import io
import json
import multiprocessing
import random
import warnings
from itertools import cycle, islice
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
from PIL import Image, UnidentifiedImageError
from torch.utils.data import IterableDataset, default_collate, get_worker_info
from torchvision.datasets.folder import IMG_EXTENSIONS

from errors import UserInputError
from image_data import UnreadableImageError, build_transform, to_rgb
from sampler import augmentation_seed, sample_seeds

INFO_FILE = '_info.json'
IMAGE_EXTENSIONS = tuple(ext.lstrip('.') for ext in IMG_EXTENSIONS)  # what ImageFolder (and make_shards.py) reads
# timm's WebDataset reader's sample shuffle: a buffer of 8192 raw samples, yielding once 2048 are in
SHUFFLE_BUFFER, SHUFFLE_INITIAL = 8192, 2048


def build_shard_split(is_train: bool, args) -> Tuple['ShardSplit', int]:
    """The train or val split of the shard folder `args.data_path` (DeiT's transforms) and its class count."""
    root = Path(args.data_path)
    if not root.is_dir():
        raise UserInputError(f'--data-path {root} does not exist: point it at the folder holding the shards.')
    split = ShardSplit(root, 'train' if is_train else 'val', build_transform(is_train, args), args.skip_bad_images)
    return split, len(split.classes)


def _wds():
    try:
        import webdataset
    except ImportError:
        raise UserInputError('--dataset wds needs the webdataset package: pip install -r requirements.txt') from None
    return webdataset


class ShardSplit:
    """One split (train or val) of a shard folder: its shards, their sample counts, the classes and the
    transform; `loader_dataset` makes the iterable a DataLoader reads."""

    def __init__(self, root: Path, split: str, transform: Callable, skip_bad_images: bool = False):
        info_path = root / INFO_FILE
        if not info_path.is_file():
            raise UserInputError(f'--dataset wds: {info_path} does not exist; shards need timm\'s {INFO_FILE} '
                                 f'(tools/make_shards.py writes it with the shards)')
        info = json.loads(info_path.read_text())
        if split not in info.get('splits', {}) or 'classes' not in info:
            raise UserInputError(f'{info_path} has no {split!r} split or no class list ({sorted(info)}); '
                                 f'write the shards with tools/make_shards.py')
        entry = info['splits'][split]
        self.root = root
        self.split = split
        self.shards = [root / name for name in entry['filenames']]
        self.shard_lengths = list(entry['shard_lengths'])
        missing = [str(p) for p in self.shards if not p.is_file()]
        if missing:
            raise UserInputError(f'{info_path} lists shards that do not exist: {missing[:3]}')
        self.classes: List[str] = list(info['classes'])
        self.transform = transform
        self.skip_bad_images = skip_bad_images
        self._skipped = multiprocessing.Value('i', 0)

    def __len__(self) -> int:
        return sum(self.shard_lengths)

    @property
    def num_skipped(self) -> int:
        return self._skipped.value

    def decode(self, sample: Dict) -> Optional[Tuple[Image.Image, int]]:
        """(RGB image, label) of a raw sample; None for an unreadable image with skip_bad_images."""
        name = f'{sample.get("__url__", "?")}:{sample["__key__"]}'
        data = next((sample[ext] for ext in IMAGE_EXTENSIONS if ext in sample), None)
        if data is None or 'cls' not in sample:
            raise UserInputError(f'shard sample {name} lacks an image ({"/".join(IMAGE_EXTENSIONS)}) or a .cls '
                                 f'label (it has {sorted(k for k in sample if not k.startswith("__"))})')
        try:
            image = Image.open(io.BytesIO(data))
            image.load()
            image = to_rgb(image, name)
        except (OSError, UnidentifiedImageError, ValueError, UnreadableImageError) as e:
            if not self.skip_bad_images:
                raise UnreadableImageError(f'cannot read image {name} ({e}). Rewrite the shard without it, or '
                                           f'pass --skip-bad-images to skip unreadable images.') from e
            with self._skipped.get_lock():
                self._skipped.value += 1
            warnings.warn(f'skipped an unreadable image: {e} ({name})')
            return None
        return image, int(sample['cls'])

    def loader_dataset(self, batch_size: int, num_workers: int, rank: int, world_size: int, train: bool,
                       seed: int = 0) -> 'ShardBatches':
        """This rank's batches (evaluation: pass rank 0 of 1 for every sample on every rank)."""
        return ShardBatches(self, batch_size, num_workers, rank, world_size, train, seed)


class ShardBatches(IterableDataset):
    """The batches of one rank (a DataLoader with batch_size=None reads it): for training a fixed number per
    epoch (`set_epoch(epoch, start)`: start = samples of the epoch already trained on, skipped), for evaluation
    every sample of the rank's shards once, in order."""

    def __init__(self, split: ShardSplit, batch_size: int, num_workers: int, rank: int, world_size: int,
                 train: bool, seed: int):
        self.split = split
        self.batch_size = batch_size
        self.workers = max(num_workers, 1)
        self.rank = rank
        self.world_size = world_size
        self.train = train
        self.seed = seed
        self.epoch = 0
        self.start_batch = 0
        if train and len(split.shards) < world_size * self.workers:
            raise UserInputError(
                f'{split.root}: {len(split.shards)} training shards, fewer than processes x loader workers '
                f'({world_size} x {self.workers}); write more, smaller shards (tools/make_shards.py '
                f'--samples-per-shard) or lower --num_workers')
        self.batches_per_epoch = len(split) // world_size // batch_size

    repeats = 1  # shard epochs repeat no image

    def set_epoch(self, epoch: int, start: int = 0, repeats: Optional[int] = None) -> None:
        """Epoch `epoch` from its sample `start` (counted over all ranks, a whole number of global batches)."""
        if start % (self.batch_size * self.world_size):
            raise ValueError(f'a resumed shard epoch starts at a whole global batch, not sample {start}')
        self.epoch = epoch
        self.start_batch = min(start // (self.batch_size * self.world_size), self.batches_per_epoch)

    def _rank_shards(self) -> List[Tuple[Path, int]]:
        shards = list(zip(self.split.shards, self.split.shard_lengths))
        if self.train:
            random.Random(self.seed * 100003 + self.epoch).shuffle(shards)
        return shards[self.rank::self.world_size]

    def _worker_batch_counts(self) -> List[int]:
        """Per worker role: the batches it yields in this epoch (evaluation: ceil(its samples / batch))."""
        shards = self._rank_shards()
        if not self.train:
            return [-(-sum(n for _, n in shards[role::self.workers]) // self.batch_size)
                    for role in range(self.workers)]
        total = self.batches_per_epoch
        return [len(range(role, total, self.workers)) for role in range(self.workers)]

    def __len__(self) -> int:
        if not self.train:
            return sum(self._worker_batch_counts())
        return self.batches_per_epoch - self.start_batch

    def __iter__(self) -> Iterator:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        if info is not None and info.num_workers != self.workers:
            raise RuntimeError(f'ShardBatches was made for {self.workers} workers, the loader has {info.num_workers}')
        # resuming at batch b, the loader asks worker 0 first: it plays the role that produced batch b
        role = (worker + self.start_batch) % self.workers if self.train else worker
        shards = self._rank_shards()[role::self.workers]
        if not shards:
            return
        wds = _wds()
        urls = ({'url': str(path)} for path, _ in (cycle(shards) if self.train else shards))
        stream = wds.tarfile_to_samples()(urls)
        role_seed = [self.seed, self.epoch, self.rank, role]
        if self.train:
            buffer = min(SHUFFLE_BUFFER, sum(n for _, n in shards))
            rng = random.Random(int(np.random.SeedSequence(role_seed).generate_state(1)[0]))
            stream = wds.shuffle(buffer, min(SHUFFLE_INITIAL, buffer), rng=rng)(stream)
            count = self._worker_batch_counts()[role]
            done = len(range(role, self.start_batch, self.workers))  # this role's batches before the start
            stream = islice(stream, done * self.batch_size, None)  # read past them, undecoded
        else:
            count, done = self._worker_batch_counts()[role], 0
        seeds = iter(sample_seeds(self.seed, self.epoch, self.rank * self.workers + role,
                                  count * self.batch_size).tolist()[done * self.batch_size:])
        batch = []
        for _ in range(count - done):
            while len(batch) < self.batch_size:
                sample = next(stream, None)
                if sample is None:
                    break
                decoded = self.split.decode(sample)
                if decoded is None:
                    continue
                image, label = decoded
                if self.train:
                    with augmentation_seed(next(seeds)):
                        batch.append((self.split.transform(image), label))
                else:
                    batch.append((self.split.transform(image), label))
            if not batch:
                return
            yield default_collate(batch)
            batch = []
