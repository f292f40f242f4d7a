"""The demo dataset generators' one command line (`scalablevit.demo_data`)."""
from pathlib import Path
from typing import Tuple

import pytest

from scalablevit.demo_data import demo_dataset_main


def recording_make_dataset(calls: list):
    def make_dataset(out: Path, train_images: int = 5, val_images: int = 3, size: Tuple[int, int] = (40, 30),
                     seed: int = 7) -> Path:
        calls.append((out, train_images, val_images, size, seed))
        return out / 'root'
    return make_dataset


def test_flags_default_to_the_generators_own_defaults(capsys):
    calls = []
    root = demo_dataset_main(recording_make_dataset(calls), 'doc', default_out='data/x', argv=[])
    assert calls == [(Path('data/x'), 5, 3, (40, 30), 7)] and root == Path('data/x/root')
    assert capsys.readouterr().out == 'wrote 5 training and 3 validation images to data/x/root\n'

    demo_dataset_main(recording_make_dataset(calls), 'doc', default_out='data/x',
                      argv=['--out', 'o', '--train-images', '2', '--val-images', '1', '--size', '64', '48',
                            '--seed', '3'])
    assert calls[1] == (Path('o'), 2, 1, (64, 48), 3)


@pytest.mark.parametrize('argv, message', [
    (['--train-images', '0'], 'argument --train-images: must be at least 1, got 0'),
    (['--size', '64', '-1'], 'argument --size: must be at least 1, got -1'),
    (['--val-images', 'two'], "argument --val-images: must be a whole number, got 'two'"),
])
def test_bad_counts_and_sizes_stop_before_writing(argv, message, capsys):
    calls = []
    with pytest.raises(SystemExit):
        demo_dataset_main(recording_make_dataset(calls), 'doc', default_out='data/x', argv=argv)
    assert calls == [] and message in capsys.readouterr().err
