"""Preemption-safe classification training: a stop signal (SIGTERM, SIGUSR1) mid-epoch writes the position, the
same command resumes there and ends bit-identical to an uninterrupted run (1 and 2 processes); --checkpoint-interval;
a NaN loss never reaches a checkpoint."""
import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scalablevit.demo_data import make_demo_image_folder
from scalablevit.preemption import StopRequest

import main as cls_main
import run_state
from helpers import ROOT, free_port

CLASSIFICATION = ROOT / 'classification'

EXIT_STOPPED = 75
TRAINING = ['--model', 'scalable_vit_test', '--input-size', '32', '--batch-size', '8', '--warmup-epochs', '1',
            '--lr', '4e-3', '--device', 'cpu', '--model-ema']


@pytest.fixture(scope='module')
def data(tmp_path_factory) -> Path:
    """256 training images: 32 steps of 8 per epoch in one process, 16 per rank in two."""
    return make_demo_image_folder(tmp_path_factory.mktemp('data'), num_classes=8, train_per_class=32, val_per_class=2,
                                  size=32)


def command(data: Path, out: Path, processes: int, epochs: int = 2):
    launcher = [sys.executable]
    if processes > 1:
        launcher += ['-m', 'torch.distributed.run', f'--nproc_per_node={processes}', f'--master_port={free_port()}']
    return [*launcher, 'main.py', *TRAINING, '--data-path', str(data), '--output_dir', str(out),
            '--epochs', str(epochs), '--num_workers', '1']


def environment():
    return dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')


def rank_pid(launcher_pid: int, rank: int) -> int:
    """The pid of the worker with RANK=`rank` among the children of a torchrun process."""
    for entry in Path('/proc').iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / 'stat').read_text().rsplit(')', 1)[1].split()[1])
            variables = (entry / 'environ').read_bytes().split(b'\0')
        except OSError:
            continue
        if parent == launcher_pid and f'RANK={rank}'.encode() in variables:
            return int(entry.name)
    raise LookupError(f'no rank {rank} under pid {launcher_pid}')


def run_until_signalled(cmd, trigger: str, signum: int, processes: int) -> subprocess.CompletedProcess:
    """Start `cmd`, send `signum` once `trigger` appears on its stdout (one process: to it; two: to rank 1 only,
    so rank 0 learns of it through the all-reduced stop flag), and wait for the exit."""
    process = subprocess.Popen(cmd, cwd=CLASSIFICATION, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=environment())
    lines = []
    for line in process.stdout:
        lines.append(line)
        if trigger in line:
            target = process.pid if processes == 1 else rank_pid(process.pid, 1)
            os.kill(target, signum)
            break
    stdout, stderr = process.communicate(timeout=300)
    return subprocess.CompletedProcess(cmd, process.returncode, ''.join(lines) + stdout, stderr)


def assert_same_final_state(out: Path, reference: Path) -> None:
    final, expected = (torch.load(d / 'checkpoint.pth', weights_only=True) for d in (out, reference))
    assert final['epoch'] == expected['epoch'] and final['mid_epoch'] is None
    for part in ('model', 'model_ema'):
        assert final[part].keys() == expected[part].keys()
        for key, value in expected[part].items():
            assert torch.equal(final[part][key], value), f'{part}.{key}'
    for index, state in expected['optimizer']['state'].items():
        for name, value in state.items():
            assert torch.equal(final['optimizer']['state'][index][name], value), f'optimizer {index} {name}'
    assert (out / 'log.txt').read_text() == (reference / 'log.txt').read_text()


@pytest.mark.slow
@pytest.mark.parametrize('processes, signum', [(1, signal.SIGTERM), (2, signal.SIGTERM), (2, signal.SIGUSR1)],
                         ids=['1-process-SIGTERM', '2-processes-SIGTERM', '2-processes-SIGUSR1'])
