"""mmengine's training loops, made safe to preempt: a stop signal ends the run with a checkpoint of the iteration
it reached, and resuming continues inside the epoch.

`PreemptibleEpochBasedTrainLoop` and `PreemptibleIterBasedTrainLoop` are mmengine's `EpochBasedTrainLoop` and
`IterBasedTrainLoop` with two changes (the drivers in `runner.py` use them in place of those; a config of one's
own can name them in `train_cfg`):

- Stopping (`scalablevit.preemption`): on SIGTERM/SIGUSR1 every rank finishes its iteration, the ranks agree to
  stop after the same one (`StopRequest.agreed`, after every iteration; `agreed_now` before each epoch and after
  each validation, so a signal during a validation or an epoch-end checkpoint write is honoured before the next
  epoch starts), rank 0 writes `stopped.pth` (through the Runner, so atomically) and names it in
  `last_checkpoint`, `requeue=True` requeues the Slurm job, and every rank raises `TrainingStopped` (the drivers
  exit with status 75). Data-loader workers of training and validation ignore the signals.
- Resuming: the epoch's sample order is a function of the sampler's seed and the epoch, so the batches already
  trained are skipped by index (`ResumableBatchSampler`, without loading them) and training continues with the
  next batch of the same order: no batch is trained twice or left out, and the iteration count, and with it
  every iteration-based schedule, stays that of an uninterrupted run. mmengine's EpochBasedTrainLoop restarts
  the epoch instead, and its IterBasedTrainLoop loads every skipped batch.

The position is the checkpoint's `iter` and `epoch`: batches of the current epoch = iter - epoch x batches per
epoch. It continues where the layout (processes x batch size, batches per epoch), which the loops record in the
message hub, is the same as the run's that wrote it; another layout restarts the epoch, as mmengine does.
"""
import itertools
import logging
import os
import os.path as osp
from typing import Iterator, List, Optional, Union

from mmengine.dataset import InfiniteSampler
from mmengine.dist import barrier, get_world_size, is_main_process
from mmengine.logging import print_log
from mmengine.registry import DATA_SAMPLERS, LOOPS
from mmengine.runner import EpochBasedTrainLoop, IterBasedTrainLoop
from mmengine.runner.loops import _InfiniteDataloaderIterator
from torch.utils.data import BatchSampler, DataLoader, Sampler

from ..preemption import StopRequest, TrainingStopped, ignore_stop_signals, requeue_slurm_job

__all__ = ['STOP_CHECKPOINT', 'ResumableBatchSampler', 'PreemptibleEpochBasedTrainLoop',
           'PreemptibleIterBasedTrainLoop', 'preemptible_train_cfg']

STOP_CHECKPOINT = 'stopped.pth'  # in the work dir; replaced at every stop
# kept in the message hub, so in every checkpoint: [processes, samples per batch, batches per epoch], and the
# seed of the sampler's order (mmengine builds the sampler before it resumes: without a seed in the config, from
# a new random one)
LAYOUT_KEY, SAMPLER_SEED_KEY = 'train_layout', 'train_sampler_seed'


@DATA_SAMPLERS.register_module()
class ResumableBatchSampler(BatchSampler):
    """The config's batch sampler (`batch_sampler`, e.g. mmdet's AspectRatioBatchSampler; by default torch's
    BatchSampler) whose passes leave out their first `skip` batches: they are drawn (indices only, no data is
    loaded) and dropped, so the batches after them are exactly those of a full pass. The length stays that of a
    full pass, so batch numbers and epoch ends count as in an uninterrupted run. A DataLoader iterator starts
    its pass when it is created (torch's multi-process one even twice), so `skip` is set before and reset after
    `iter(dataloader)`."""

    def __init__(self, sampler: Sampler, batch_size: int, drop_last: bool = False,
                 batch_sampler: Optional[dict] = None):
        if batch_sampler is None:
            self.batch_sampler = BatchSampler(sampler, batch_size, drop_last)
        else:
            self.batch_sampler = DATA_SAMPLERS.build(batch_sampler,
                                                     default_args=dict(sampler=sampler, batch_size=batch_size))
        self.sampler, self.batch_size = sampler, batch_size
        self.drop_last = getattr(self.batch_sampler, 'drop_last', drop_last)
        self.skip = 0

    def __iter__(self) -> Iterator[List[int]]:
        return itertools.islice(iter(self.batch_sampler), self.skip, None)

    def __len__(self) -> int:
        return len(self.batch_sampler)


