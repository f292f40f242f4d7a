"""Detection and segmentation runs stopped by a cluster's signal (SIGTERM/SIGUSR1): a checkpoint at the iteration
reached, exit status 75, and `--resume` continuing inside the epoch so that the resumed run trains the batches of
an uninterrupted one, each once, with the same iteration count and learning rate.

The fast tests run mmengine's Runner in-process on a toy model with the project's loops (`loops.py`); the slow
ones send the signal to the whole process group of `dist_train.sh` (1 and 2 processes) and `slurm_train.sh`
running the demo configs, and count the samples each iteration trained."""
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import pytest
import torch

pytest.importorskip('mmdet')
from mmengine.dataset import DefaultSampler  # noqa: E402
from mmengine.evaluator import BaseMetric  # noqa: E402
from mmengine.hooks import Hook  # noqa: E402
from mmengine.model import BaseModel  # noqa: E402
from mmengine.runner import Runner  # noqa: E402
from torch.utils.data import Dataset  # noqa: E402

from scalablevit.openmmlab import use_checkpoint_policy  # noqa: E402
from scalablevit.openmmlab.loops import STOP_CHECKPOINT, ResumableBatchSampler  # noqa: E402
from scalablevit.preemption import TrainingStopped  # noqa: E402

from helpers import ROOT, free_port  # noqa: E402

DETECTION, SEGMENTATION = ROOT / 'detection', ROOT / 'segmentation'


# --- the batch sampler: a pass that starts at a batch -------------------------------------------------------

class Images(Dataset):
    """Indices with COCO-style sizes: every third image is portrait (mmdet's AspectRatioBatchSampler groups them)."""

    def __init__(self, size: int):
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict:
        return dict(inputs=torch.tensor([float(index), 1.0]), index=index)

    def get_data_info(self, index: int) -> dict:
        return dict(width=40 if index % 3 == 0 else 60, height=50)


@pytest.mark.parametrize('batch_sampler', [None, dict(type='mmdet.AspectRatioBatchSampler')])
def test_resumable_batch_sampler_leaves_out_the_first_batches(batch_sampler):
    """A pass started with `skip = k` holds the full pass's batches from k on (with a partial last batch, and
    with the aspect-ratio grouping whose batches depend on all samples before them); the length is always a full
    pass's."""
    sampler = DefaultSampler(Images(11), shuffle=True, seed=3)
    batches = ResumableBatchSampler(sampler, batch_size=3, batch_sampler=batch_sampler)
    full = list(batches)
    assert len(full) == len(batches) == 4 and sorted(i for b in full for i in b) == list(range(11))
    if batch_sampler is not None:
        assert any(len({i % 3 == 0 for i in b}) == 1 and len(b) == 3 for b in full)  # grouped by aspect ratio
        assert full != [sampler_order[i:i + 3] for sampler_order in [list(sampler)] for i in range(0, 11, 3)]
    for skip in range(5):
        batches.skip = skip
        assert len(batches) == 4
        assert list(batches) == full[skip:]
    sampler.set_epoch(1)
    batches.skip = 2
    assert list(batches) == list(ResumableBatchSampler(sampler, batch_size=3, batch_sampler=batch_sampler))[2:]


# --- the loops on a toy model, in-process ------------------------------------------------------------------

class Toy(BaseModel):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(2, 1)

    def forward(self, inputs, index, mode='tensor'):
        loss = self.linear(torch.stack(inputs)).pow(2).mean()
        return dict(loss=loss) if mode == 'loss' else [dict(index=i) for i in index]


class Count(BaseMetric):
    def process(self, data_batch, data_samples) -> None:
        self.results.extend(data_samples)

    def compute_metrics(self, results) -> dict:
        return dict(count=len(results))


class Record(Hook):
    """Records (iteration, lr, dataset indices) of every trained batch, and sends this process and its loader
    workers (as Slurm signals every process of a job step) a signal at a chosen moment: `at` = (hook method, how
    many calls of it before the one that sends)."""
    priority = 'VERY_LOW'

    def __init__(self, log: List, at: Optional[tuple] = None, signum: int = signal.SIGTERM):
        self.log, self.at, self.signum = log, at, signum
        self.calls = {}

    def _moment(self, name: str) -> None:
        if self.at == (name, self.calls.setdefault(name, 0)):
            for child in multiprocessing.active_children():
                os.kill(child.pid, self.signum)
            os.kill(os.getpid(), self.signum)
        self.calls[name] += 1

    def before_train(self, runner) -> None:
        self._moment('before_train')

    def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
        self._moment('before_train_iter')

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        self.log.append((runner.iter, runner.optim_wrapper.get_lr()['lr'][0], list(data_batch['index'])))

    def after_train_epoch(self, runner) -> None:
        self._moment('after_train_epoch')

    def after_val_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        self._moment('after_val_iter')

    def before_save_checkpoint(self, runner, checkpoint) -> None:
        self._moment('before_save_checkpoint')


