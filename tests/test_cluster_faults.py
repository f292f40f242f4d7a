"""What clusters do to classification runs, each case a test: a signal during the evaluation, a stop on the
last step of an epoch under accumulation, a restart on another number of processes, a rank without validation
shards, the best checkpoint by the weights --eval loads, a requeued run's own checkpoint, --sched plateau, odd
batches under mixup, a filesystem without locks, weights that overflow under a finite loss."""
import argparse
import errno
import json
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
from errors import UserInputError
from helpers import ROOT, free_port, signal_job
from sampler import EpochOrder

CLASSIFICATION = ROOT / 'classification'

EXIT_STOPPED = 75
TINY = ['--model', 'scalable_vit_test', '--input-size', '32', '--device', 'cpu', '--warmup-epochs', '1',
        '--lr', '4e-3']


@pytest.fixture(scope='module')
def data(tmp_path_factory) -> Path:
    """64 training images (8 steps of 8 in one process), 16 validation images."""
    return make_demo_image_folder(tmp_path_factory.mktemp('data'), num_classes=4, train_per_class=16, val_per_class=4,
                                  size=32)


def train_in_process(argv):
    cls_main.main(argparse.ArgumentParser(parents=[cls_main.get_args_parser()]).parse_args(argv))


def log_records(out: Path) -> list:
    return [json.loads(line) for line in (out / 'log.txt').read_text().splitlines()]


@pytest.mark.parametrize('old_world, new_world, old_batch, new_batch, repeats',
                         [(2, 1, 4, 8, 1), (1, 2, 8, 4, 1), (2, 3, 4, 2, 3), (4, 2, 2, 3, 1)])
def test_epoch_order_resumes_on_any_layout(old_world, new_world, old_batch, new_batch, repeats):
    """Ranks that trained m batches each trained the epoch's first m x batch x ranks positions; another layout
    resuming there trains the rest in whole global batches, no position twice."""
    size, steps_done = 96, 3
    before = [EpochOrder(size, old_batch, 7, rank, old_world, repeats) for rank in range(old_world)]
    for order in before:
        order.set_epoch(2)
    trained = [p for order in before for p in list(order.positions())[:steps_done * old_batch]]
    start = steps_done * old_batch * old_world
    assert sorted(trained) == list(range(start))
    after = [EpochOrder(size, new_batch, 7, rank, new_world, repeats) for rank in range(new_world)]
    for order in after:
        order.set_epoch(2, start, repeats)
    resumed = [p for order in after for p in order.positions()]
    assert len(set(resumed)) == len(resumed) and min(resumed) == start
    assert len(resumed) == (size - start) // (new_batch * new_world) * new_batch * new_world
    # the images and their augmentation seeds are those of the positions, whatever the layout
    whole = EpochOrder(size, 1, 7)
    whole.set_epoch(2, 0, repeats)
    by_position = dict(zip(whole.positions(), whole))
    for order in after:
        assert list(order) == [by_position[p] for p in order.positions()]


def test_repeated_augmentation_puts_copies_on_consecutive_ranks():
    order = [EpochOrder(30, 2, 0, rank, 3, repeats=3) for rank in range(3)]
    for o in order:
        o.set_epoch(0)
    first_step = [list(o)[0][0] for o in order]
    assert len(set(first_step)) == 1  # the three copies of one image, one per rank


def test_stop_on_the_last_step_of_an_epoch_with_a_partial_window(data, tmp_path, monkeypatch):
    """K=3 over 8 micro-batches: steps of 3, 3, 2. A stop agreed on the last step finishes the epoch (evaluation,
    epoch checkpoint) and then stops: the checkpoint is an epoch end, and rerunning resumes at the next epoch
    (a mid-epoch position past the data could never be resumed)."""
    calls = []

    def agreed_on_the_third_step(self):
        calls.append(1)
        return len(calls) == 3 or self.signal is not None

    monkeypatch.setattr(StopRequest, 'agreed', agreed_on_the_third_step)
    monkeypatch.setattr(StopRequest, 'agreed_now', lambda self: True)
    common = [*TINY, '--data-path', str(data), '--output_dir', str(tmp_path), '--epochs', '2', '--num_workers', '0',
              '--batch-size', '8', '--grad-accum-steps', '3']
    with pytest.raises(cls_main.TrainingStopped, match='after epoch 0'):
        train_in_process(common)
    checkpoint = torch.load(tmp_path / 'checkpoint.pth', weights_only=True)
    assert checkpoint['epoch'] == 0 and checkpoint['mid_epoch'] is None
    monkeypatch.undo()
    train_in_process(common)
    assert [r['epoch'] for r in log_records(tmp_path)] == [0, 1]