class _IgnoringStopSignals:
    """A DataLoader `worker_init_fn`: the worker ignores the stop signals, then runs the loader's own init
    (mmengine's seeding)."""

    def __init__(self, init_fn=None):
        self.init_fn = init_fn

    def __call__(self, worker_id: int) -> None:
        ignore_stop_signals(worker_id)
        if self.init_fn is not None:
            self.init_fn(worker_id)


def _workers_ignore_stop_signals(dataloader) -> None:
    if isinstance(dataloader, DataLoader) and not isinstance(dataloader.worker_init_fn, _IgnoringStopSignals):
        dataloader.worker_init_fn = _IgnoringStopSignals(dataloader.worker_init_fn)


def _shut_down_workers(iterator) -> None:
    """Stop the workers of a data loader's iterator now (a no-op for other iterators). Workers that ignore
    SIGTERM must not be left to the interpreter's exit: multiprocessing ends daemonic children with SIGTERM and
    then waits for them, forever."""
    if hasattr(iterator, '_shutdown_workers'):
        iterator._shutdown_workers()


def _build_train_dataloader(runner, dataloader: Union[DataLoader, dict]) -> DataLoader:
    """The train data loader as mmengine's loops build it, with its batch sampler wrapped in
    `ResumableBatchSampler` and workers that ignore the stop signals (set before any worker starts)."""
    if not isinstance(dataloader, dict):
        raise TypeError('the preemptible training loops build their data loader from its config: pass '
                        f'train_dataloader as a dict, not a {type(dataloader).__name__}')
    dataloader = dict(dataloader)
    batch_sampler = dataloader.pop('batch_sampler', None)
    if not (isinstance(batch_sampler, dict) and batch_sampler.get('type') in ('ResumableBatchSampler',
                                                                               ResumableBatchSampler)):
        batch_sampler = dict(type='ResumableBatchSampler', batch_sampler=batch_sampler,
                             drop_last=dataloader.pop('drop_last', False))
    dataloader = runner.build_dataloader(dict(dataloader, batch_sampler=batch_sampler), seed=runner.seed,
                                         diff_rank_seed=runner._randomness_cfg.get('diff_rank_seed', False))
    _workers_ignore_stop_signals(dataloader)
    return dataloader


def _write_atomically(path: str, text: str) -> None:
    tmp = f'{path}.tmp-{os.getpid()}'
    with open(tmp, 'w') as f:
        f.write(text)
    os.replace(tmp, path)


