"""The fault matrix: a stop signal (SIGTERM or SIGUSR1) sent to every process of the job (launcher, ranks,
loader workers) when training enters each phase, with 1 process (python) and 2 (torchrun), without and with
gradient accumulation (K=3 over 8 micro-batches: a partial last window), from an ImageFolder and from tar
shards. Each run stops (status 75 without a launcher) or finishes, and rerunning the same command ends with every
tensor and every log line equal to an uninterrupted run's.

The slow tier runs a cross-section that takes every phase, signal, launcher, K and dataset at least once;
`pytest --slow --full-faults tests/test_fault_matrix.py` runs all 112 cases (about an hour on 2 cores).
"""
import itertools
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scalablevit.demo_data import make_demo_image_folder

from helpers import ROOT, free_port
from make_shards import make_shards

INJECT = Path(__file__).parent / 'faults' / 'inject.py'
EXIT_STOPPED = 75
TINY = ['--model', 'scalable_vit_test', '--input-size', '32', '--device', 'cpu', '--warmup-epochs', '1',
        '--lr', '4e-3', '--epochs', '2', '--num_workers', '1', '--checkpoint-interval', '2']
# which entry of the phase (counted from 1 over the whole 2-epoch run) is signalled, by K
ENTRY = {
    'loader-start': {1: 3, 3: 3},  # epoch 1's training loader (after epoch 0's training and validation ones)
    'forward-backward': {1: 10, 3: 5},  # epoch 1's second optimizer step
    'optimizer-step': {1: 10, 3: 5},
    'mid-epoch-save': {1: 2, 3: 1},  # epoch 0's second (K=1) / first (K=3) interval save
    'evaluation': {1: 1, 3: 1},
    'epoch-save': {1: 1, 3: 1},
    'between-epochs': {1: 1, 3: 1},
}
# where each phase's signal stops the run, by K: inside the epoch (after the next step), or after the epoch's
# evaluation and checkpoint (K=3's interval save is at step 2 of 3: the stop agreed on the last step ends the
# epoch first)
STOPS = {'loader-start': 'in epoch 1', 'forward-backward': 'in epoch 1', 'optimizer-step': 'in epoch 1',
         'mid-epoch-save': {1: 'in epoch 0', 3: 'after epoch 0'}, 'evaluation': 'after epoch 0',
         'epoch-save': 'after epoch 0', 'between-epochs': 'after epoch 0'}
CROSS_SECTION = [
    ('loader-start', 'SIGTERM', 1, 1, 'folder'),
    ('forward-backward', 'SIGUSR1', 1, 3, 'wds'),
    ('optimizer-step', 'SIGUSR1', 2, 1, 'folder'),
    ('mid-epoch-save', 'SIGTERM', 2, 3, 'folder'),
    ('evaluation', 'SIGUSR1', 1, 1, 'wds'),
    ('evaluation', 'SIGTERM', 2, 3, 'folder'),
    ('epoch-save', 'SIGTERM', 2, 1, 'wds'),
    ('between-epochs', 'SIGTERM', 1, 3, 'folder'),
]
FULL = list(itertools.product(ENTRY, ['SIGTERM', 'SIGUSR1'], [1, 2], [1, 3], ['folder', 'wds']))


def pytest_generate_tests(metafunc):
    if 'case' in metafunc.fixturenames:
        cases = FULL if metafunc.config.getoption('--full-faults') else CROSS_SECTION
        metafunc.parametrize('case', cases, ids=['-'.join(map(str, c)) for c in cases])


@pytest.fixture(scope='module')
def datasets(tmp_path_factory) -> dict:
    """64 training images of 4 classes (8 batches of 8 per epoch), as a folder and as 8 shards."""
    root = tmp_path_factory.mktemp('faults')
    folder = make_demo_image_folder(root / 'folder', num_classes=4, train_per_class=16, val_per_class=4, size=32)
    make_shards(folder, root / 'shards', samples_per_shard=8)
    return {'folder': ['--data-path', str(folder)],
            'wds': ['--dataset', 'wds', '--data-path', str(root / 'shards')]}


def command(script: Path, processes: int, arguments: list) -> list:
    if processes == 1:
        return [sys.executable, str(script), *arguments]
    # the recommended torchrun: it forwards SIGUSR1 too (its default handles SIGTERM, SIGINT, SIGHUP, SIGQUIT)
    # (and waits up to 120 s, not 30, for its stopping workers: CI's 2 cores may be busy with other processes)
    return [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2', f'--master_port={free_port()}',
            '--signals-to-handle', 'SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1', '--shutdown-timeout', '120',
            str(script), *arguments]


def run(cmd: list, cwd: Path) -> subprocess.CompletedProcess:
    """`cmd` with FAULT_ROOT_PID naming its own process (the job the injector signals)."""
    shell = f'FAULT_ROOT_PID=$$ exec {shlex.join(cmd)}'
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')
    return subprocess.run(['sh', '-c', shell], cwd=cwd, capture_output=True, text=True, env=env, timeout=900)


def training_arguments(processes: int, k: int, data: list, out: Path) -> list:
    return [*TINY, *data, '--batch-size', str(8 // processes), '--grad-accum-steps', str(k),
            '--output_dir', str(out)]


_references = {}


def reference(processes: int, k: int, dataset: str, datasets: dict, tmp_path_factory) -> Path:
    key = (processes, k, dataset)
    if key not in _references:
        out = tmp_path_factory.mktemp('reference')
        result = run(command(ROOT / 'classification' / 'main.py', processes,
                             training_arguments(processes, k, datasets[dataset], out)), ROOT / 'classification')
        assert result.returncode == 0, result.stderr[-3000:]
        _references[key] = out
    return _references[key]


def assert_same_run(out: Path, expected: Path) -> None:
    final, wanted = (torch.load(d / 'checkpoint.pth', weights_only=True) for d in (out, expected))
    assert final['epoch'] == wanted['epoch'] == 1 and final['mid_epoch'] is None
    for key, value in wanted['model'].items():
        assert torch.equal(final['model'][key], value), key
    for index, state in wanted['optimizer']['state'].items():
        for name, value in state.items():
            assert torch.equal(final['optimizer']['state'][index][name], value), f'optimizer {index} {name}'
    assert (out / 'log.txt').read_text() == (expected / 'log.txt').read_text()
    assert not list(out.glob('.*.tmp-*'))


@pytest.mark.slow
def test_stop_signal_at_every_phase_resumes_to_the_uninterrupted_run(case, datasets, tmp_path, tmp_path_factory):
    phase, signame, processes, k, dataset = case
    expected = reference(processes, k, dataset, datasets, tmp_path_factory)
    arguments = training_arguments(processes, k, datasets[dataset], tmp_path)
    stopped = run(command(INJECT, processes, [phase, str(ENTRY[phase][k]), signame, '--', *arguments]), ROOT)
    where = STOPS[phase] if isinstance(STOPS[phase], str) else STOPS[phase][k]
    assert f'{where}; rerun the same command' in stopped.stderr, stopped.stderr[-3000:]
    assert 'killed by signal' not in stopped.stderr
    if processes == 1:
        assert stopped.returncode == EXIT_STOPPED, stopped.stderr[-3000:]
    assert (tmp_path / 'checkpoint.pth').exists()
    rerun = run(command(ROOT / 'classification' / 'main.py', processes, arguments), ROOT / 'classification')
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert_same_run(tmp_path, expected)