def test_stop_signal_mid_epoch_resumes_bit_identical(data, tmp_path, processes, signum):
    reference = tmp_path / 'reference'
    result = subprocess.run(command(data, reference, processes), cwd=CLASSIFICATION, capture_output=True, text=True,
                            env=environment(), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]

    out = tmp_path / 'stopped'
    steps = 32 // processes
    result = run_until_signalled(command(data, out, processes), f'Epoch: [1] [10/{steps}]', signum, processes)
    if processes == 1:
        assert result.returncode == EXIT_STOPPED, result.stderr[-3000:]
    assert f'stopped by signal {int(signum)} in epoch 1' in result.stderr
    if processes == 2:
        assert 'stopped by signal (on another rank) in epoch 1' in result.stderr  # rank 0 agreed
    stopped = torch.load(out / 'checkpoint.pth', weights_only=True)
    position = stopped['mid_epoch']
    assert stopped['epoch'] == 0 and position['epoch'] == 1 and 10 < position['step'] < steps
    assert len(stopped['rng']) == len(position['meters']) == processes

    result = subprocess.run(command(data, out, processes), cwd=CLASSIFICATION, capture_output=True, text=True,
                            env=environment(), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f'Resuming training at epoch 1, sample {position["samples"]}' in result.stdout
    assert_same_final_state(out, reference)
    assert not list(out.glob('.*.tmp-*'))


def train_in_process(argv):
    args = argparse.ArgumentParser(parents=[cls_main.get_args_parser()]).parse_args(argv)
    cls_main.main(args)


def test_checkpoint_interval_writes_mid_epoch_positions(data, tmp_path, monkeypatch):
    """--checkpoint-interval 12: checkpoint.pth after steps 12 and 24 of each 32-step epoch, then at its end."""
    written = []
    save = run_state.atomic_save

    def recording_save(checkpoint, path):
        position = checkpoint['mid_epoch']
        written.append((path.name, checkpoint['epoch'], position and (position['epoch'], position['step'])))
        save(checkpoint, path)

    monkeypatch.setattr(run_state, 'atomic_save', recording_save)
    train_in_process([*TRAINING, '--data-path', str(data), '--output_dir', str(tmp_path), '--epochs', '1',
                      '--num_workers', '0', '--checkpoint-interval', '12'])
    assert [w for w in written if w[0] == 'checkpoint.pth'] == [
        ('checkpoint.pth', -1, (0, 12)), ('checkpoint.pth', -1, (0, 24)), ('checkpoint.pth', 0, None)]


def test_non_finite_loss_never_reaches_a_checkpoint(data, tmp_path, monkeypatch):
    """Losses are read from the device in batches, but every write comes after the check: with a checkpoint
    after every step, a NaN at step 5 stops the run and the last checkpoint is the one after step 4."""
    calls = []

    class NaNAtSixthStep(cls_main.SoftTargetCrossEntropy):
        def forward(self, outputs, targets):
            calls.append(1)
            loss = super().forward(outputs, targets)
            return loss * float('nan') if len(calls) == 6 else loss

    monkeypatch.setattr(cls_main, 'SoftTargetCrossEntropy', NaNAtSixthStep)
    with pytest.raises(cls_main.NonFiniteLossError, match='loss is nan at epoch 0, step 5'):
        train_in_process([*TRAINING, '--data-path', str(data), '--output_dir', str(tmp_path), '--epochs', '1',
                          '--num_workers', '0', '--checkpoint-interval', '1'])
    checkpoint = torch.load(tmp_path / 'checkpoint.pth', weights_only=True)
    assert checkpoint['mid_epoch']['step'] == 5
    for part in ('model', 'model_ema'):
        assert all(torch.isfinite(v).all() for v in checkpoint[part].values() if v.is_floating_point())


def test_mid_epoch_checkpoint_resumes_on_another_layout(data, tmp_path, monkeypatch, capsys):
    """A position inside an epoch counts the epoch's samples: a run stopped after one step of 8 images resumes
    with 4 images x 2 accumulation steps (the same global batch: no --override-resume) and trains the other 248
    samples of the 256-image epoch, each once."""
    import sampler
    trained = []
    load = sampler.SeededSamples.__getitem__
    monkeypatch.setattr(sampler.SeededSamples, '__getitem__',
                        lambda self, item: trained.append(item) or load(self, item))
    common = [*TRAINING, '--data-path', str(data), '--output_dir', str(tmp_path), '--epochs', '1',
              '--num_workers', '0']
    with monkeypatch.context() as signalled:
        signalled.setattr(StopRequest, 'agreed', lambda self: True)  # as if signalled at once
        with pytest.raises(cls_main.TrainingStopped, match='in epoch 0'):
            train_in_process(common)
    assert torch.load(tmp_path / 'checkpoint.pth', weights_only=True)['mid_epoch']['samples'] == 8
    assert len(trained) == 8
    train_in_process([*common, '--batch-size', '4', '--grad-accum-steps', '2'])
    assert 'trains the samples after the epoch\'s first 8, each once' in capsys.readouterr().err
    positions = [seed for _, seed in trained]
    assert len(trained) == 256 and len(set(positions)) == 256  # every position of the epoch once
    assert sorted(index for index, _ in trained) == list(range(256))  # one process: each image once


def test_requeue_after_the_stop_is_saved(data, tmp_path, monkeypatch):
    """--requeue under Slurm: once the checkpoint is written, rank 0 runs `scontrol requeue $SLURM_JOB_ID`."""
    calls = tmp_path / 'scontrol.calls'
    fake = tmp_path / 'bin' / 'scontrol'
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    fake.chmod(0o755)
    monkeypatch.setenv('PATH', f'{fake.parent}{os.pathsep}{os.environ["PATH"]}')
    monkeypatch.setenv('SLURM_JOB_ID', '4242')
    monkeypatch.setattr(StopRequest, 'agreed', lambda self: True)
    with pytest.raises(cls_main.TrainingStopped):
        train_in_process([*TRAINING, '--data-path', str(data), '--output_dir', str(tmp_path / 'out'), '--epochs',
                          '1', '--num_workers', '0', '--requeue'])
    assert calls.read_text() == 'requeue 4242\n'
    assert torch.load(tmp_path / 'out' / 'checkpoint.pth', weights_only=True)['mid_epoch']['step'] == 1
