"""`--dataset wds`: tools/make_shards.py writes WebDataset shards from an ImageFolder; the reader splits them across
ranks and loader workers, covers the validation set exactly once, replays a training epoch exactly from any batch,
and trains the demo to the ImageFolder path's accuracy."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torchvision import transforms

from helpers import ROOT, run_command

pytest.importorskip('webdataset')
from scalablevit.demo_data import make_demo_image_folder  # noqa: E402

import shards as cls_shards  # noqa: E402
from errors import UserInputError  # noqa: E402
from make_shards import make_shards  # noqa: E402

CLASSIFICATION = ROOT / 'classification'


@pytest.fixture(scope='module')
def folder(tmp_path_factory) -> Path:
    return make_demo_image_folder(tmp_path_factory.mktemp('folder'), num_classes=4, train_per_class=24, val_per_class=9,
                                  size=32)


@pytest.fixture(scope='module')
def shards(folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp('shards')
    make_shards(folder, out, samples_per_shard=8)
    return out


def test_make_shards_writes_timm_info(folder, shards):
    info = json.loads((shards / '_info.json').read_text())
    assert info['classes'] == ['class_00', 'class_01', 'class_02', 'class_03']
    assert info['splits']['train']['num_samples'] == 96 and len(info['splits']['train']['filenames']) == 12
    assert info['splits']['val']['shard_lengths'] == [8, 8, 8, 8, 4]
    assert sorted(p.name for p in shards.glob('*.tar'))[:2] == ['train-000000.tar', 'train-000001.tar']
    assert not list(shards.glob('.*'))


def labelled(split: cls_shards.ShardSplit) -> cls_shards.ShardSplit:
    """The split with a transform that keeps the random crop's offset visible: the image as a tensor."""
    split.transform = transforms.Compose([transforms.RandomCrop(24), transforms.PILToTensor()])
    return split


def read_all(batches, num_workers: int):
    loader = torch.utils.data.DataLoader(batches, batch_size=None, num_workers=num_workers)
    return [(images.clone(), labels.clone()) for images, labels in loader]


def test_validation_split_covers_every_image_once(folder, shards):
    """With two ranks and two workers each, the val shards give each of the 36 images once (by content)."""
    split = labelled(cls_shards.ShardSplit(shards, 'val', None))
    split.transform = transforms.PILToTensor()
    seen = []
    for rank in range(2):
        batches = split.loader_dataset(4, 2, rank, 2, train=False)
        got = read_all(batches, 2)
        assert len(got) == len(batches)
        seen += [(label.item(), image.sum().item()) for images, labels in got for image, label in zip(images, labels)]
    assert len(seen) == 36 and len(set(seen)) == 36
    assert sorted(label for label, _ in seen) == sorted([0, 1, 2, 3] * 9)


def test_training_epoch_replays_from_any_batch(shards):
    """A rank's epoch (2 ranks, 2 workers, batch 4: 12 batches) is a function of (seed, epoch): read again from
    batch 5 it gives the same batches 5..11, augmentations included; other epochs differ."""
    split = labelled(cls_shards.ShardSplit(shards, 'train', None))
    batches = split.loader_dataset(4, 2, 1, 2, train=True, seed=3)
    batches.set_epoch(2)
    full = read_all(batches, 2)
    assert len(full) == len(batches) == 12
    batches.set_epoch(2, start=5 * 4 * 2)  # 5 global batches of 4 x 2 ranks
    tail = read_all(batches, 2)
    assert len(tail) == 7
    for (images, labels), (expected_images, expected_labels) in zip(tail, full[5:]):
        assert torch.equal(images, expected_images) and torch.equal(labels, expected_labels)
    batches.set_epoch(3)
    assert not torch.equal(read_all(batches, 2)[0][0], full[0][0])


def test_too_few_shards_for_the_workers(shards):
    split = cls_shards.ShardSplit(shards, 'train', None)
    with pytest.raises(UserInputError, match='fewer than processes x loader workers'):
        split.loader_dataset(4, 4, 0, 4, train=True)


def test_missing_info_is_reported(tmp_path):
    with pytest.raises(UserInputError, match='_info.json does not exist'):
        cls_shards.ShardSplit(tmp_path, 'train', None)


def train(data: Path, out: Path, *extra) -> dict:
    """Train the tiny model 5 epochs (a subprocess, one thread, 2 loader workers); the last log line."""
    run_command(['main.py', '--model', 'scalable_vit_test', '--input-size', '32', '--device', 'cpu', '--batch-size',
                 '8', '--epochs', '5', '--warmup-epochs', '1', '--lr', '2e-2', '--mixup', '0', '--cutmix', '0', '--aa',
                 'none', '--reprob', '0', '--num_workers', '2', '--data-path', data, '--output_dir', out, *extra],
                cwd=CLASSIFICATION, timeout=600)
    return json.loads((out / 'log.txt').read_text().splitlines()[-1])


@pytest.mark.slow
def test_shards_train_the_demo_like_the_image_folder(tmp_path):
    """The same demo set as ImageFolder and as shards (4 classes, 100 validation images): the same recipe
    reaches the same top-1 within 2 points."""
    data = make_demo_image_folder(tmp_path / 'demo', num_classes=4, train_per_class=60, val_per_class=25, size=32)
    make_shards(data, tmp_path / 'demo-wds', samples_per_shard=30)
    folder_acc = train(data, tmp_path / 'folder')['test_acc1']
    shard_acc = train(tmp_path / 'demo-wds', tmp_path / 'wds', '--dataset', 'wds')['test_acc1']
    assert folder_acc > 70 and abs(shard_acc - folder_acc) <= 2, (folder_acc, shard_acc)


@pytest.mark.slow
def test_make_shards_command_line(folder, tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / 'tools' / 'make_shards.py'), '--data-path', str(folder),
                             '--out', str(tmp_path), '--samples-per-shard', '50'], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert 'train: 96 images in 2 shards' in result.stdout and (tmp_path / '_info.json').exists()