def test_best_checkpoint_is_ranked_by_the_weights_eval_loads(data, tmp_path, monkeypatch, capsys):
    """With --model-ema, --eval loads the EMA weights: checkpoint_best.pth is the epoch whose EMA scored best,
    and the log has both accuracies."""
    scores = iter([90.0, 10.0, 20.0, 60.0])  # epoch 0: raw 90, EMA 10; epoch 1: raw 20, EMA 60

    def evaluate(*args, **kwargs):
        return {'acc1': next(scores), 'acc5': 100.0, 'loss': 1.0}

    monkeypatch.setattr(cls_main, 'evaluate', evaluate)
    train_in_process([*TINY, '--data-path', str(data), '--output_dir', str(tmp_path), '--epochs', '2',
                      '--num_workers', '0', '--batch-size', '8', '--model-ema'])
    records = log_records(tmp_path)
    assert [(r['test_acc1'], r['test_ema_acc1']) for r in records] == [(90.0, 10.0), (20.0, 60.0)]
    best = torch.load(tmp_path / 'checkpoint_best.pth', weights_only=True)
    assert best['epoch'] == 1 and best['max_accuracy'] == 60.0
    assert 'Max accuracy (EMA weights): 60.00%' in capsys.readouterr().out


def test_requeued_run_prefers_its_own_checkpoint_over_resume(data, tmp_path, monkeypatch, capsys):
    """A job started from another run's checkpoint (--resume A) and requeued keeps its own progress."""
    common = [*TINY, '--data-path', str(data), '--num_workers', '0', '--batch-size', '8', '--epochs', '3']
    with monkeypatch.context() as stopped:
        stopped.setattr(StopRequest, 'agreed_now', lambda self: True)  # stop after every epoch
        with pytest.raises(cls_main.TrainingStopped, match='after epoch 0'):
            train_in_process([*common, '--output_dir', str(tmp_path / 'a')])
        own = tmp_path / 'b'
        with pytest.raises(cls_main.TrainingStopped, match='after epoch 1'):
            train_in_process([*common, '--output_dir', str(own), '--resume', str(tmp_path / 'a')])
    assert [r['epoch'] for r in log_records(own)] == [1]
    capsys.readouterr()
    train_in_process([*common, '--output_dir', str(own), '--resume', str(tmp_path / 'a')])
    err = capsys.readouterr().err
    assert f"resuming this run's own {own / 'checkpoint.pth'}, not --resume {tmp_path / 'a'}" in err
    assert [r['epoch'] for r in log_records(own)] == [1, 2]


def test_plateau_schedule_lowers_the_lr_when_accuracy_stalls(data, tmp_path, monkeypatch):
    monkeypatch.setattr(cls_main, 'evaluate', lambda *a, **k: {'acc1': 50.0, 'acc5': 100.0, 'loss': 1.0})
    train_in_process([*TINY, '--data-path', str(data), '--output_dir', str(tmp_path), '--epochs', '4',
                      '--num_workers', '0', '--batch-size', '8', '--sched', 'plateau', '--patience-epochs', '0',
                      '--warmup-epochs', '0', '--decay-rate', '0.5', '--cooldown-epochs', '0'])
    lrs = [r['train_lr'] for r in log_records(tmp_path)]
    assert lrs[-1] < lrs[0] / 1.9, lrs


@pytest.mark.parametrize('mode', ['batch', 'pair', 'elem'])
def test_odd_batch_under_mixup_is_refused_before_any_work(data, mode):
    with pytest.raises(UserInputError, match='--batch-size 7 must be even for mixup/cutmix'):
        train_in_process([*TINY, '--data-path', str(data), '--batch-size', '7', '--mixup-mode', mode])


def test_filesystem_without_flock_is_a_clear_error(data, tmp_path, monkeypatch):
    import fcntl

    def no_locks(fd, operation):
        raise OSError(errno.ENOSYS, 'Function not implemented')

    monkeypatch.setattr(fcntl, 'flock', no_locks)
    with pytest.raises(UserInputError, match='does not support file locks.*Lustre: mount with -o flock'):
        train_in_process([*TINY, '--data-path', str(data), '--output_dir', str(tmp_path / 'out')])