def toy_run(work_dir: Path, loop: str, log: List, at: Optional[tuple] = None, resume: bool = False,
            signum: int = signal.SIGTERM, batch_size: int = 3, seed: Optional[int] = 0, workers: int = 0,
            requeue: bool = False) -> Runner:
    """A toy run of 11 samples in batches of 3 (a partial last batch): 3 epochs of 4 iterations, or 10
    iterations; an iteration-based warm-up, a step, a validation and a checkpoint every epoch (every 4
    iterations)."""
    torch.manual_seed(0)
    by_epoch = loop == 'PreemptibleEpochBasedTrainLoop'
    train_cfg = dict(type=loop, requeue=requeue)
    train_cfg.update(dict(max_epochs=3) if by_epoch else dict(max_iters=10, val_interval=4))
    sampler = dict(type='DefaultSampler' if by_epoch else 'InfiniteSampler', shuffle=True)
    runner = Runner(
        model=Toy(), work_dir=str(work_dir), experiment_name=f'{work_dir.name}-{time.time_ns()}',
        train_dataloader=dict(dataset=Images(11), sampler=sampler, batch_size=batch_size, num_workers=workers,
                              persistent_workers=workers > 0),
        val_dataloader=dict(dataset=Images(4), sampler=dict(type='DefaultSampler', shuffle=False), batch_size=2,
                            num_workers=workers, persistent_workers=workers > 0),
        val_evaluator=[Count()], val_cfg=dict(), log_level='WARNING',
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1, momentum=0.9)),
        param_scheduler=[dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=5),
                         dict(type='MultiStepLR', by_epoch=by_epoch, milestones=[2] if by_epoch else [8])],
        train_cfg=train_cfg, randomness=dict(seed=seed), resume=resume, custom_hooks=[Record(log, at, signum)],
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=1 if by_epoch else 4, by_epoch=by_epoch),
                           logger=dict(type='LoggerHook', interval=1)))
    runner.train()
    return runner


def final_state(runner: Runner) -> Dict:
    return dict(iter=runner.iter, epoch=runner.epoch, lr=runner.optim_wrapper.get_lr()['lr'][0],
                weights=[p.detach().clone() for p in runner.model.parameters()])


EPOCHS, ITERATIONS = 'PreemptibleEpochBasedTrainLoop', 'PreemptibleIterBasedTrainLoop'
# (loop, (hook method, calls of it before the one that sends the signal), iterations trained when the run stops):
# at the first iteration, mid-epoch, at the last (partial) batch of an epoch, between epochs, during the epoch-end
# (every 4 iterations) checkpoint write and during a validation (one process: a stop comes after the iteration
# that the signal interrupts, or before the next epoch's first)
STOPS = [(loop, (moment, n), stop) for loop in (EPOCHS, ITERATIONS) for (moment, n), stop in [
    (('before_train_iter', 0), 1), (('before_train_iter', 5), 6), (('before_train_iter', 7), 8),
    (('before_save_checkpoint', 1), 8), (('after_val_iter', 0), 4), (('after_val_iter', 2), 8)]]
STOPS.append((EPOCHS, ('after_train_epoch', 0), 4))


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory) -> Dict[str, tuple]:
    runs = {}
    for loop in (EPOCHS, ITERATIONS):
        log = []
        with use_checkpoint_policy():
            runner = toy_run(tmp_path_factory.mktemp('whole'), loop, log)
        runs[loop] = log, final_state(runner)
    return runs