class _Preemptible:
    """What both loops add to mmengine's: the stop request, the stop checkpoint and the resumed position."""

    def _init(self, loop_init, runner, dataloader: Union[DataLoader, dict], length: int, requeue: bool,
              **kwargs) -> None:
        """mmengine's loop `__init__`, with the stop request taken first, so that a signal while the dataset
        and the rest of the run are built is honoured before the first step."""
        self.requeue = requeue
        self.stop_request = StopRequest()
        try:
            loop_init(self, runner, _build_train_dataloader(runner, dataloader), length, **kwargs)
        except BaseException:
            self.stop_request.close()
            raise

    @property
    def _batch_sampler(self) -> ResumableBatchSampler:
        return self.dataloader.batch_sampler

    def _layout(self) -> List[int]:
        return [get_world_size(), self._batch_sampler.batch_size, len(self.dataloader)]

    def _start(self) -> None:
        """Before training (after a resume): the sampler takes the resumed run's seed, and an infinite one
        restarts its stream; the layout and the seed are recorded (the resumed checkpoint's layout is kept in
        `saved_layout`); validation workers ignore the stop signals too."""
        hub, sampler = self.runner.message_hub, self._batch_sampler.sampler
        seed = hub.get_info(SAMPLER_SEED_KEY)
        if seed is not None and hasattr(sampler, 'seed'):
            sampler.seed = seed
        if isinstance(sampler, InfiniteSampler):
            sampler.indices = sampler._indices_of_rank()
        hub.update_info(SAMPLER_SEED_KEY, getattr(sampler, 'seed', None))
        self.saved_layout = hub.get_info(LAYOUT_KEY)
        hub.update_info(LAYOUT_KEY, self._layout())
        if self.runner.val_loop is not None:
            _workers_ignore_stop_signals(self.runner.val_loop.dataloader)

    def _finish(self, *iterators) -> None:
        """After training, stopped or not: the stop signals go back to their handlers and the loaders' workers
        (`iterators`, and the persistent ones of training and validation) are shut down."""
        self.stop_request.close()
        loaders = [self.dataloader] + ([self.runner.val_loop.dataloader] if self.runner.val_loop is not None else [])
        for iterator in [*iterators, *(getattr(loader, '_iterator', None) for loader in loaders)]:
            _shut_down_workers(iterator)

    def _same_layout(self, otherwise: str) -> bool:
        """Whether the resumed checkpoint's layout is this run's; if not, a warning ending in `otherwise`."""
        if self.saved_layout is None or list(self.saved_layout) == self._layout():
            return True
        print_log(f'the checkpoint was written by a run of another layout (processes, batch size, batches per epoch '
                  f'{list(self.saved_layout)}, now {self._layout()}): {otherwise}', logger='current',
                  level=logging.WARNING)
        return False

    def _stop_if_requested(self, now: bool = False) -> None:
        """Every rank calls this at the same points; when the ranks agree that a stop signal came, the position
        is saved, the job requeued (`requeue`), and TrainingStopped raised on every rank."""
        if not (self.stop_request.agreed_now() if now else self.stop_request.agreed()):
            return
        runner = self.runner
        runner.save_checkpoint(runner.work_dir, STOP_CHECKPOINT, meta=dict(epoch=self._epoch, iter=self._iter))
        path = osp.join(runner.work_dir, STOP_CHECKPOINT)
        if is_main_process():
            _write_atomically(osp.join(runner.work_dir, 'last_checkpoint'), path)
            if self.requeue:
                requeue_slurm_job()
        barrier()  # no rank exits (which makes torchrun and srun end the others) before the save and the requeue
        signum = self.stop_request.signal
        raise TrainingStopped(f'stopped by signal {signum or "(on another rank)"} at epoch {self._epoch}, iteration '
                              f'{self._iter}: saved {path}; rerun the same command with --resume to continue')


@LOOPS.register_module()
class PreemptibleEpochBasedTrainLoop(_Preemptible, EpochBasedTrainLoop):
    """mmengine's EpochBasedTrainLoop that stops on a signal with a checkpoint of the iteration it reached and
    resumes inside the epoch (module docstring). `requeue`: requeue the Slurm job after a stop."""

    def __init__(self, runner, dataloader: Union[DataLoader, dict], max_epochs: int, requeue: bool = False,
                 **kwargs):
        self._init(EpochBasedTrainLoop.__init__, runner, dataloader, max_epochs, requeue, **kwargs)

    def run(self):
        self._start()
        epoch_length = len(self.dataloader) if self.saved_layout is None else self.saved_layout[2]
        self.resume_at = self._iter - self._epoch * epoch_length  # batches of the epoch trained already
        if not 0 <= self.resume_at <= len(self.dataloader) or (
                self.resume_at and not self._same_layout('the epoch restarts (as mmengine resumes)')):
            self.resume_at = 0
        self._batches = None
        try:
            return super().run()
        finally:
            self._finish(self._batches)

    def run_epoch(self) -> None:
        """mmengine's epoch, with a stop check before it and after every iteration, and the resumed epoch
        starting at the batch after the last one trained."""
        self._stop_if_requested(now=True)
        self.runner.call_hook('before_train_epoch')
        self.runner.model.train()
        start, self.resume_at = self.resume_at, 0
        if start:
            print_log(f'continuing epoch {self._epoch + 1} at batch {start + 1} of {len(self.dataloader)}',
                      logger='current')
        self._batch_sampler.skip = start
        self._batches = iter(self.dataloader)
        self._batch_sampler.skip = 0
        for idx, data_batch in enumerate(self._batches, start):
            self.run_iter(idx, data_batch)
            self._stop_if_requested()
        self._batches = None
        self.runner.call_hook('after_train_epoch')
        self._epoch += 1