def test_weights_that_overflow_under_a_finite_loss_are_never_saved(data, tmp_path, monkeypatch):
    """A finite loss whose update makes a weight infinite: the run stops (status 3) before the next write;
    the last checkpoint stays as it was."""
    common = [*TINY, '--data-path', str(data), '--output_dir', str(tmp_path), '--num_workers', '0',
              '--batch-size', '8']
    train_in_process([*common, '--epochs', '1'])
    before = (tmp_path / 'checkpoint.pth').read_bytes()
    step = torch.optim.AdamW.step
    calls = []

    def overflowing_step(self, *args, **kwargs):  # the epoch's 8th and last step overflows a weight
        result = step(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 8:
            with torch.no_grad():
                self.param_groups[0]['params'][0].fill_(float('inf'))
        return result

    monkeypatch.setattr(torch.optim.AdamW, 'step', overflowing_step)
    with pytest.raises(cls_main.NonFiniteLossError, match='weights became NaN or infinite'):
        train_in_process([*common, '--epochs', '2', '--override-resume'])
    assert (tmp_path / 'checkpoint.pth').read_bytes() == before


# -- subprocesses: the users' launchers, signals to the whole process group ---------------------------------------

def environment():
    return dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')


def launch(processes: int, args: list) -> list:
    launcher = [sys.executable]
    if processes > 1:
        launcher += ['-m', 'torch.distributed.run', f'--nproc_per_node={processes}', f'--master_port={free_port()}',
                     '--shutdown-timeout', '120']  # time for stopping workers on a busy 2-core machine
    return [*launcher, 'main.py', *args]


def signal_group_at(cmd: list, trigger: str, signum: int) -> subprocess.CompletedProcess:
    """Run `cmd` and send `signum` to every process of it (launcher, ranks, loader workers: what Slurm does)
    when `trigger` is printed."""
    process = subprocess.Popen(cmd, cwd=CLASSIFICATION, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=environment())
    lines = []
    for line in process.stdout:
        lines.append(line)
        if trigger in line:
            signal_job(process.pid, signum)
            break
    stdout, stderr = process.communicate(timeout=300)
    return subprocess.CompletedProcess(cmd, process.returncode, ''.join(lines) + stdout, stderr)


@pytest.mark.slow
@pytest.mark.parametrize('processes', [1, 2])
def test_signal_during_evaluation_with_loader_workers(data, tmp_path, processes):
    """SIGTERM to the process group while the epoch's evaluation runs with 2 loader workers: the evaluation
    finishes, the epoch is saved, the run stops before the next epoch starts (the ranks agree at once) and the
    rerun completes."""
    args = [*TINY, '--data-path', str(data), '--output_dir', str(tmp_path), '--epochs', '2', '--num_workers', '2',
            '--batch-size', str(8 // processes)]
    result = signal_group_at(launch(processes, args), 'Test: [0/', signal.SIGTERM)
    assert 'stopped by signal' in result.stderr and 'after epoch 0' in result.stderr, result.stderr[-3000:]
    assert 'killed by signal' not in result.stderr
    assert 'Epoch: [1]' not in result.stdout
    if processes == 1:
        assert result.returncode == EXIT_STOPPED
    checkpoint = torch.load(tmp_path / 'checkpoint.pth', weights_only=True)
    assert checkpoint['epoch'] == 0 and checkpoint['mid_epoch'] is None
    rerun = subprocess.run(launch(processes, args), cwd=CLASSIFICATION, capture_output=True, text=True,
                           env=environment(), timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert [r['epoch'] for r in log_records(tmp_path)] == [0, 1]


@pytest.mark.slow
def test_restart_on_fewer_and_more_processes_trains_each_sample_once(data, tmp_path):
    """Stopped mid-epoch on 2 processes, resumed on 1 (twice the batch: the same global batch) and stopped
    again, resumed on 2: the epoch ends having trained each of its samples once (counted from the positions
    each run recorded in its checkpoints' sample counts and the log of trained steps)."""
    base = [*TINY, '--data-path', str(data), '--output_dir', str(tmp_path), '--epochs', '1', '--num_workers', '0']
    first = signal_group_at(launch(2, [*base, '--batch-size', '4']), 'Epoch: [0] [0/', signal.SIGTERM)
    assert 'stopped by signal' in first.stderr, first.stderr[-3000:]
    position = torch.load(tmp_path / 'checkpoint.pth', weights_only=True)['mid_epoch']
    assert position['world_size'] == 2 and position['samples'] == 8 * position['step']
    second = signal_group_at(launch(1, [*base, '--batch-size', '8']), 'Epoch: [0] [', signal.SIGTERM)
    assert second.returncode == EXIT_STOPPED, second.stderr[-3000:]
    assert f"trains the samples after the epoch's first {position['samples']}" in second.stderr
    later = torch.load(tmp_path / 'checkpoint.pth', weights_only=True)['mid_epoch']
    assert later['world_size'] == 1 and later['samples'] > position['samples']
    third = subprocess.run(launch(2, [*base, '--batch-size', '4']), cwd=CLASSIFICATION, capture_output=True,
                           text=True, env=environment(), timeout=600)
    assert third.returncode == 0, third.stderr[-3000:]
    assert f"trains the samples after the epoch's first {later['samples']}" in third.stderr
    final = torch.load(tmp_path / 'checkpoint.pth', weights_only=True)
    assert final['epoch'] == 0 and final['mid_epoch'] is None


@pytest.mark.slow
def test_dist_eval_with_fewer_validation_shards_than_ranks(tmp_path):
    """--dataset wds --dist-eval with 1 validation shard on 2 processes: the rank without shards adds nothing
    and the accuracy is that of all 8 validation images."""
    from make_shards import make_shards
    folder = make_demo_image_folder(tmp_path / 'folder', num_classes=2, train_per_class=16, val_per_class=4, size=32)
    shards = tmp_path / 'shards'
    make_shards(folder, shards, samples_per_shard=8)  # 4 training shards, 1 validation shard
    args = [*TINY, '--dataset', 'wds', '--data-path', str(shards), '--dist-eval', '--epochs', '1',
            '--batch-size', '4', '--num_workers', '1', '--output_dir', str(tmp_path / 'out')]
    result = subprocess.run(launch(2, args), cwd=CLASSIFICATION, capture_output=True, text=True,
                            env=environment(), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'Accuracy of the network on the 8 test images' in result.stdout


@pytest.mark.slow
def test_srun_tasks_stop_on_usr1_and_requeue(slurm, data, tmp_path):
    """The recommended Slurm launch, `srun` one task per GPU: `scancel --signal=USR1` (what `--signal=USR1@T`
    sends before the time limit) reaches every task; they save, rank 0 runs `scontrol requeue` (--requeue) and
    every task exits 75; the same srun command then finishes the run."""
    calls = tmp_path / 'scontrol.calls'
    fake = tmp_path / 'bin' / 'scontrol'  # records the requeue (a real one would requeue this test's job)
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    fake.chmod(0o755)
    env = dict(environment(), **slurm, MASTER_PORT=str(free_port()),
               PATH=f'{fake.parent}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ["PATH"]}')
    args = [*TINY, '--data-path', str(data), '--output_dir', str(tmp_path / 'out'), '--epochs', '2',
            '--num_workers', '1', '--batch-size', '4', '--requeue']
    name = f'faults-{os.getpid()}'  # this test's job among any others the cluster still lists
    srun = ['srun', '-n', '2', '-N', '1', f'--job-name={name}', '--kill-on-bad-exit=1', sys.executable, 'main.py',
            *args]
    process = subprocess.Popen(srun, cwd=CLASSIFICATION, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=env)
    lines = []
    for line in process.stdout:
        lines.append(line)
        if 'Epoch: [0] [0/' in line:
            subprocess.run(['scancel', '--signal=USR1', f'--name={name}'], check=True, env=env)
            break
    stdout, stderr = process.communicate(timeout=300)
    # every task saves and exits 75; srun reports 75, or 143 when --kill-on-bad-exit ended a task after the first
    # one's exit (its checkpoint and requeue were done before the ranks' last barrier)
    assert process.returncode in (EXIT_STOPPED, 143), stderr[-3000:]
    assert 'stopped by signal 10 in epoch 0' in stderr and calls.read_text().startswith('requeue ')
    assert torch.load(tmp_path / 'out' / 'checkpoint.pth', weights_only=True)['mid_epoch']['epoch'] == 0
    env['MASTER_PORT'] = str(free_port())
    rerun = subprocess.run(srun, cwd=CLASSIFICATION, capture_output=True, text=True, env=env, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert [r['epoch'] for r in log_records(tmp_path / 'out')] == [0, 1]


def test_resumed_epoch_without_a_whole_global_batch_left(data, tmp_path, monkeypatch):
    """Stopped 7 steps into an 8-step epoch (batch 8), resumed with batch 16 (--override-resume): the 8 samples
    left are no whole global batch, so the epoch ends at once and the next one trains as usual."""
    common = [*TINY, '--data-path', str(data), '--output_dir', str(tmp_path), '--epochs', '2', '--num_workers', '0']
    calls = []
    monkeypatch.setattr(StopRequest, 'agreed', lambda self: calls.append(1) or len(calls) == 7)
    with pytest.raises(cls_main.TrainingStopped, match='in epoch 0'):
        train_in_process([*common, '--batch-size', '8'])
    assert torch.load(tmp_path / 'checkpoint.pth', weights_only=True)['mid_epoch']['samples'] == 56
    monkeypatch.undo()
    train_in_process([*common, '--batch-size', '16', '--override-resume'])
    assert [r['epoch'] for r in log_records(tmp_path)] == [0, 1]