def stop_and_resume(work_dir: Path, loop: str, at: tuple, signum: int = signal.SIGTERM, workers: int = 0) -> tuple:
    """Run until the signal sent at `at` stops it, check the stop, resume; the log and the resumed runner."""
    log = []
    with use_checkpoint_policy():
        with pytest.raises(TrainingStopped, match=f'stopped by signal {int(signum)} '):
            toy_run(work_dir, loop, log, at=at, signum=signum, workers=workers)
        assert (work_dir / 'last_checkpoint').read_text() == str(work_dir / STOP_CHECKPOINT)
        assert signal.getsignal(signum) is signal.SIG_DFL  # the handlers are given back
        assert not multiprocessing.active_children()  # the workers are shut down, not left to the exit
        stopped_log = list(log)
        runner = toy_run(work_dir, loop, log, resume=True, workers=workers)
        assert not multiprocessing.active_children()
    return stopped_log, log, runner


@pytest.mark.parametrize('loop, at, stop', STOPS, ids=[f'{loop[11:15]}-{m}-{n}' for loop, (m, n), _ in STOPS])
def test_stopped_and_resumed_run_trains_each_batch_once(tmp_path, uninterrupted, loop, at, stop):
    """A stop signal at each moment: TrainingStopped after a checkpoint (stopped.pth, named in last_checkpoint),
    and the resumed run trains the batches of the uninterrupted run from the next one on, in its order, each once,
    at its iterations and learning rates, and ends with its weights, iteration count and lr."""
    whole_log, whole = uninterrupted[loop]
    stopped_log, log, runner = stop_and_resume(tmp_path, loop, at)
    assert len(stopped_log) == stop and stopped_log == whole_log[:stop]
    assert log == whole_log  # same iterations, lrs and samples, in order: none twice, none left out
    resumed = final_state(runner)
    assert (resumed['iter'], resumed['epoch'], resumed['lr']) == (whole['iter'], whole['epoch'], whole['lr'])
    for param, expected in zip(resumed['weights'], whole['weights']):
        torch.testing.assert_close(param, expected, rtol=0, atol=0)


@pytest.mark.parametrize('loop', [EPOCHS, ITERATIONS])
def test_sigusr1_during_start_up_stops_before_the_first_step(tmp_path, uninterrupted, loop):
    stopped_log, log, runner = stop_and_resume(tmp_path, loop, ('before_train', 0), signal.SIGUSR1)
    assert stopped_log == [] and log == uninterrupted[loop][0]


@pytest.mark.parametrize('loop', [EPOCHS, ITERATIONS])
@pytest.mark.parametrize('at, stop', [(('before_train_iter', 5), 6), (('after_val_iter', 0), 4)])
def test_loader_workers_survive_the_signal_and_are_shut_down(tmp_path, uninterrupted, loop, at, stop):
    """Persistent loader workers of training and validation receive the signal too: they ignore it, so the
    iteration finishes, and the run shuts them down itself (ignoring SIGTERM, they would block the interpreter's
    exit, which terminates and joins them)."""
    stopped_log, log, _ = stop_and_resume(tmp_path, loop, at, workers=1)
    assert len(stopped_log) == stop and log == uninterrupted[loop][0]


def test_requeue_comes_after_the_stop_checkpoint(tmp_path, monkeypatch):
    from scalablevit.openmmlab import loops
    requeued = []
    monkeypatch.setattr(loops, 'requeue_slurm_job', lambda: requeued.append((tmp_path / STOP_CHECKPOINT).exists()))
    with use_checkpoint_policy():
        with pytest.raises(TrainingStopped):
            toy_run(tmp_path, EPOCHS, [], at=('before_train_iter', 1), requeue=True)
    assert requeued == [True]


def test_train_cfg_loops_become_preemptible():
    from scalablevit.openmmlab.loops import preemptible_train_cfg
    assert preemptible_train_cfg(dict(type='EpochBasedTrainLoop', max_epochs=12, val_interval=1), True) == \
        dict(type=EPOCHS, max_epochs=12, val_interval=1, requeue=True)
    assert preemptible_train_cfg(dict(by_epoch=False, max_iters=8)) == \
        dict(type=ITERATIONS, max_iters=8, requeue=False)
    assert preemptible_train_cfg(dict(type='MyLoop', max_iters=8)) == dict(type='MyLoop', max_iters=8)