@LOOPS.register_module()
class PreemptibleIterBasedTrainLoop(_Preemptible, IterBasedTrainLoop):
    """mmengine's IterBasedTrainLoop that stops on a signal with a checkpoint of the iteration it reached and,
    resumed, continues the sampler's stream by skipping the batches already trained instead of loading them
    (module docstring). `requeue`: requeue the Slurm job after a stop."""

    def __init__(self, runner, dataloader: Union[DataLoader, dict], max_iters: int, requeue: bool = False,
                 **kwargs):
        self._init(IterBasedTrainLoop.__init__, runner, dataloader, max_iters, requeue, **kwargs)
        # mmengine's __init__ started the loader's workers; `run` starts its own stream. Until then no worker
        # lives: workers ignore SIGTERM, so one left by a run that fails before training (its data check, its
        # schedule, a checkpoint that does not fit) would keep the interpreter's exit waiting forever.
        _shut_down_workers(self.dataloader_iterator._iterator)
        self.dataloader._iterator = None  # a persistent loader starts new workers at the next iter()

    def run(self):
        """mmengine's run, with stop checks (after every iteration, after validations) and the resumed stream
        skipping the iterations already trained by index."""
        self._start()
        self.runner.call_hook('before_train')
        self.runner.call_hook('before_train_epoch')
        if self._iter > 0:
            self._same_layout('the stream of the new layout continues after as many batches: samples may repeat '
                              'or be left out')
            print_log(f'continuing at iteration {self._iter + 1}: the data stream skips the {self._iter} '
                      'batches already trained', logger='current')
        self._batch_sampler.skip = self._iter
        self.dataloader_iterator = _InfiniteDataloaderIterator(self.dataloader)
        self._batch_sampler.skip = 0
        try:
            self._stop_if_requested(now=True)
            while self._iter < self._max_iters and not self.stop_training:
                self.runner.model.train()
                data_batch = next(self.dataloader_iterator)
                self.run_iter(data_batch)
                self._decide_current_val_interval()
                validates = (self.runner.val_loop is not None and self._iter >= self.val_begin
                             and (self._iter % self.val_interval == 0 or self._iter == self._max_iters))
                if validates:
                    self.runner.val_loop.run()
                if self._iter < self._max_iters:
                    self._stop_if_requested(now=validates)
        finally:
            self._finish(self.dataloader_iterator._iterator)
        self.runner.call_hook('after_train_epoch')
        self.runner.call_hook('after_train')
        return self.runner.model


_PREEMPTIBLE = {'EpochBasedTrainLoop': 'PreemptibleEpochBasedTrainLoop',
                'IterBasedTrainLoop': 'PreemptibleIterBasedTrainLoop'}


def preemptible_train_cfg(train_cfg: dict, requeue: bool = False) -> dict:
    """`train_cfg` with mmengine's epoch- or iteration-based loop replaced by its preemptible version. Another
    loop is kept, with a warning: a stop signal then ends the run as it would without this package."""
    train_cfg = dict(train_cfg)
    loop = train_cfg.get('type')
    if loop is None:
        loop = 'EpochBasedTrainLoop' if train_cfg.pop('by_epoch', False) else 'IterBasedTrainLoop'
    if loop not in _PREEMPTIBLE and loop not in _PREEMPTIBLE.values():
        print_log(f'train_cfg type {loop!r} is not one of mmengine\'s EpochBasedTrainLoop and IterBasedTrainLoop: '
                  'a stop signal ends the run without a checkpoint, and --resume restarts as the loop does',
                  logger='current', level=logging.WARNING)
        return train_cfg
    return dict(train_cfg, type=_PREEMPTIBLE.get(loop, loop), requeue=requeue)