def test_a_run_without_a_seed_resumes_its_own_sample_order(tmp_path):
    """Without `randomness.seed` every run draws its own seed, and mmengine builds the sampler before it resumes:
    the resumed run takes the stopped run's order, so every epoch still trains each sample once."""
    log = []
    with use_checkpoint_policy():
        with pytest.raises(TrainingStopped):
            toy_run(tmp_path, EPOCHS, log, at=('before_train_iter', 5), seed=None)
        toy_run(tmp_path, EPOCHS, log, resume=True, seed=None)
    assert [iteration for iteration, _, _ in log] == list(range(12))
    for epoch in range(3):
        assert sorted(i for _, _, batch in log[4 * epoch:4 * epoch + 4] for i in batch) == list(range(11))


def test_resuming_with_another_batch_size_restarts_the_epoch(tmp_path):
    """A position inside the epoch counts batches of the layout that wrote it: with another batch size the epoch
    restarts (mmengine's resume), from its first batch, and the run ends at its epoch count."""
    log = []
    with use_checkpoint_policy():
        with pytest.raises(TrainingStopped):
            toy_run(tmp_path, EPOCHS, log, at=('before_train_iter', 5))
        del log[:]
        runner = toy_run(tmp_path, EPOCHS, log, resume=True, batch_size=2)
    first_epoch_again = sorted(i for _, _, batch in log[:6] for i in batch)
    assert first_epoch_again == list(range(11)) and runner.epoch == 3


# --- the users' launch scripts: the signal to the whole process group, mid-epoch --------------------------------

RECORDER = '''\
import json
import os

from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class RecordSamples(Hook):
    """Appends (iteration, lr, images) of every trained batch to WORK_DIR/samples-RANK.jsonl."""
    priority = 'VERY_LOW'

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        images = [os.path.basename(sample.metainfo['img_path']) for sample in data_batch['data_samples']]
        line = dict(iter=runner.iter, lr=runner.optim_wrapper.get_lr()['lr'][0], images=images)
        with open(os.path.join(runner.work_dir, f'samples-{get_rank()}.jsonl'), 'a') as f:
            f.write(json.dumps(line) + '\\n')
'''


def demo_with_recorder(task: str, tmp_path: Path) -> Path:
    """The task's smallest demo config on a dataset with a partial last batch (9 images in batches of 2), with
    the recording hook, seeded (so that two runs draw the same order), and loader workers (which must survive)."""
    if task == 'detection':
        from scalablevit.demo_data import make_demo_coco
        make_demo_coco(tmp_path / 'data' / 'demo_coco', train_images=9, val_images=2)
        base = DETECTION / 'configs' / 'demo' / 'retinanet_scalablevit-test_fpn_demo-coco.py'
        schedule = 'train_cfg = dict(max_epochs=3)'  # the stop, agreed a step or two after the signal, lands inside
    else:
        from scalablevit.demo_data import make_demo_ade
        make_demo_ade(tmp_path / 'data' / 'demo_ade', train_images=9, val_images=2)
        base = SEGMENTATION / 'configs' / 'demo' / 'fpn_scalablevit-test_demo-ade.py'
        schedule = ('train_cfg = dict(max_iters=8, val_interval=4)\n'
                    'default_hooks = dict(checkpoint=dict(interval=4))')
    (tmp_path / 'record_samples.py').write_text(RECORDER)
    config = tmp_path / f'{task}_recorded.py'
    config.write_text(f"_base_ = ['{base}']\n"
                      "custom_imports = dict(imports=['scalablevit.openmmlab', 'record_samples'], "
                      "allow_failed_imports=False)\n"
                      "custom_hooks = [dict(type='RecordSamples')]\n"
                      "randomness = dict(seed=0)\n"
                      "train_dataloader = dict(num_workers=1, persistent_workers=True)\n"
                      f"{schedule}\n")
    return config


def read_samples(work: Path, processes: int) -> List[List[dict]]:
    return [[json.loads(line) for line in (work / f'samples-{rank}.jsonl').read_text().splitlines()]
            for rank in range(processes)]


def launch(task: str, config: Path, work: Path, processes: int, tmp_path: Path, *options) -> subprocess.Popen:
    folder = DETECTION if task == 'detection' else SEGMENTATION
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1', PORT=str(free_port()),
               PYTHONPATH=f'{tmp_path}{os.pathsep}{os.environ.get("PYTHONPATH", "")}',
               PATH=f'{Path(sys.executable).parent}{os.pathsep}{os.environ["PATH"]}')
    return subprocess.Popen(['bash', str(folder / 'dist_train.sh'), str(config), str(processes), '--work-dir',
                             str(work), *options], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def finish(process: subprocess.Popen, timeout: int = 900) -> str:
    output = process.communicate(timeout=timeout)[0]
    assert process.returncode == 0, output[-3000:]
    return output


@pytest.mark.slow
@pytest.mark.parametrize('task, processes, signum, signal_after', [
    ('detection', 1, signal.SIGTERM, 2), ('detection', 2, signal.SIGUSR1, 4), ('segmentation', 2, signal.SIGTERM, 2)])
def test_dist_train_stopped_by_a_signal_to_the_process_group_resumes_inside_the_epoch(
        tmp_path, task, processes, signum, signal_after):
    """`dist_train.sh` (torchrun, which forwards the signal to its workers) on 1 or 2 processes with a loader
    worker each; the signal to the launcher's process group once `signal_after` iterations were trained; the same
    command with --resume finishes. Per rank and iteration, the stopped and the resumed run together trained the
    images of an uninterrupted run at its learning rates, each once, and ended at its iteration count."""
    config = demo_with_recorder(task, tmp_path)
    finish(launch(task, config, tmp_path / 'whole', processes, tmp_path))
    whole = read_samples(tmp_path / 'whole', processes)

    work = tmp_path / 'work'
    process = launch(task, config, work, processes, tmp_path)
    deadline = time.time() + 600
    while time.time() < deadline and process.poll() is None:
        samples = work / 'samples-0.jsonl'
        if samples.exists() and len(samples.read_text().splitlines()) >= signal_after:
            os.killpg(process.pid, signum)
            break
        time.sleep(0.05)
    output = process.communicate(timeout=600)[0]
    assert output.count(f'stopped by signal {int(signum)} ') == processes, output[-3000:]  # every rank
    assert output.count('Traceback') == output.count('SignalException: Process'), output[-3000:]  # torchrun's
    assert (work / 'last_checkpoint').read_text().strip() == str(work / STOP_CHECKPOINT)
    stopped = read_samples(work, processes)
    assert signal_after <= len(stopped[0]) < len(whole[0])

    output = finish(launch(task, config, work, processes, tmp_path, '--resume'))
    assert 'continuing' in output
    resumed = read_samples(work, processes)
    assert resumed == whole  # per rank: iterations, lrs and images in order; none twice, none left out
    assert sum(len(line['images']) for rank in resumed for line in rank) == \
        sum(len(line['images']) for rank in whole for line in rank)


@pytest.mark.slow
def test_slurm_train_stopped_by_sigusr1_exits_75_and_resumes_inside_the_epoch(slurm, tmp_path):
    """`slurm_train.sh` (srun, 2 tasks, which forwards SIGUSR1 to both) stopped mid-epoch: srun exits 75; the same
    command with --resume trains the remaining batches of the uninterrupted run, each once."""
    config = demo_with_recorder('detection', tmp_path)
    env = dict(os.environ, **slurm, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1', GPUS='2', GPUS_PER_NODE='2',
               CPUS_PER_TASK='1', GRES='', PYTHONPATH=f'{tmp_path}{os.pathsep}{os.environ.get("PYTHONPATH", "")}',
               PATH=f'{Path(sys.executable).parent}{os.pathsep}{os.environ["PATH"]}')

    def launch_slurm(work: Path, *options) -> subprocess.Popen:
        return subprocess.Popen(['bash', str(DETECTION / 'slurm_train.sh'), 'debug', 'preempted', str(config),
                                 str(work), *options], cwd=tmp_path, env=dict(env, MASTER_PORT=str(free_port())),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)

    finish(launch_slurm(tmp_path / 'whole'))
    whole = read_samples(tmp_path / 'whole', 2)
    work = tmp_path / 'work'
    process = launch_slurm(work)
    deadline = time.time() + 600
    while time.time() < deadline and process.poll() is None:
        samples = work / 'samples-0.jsonl'
        if samples.exists() and len(samples.read_text().splitlines()) >= 4:
            os.killpg(process.pid, signal.SIGUSR1)
            break
        time.sleep(0.05)
    output = process.communicate(timeout=600)[0]
    assert process.returncode == 75 and output.count(f'stopped by signal {int(signal.SIGUSR1)} ') == 2, output[-3000:]
    assert 'Traceback' not in output
    finish(launch_slurm(work, '--resume'))
    assert read_samples(work, 2) == whole
