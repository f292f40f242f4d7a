"""The one owner of a training run's state: which checkpoint it starts from, what a resumed command line may
change, where in the epoch it is, and the save / stop / requeue sequence (anchor: timm's `CheckpointSaver`).

A run's folder (`--output_dir`) holds checkpoint.pth (the latest position: an epoch's end, or a step inside an
epoch after a stop signal or `--checkpoint-interval`) and checkpoint_best.pth (the epoch end whose weights, as
`--eval` loads them, scored best). Every write is atomic. Positions inside an epoch count the epoch's samples
already trained (`sampler.EpochOrder`), so a checkpoint written at any step resumes on any number of processes,
batch size and `--grad-accum-steps`: bit-identical with the same layout, the same samples each once otherwise.
"""
import argparse
import random
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
from timm.utils import get_state_dict

from scalablevit import checkpoint as checkpoint_io
from scalablevit.preemption import StopRequest, TrainingStopped, requeue_slurm_job

from distributed_setup import get_rank, get_world_size, is_dist_avail_and_initialized, is_main_process
from engine import NonFiniteLossError
from errors import UserInputError
from run_files import atomic_save, capture_rng_state, load_model_weights, restore_rng_state
from run_log import append_log, logger

CHECKPOINT = 'checkpoint.pth'
BEST_CHECKPOINT = 'checkpoint_best.pth'

# What a resumed command line may change. Flags that define the run are refused unless --override-resume (the
# global batch, not its split into processes x --batch-size x --grad-accum-steps); a changed schedule flag
# replaces the saved schedule by this command line's (from the next epoch on); a changed model or optimizer type
# leaves the saved optimizer state unusable; everything else applies as given.
FIXED_ON_RESUME = ('model', 'model_kwargs', 'opt', 'layer_decay', 'sched', 'epochs', 'warmup_epochs',
                   'cooldown_epochs', 'decay_epochs', 'global_batch_size')
SCHEDULE_FLAGS = ('sched', 'epochs', 'lr', 'warmup_lr', 'min_lr', 'warmup_epochs', 'cooldown_epochs',
                  'decay_epochs', 'decay_rate', 'patience_epochs', 'lr_noise', 'lr_noise_pct', 'lr_noise_std')
OPTIMIZER_TYPE_FLAGS = ('model', 'model_kwargs', 'opt', 'layer_decay')
NOT_APPLIED_ON_RESUME = {'seed': 'not applied: the random streams continue from the checkpoint'}
# where and how the run executes, not what it computes: never compared
RUN_ENVIRONMENT = ('resume', 'override_resume', 'start_epoch', 'eval', 'use_ema', 'throughput', 'throughput_warmup',
                   'throughput_iters', 'output_dir', 'data_path', 'device', 'num_workers', 'pin_mem', 'dist_url',
                   'dist_eval', 'local_rank', 'rank', 'world_size', 'gpu', 'distributed', 'dist_backend',
                   'skip_bad_images', 'checkpoint_interval', 'requeue', 'finetune', 'torchcompile', 'channels_last',
                   'batch_size', 'grad_accum_steps', 'log_tensorboard', 'amp')


def resolve_resume(args: argparse.Namespace, output_dir: Optional[Path], training: bool) -> str:
    """The checkpoint to start from. Training: the run's own --output_dir/checkpoint.pth when it exists (a
    requeued job continues its own progress, even when its command line names another --resume), else --resume
    (a folder means its checkpoint.pth), else ''. Evaluation: --resume, else --output_dir/checkpoint.pth."""
    own = output_dir / CHECKPOINT if output_dir is not None else None
    if training and own is not None and own.exists():
        if args.resume and Path(args.resume).resolve() not in (own.resolve(), own.parent.resolve()):
            logger.warning(f'resuming this run\'s own {own}, not --resume {args.resume}: the run has progressed '
                           f'past it (remove {own} or pick another --output_dir to start from {args.resume})')
        return str(own)
    if args.resume:
        folder = Path(args.resume)
        if not folder.is_dir() or (not (folder / CHECKPOINT).is_file()
                                   and (folder / checkpoint_io.HUB_CONFIG_FILE).is_file()):
            return args.resume  # a file, or a hub folder (config.json + weights)
        candidate = Path(args.resume) / CHECKPOINT
        if candidate.is_file():
            return str(candidate)
        found = sorted(p.name for p in Path(args.resume).glob('*.pth'))
        raise UserInputError(f'--resume {args.resume} is a folder without {CHECKPOINT}'
                             + (f'; it holds {found[:5]}: pass one of them' if found else ''))
    if own is not None and own.exists():
        return str(own)
    return ''


def resume_changes(args: argparse.Namespace, checkpoint: dict, source: str, start_epoch: int,
                   flag_names: Optional[Dict[str, str]] = None) -> set:
    """Compare this command line with the one that wrote the checkpoint (its 'args'): every flag that differs
    is logged with what happens to it, and flags that cannot change mid-run (`FIXED_ON_RESUME`) are a
    UserInputError unless --override-resume (`flag_names`: option string per argument, for the messages).
    Returns the names of the differing flags."""
    saved = checkpoint.get('args')
    saved = vars(saved) if isinstance(saved, argparse.Namespace) else saved
    if not isinstance(saved, dict):
        logger.warning(f'{source} records no command line: the flags of this run cannot be checked against '
                       f'the one that wrote it')
        return set()
    current = dict(vars(args), global_batch_size=args.batch_size * get_world_size() * args.grad_accum_steps)
    saved = dict(saved, global_batch_size=saved.get('batch_size', 0) * saved.get('world_size', 1)
                 * saved.get('grad_accum_steps', 1))
    changed = sorted(k for k in current if k in saved and k not in RUN_ENVIRONMENT and current[k] != saved[k])
    if not changed:
        return set()
    options = dict(flag_names or {})
    options.update(global_batch_size='global batch size (--batch-size x processes x --grad-accum-steps)',
                   lr='--lr (scaled to the global batch)')

    def describe(key: str, effect: str) -> str:
        return f'  {options.get(key, key)}: {current[key]!r} (checkpoint: {saved[key]!r}){effect}'

    fixed = [k for k in changed if k in FIXED_ON_RESUME]
    if fixed and not args.override_resume:
        raise UserInputError(
            f'{source} was written by a run with other settings that cannot change mid-run:\n'
            + '\n'.join(describe(k, '') for k in fixed)
            + '\nResume with the checkpoint\'s values, or pass --override-resume to apply the new ones from '
              f'epoch {start_epoch} on (another --opt or model starts from a fresh optimizer state). Another '
              f'number of processes keeps the global batch with --batch-size or --grad-accum-steps.')
    lines = []
    for key in changed:
        if key in NOT_APPLIED_ON_RESUME:
            effect = NOT_APPLIED_ON_RESUME[key]
        elif key in OPTIMIZER_TYPE_FLAGS:
            effect = 'applied: the optimizer state starts afresh'
        elif key in SCHEDULE_FLAGS:
            effect = f'applied: this command line\'s learning-rate schedule from epoch {start_epoch} on'
        else:
            effect = 'applied'
        lines.append(describe(key, f' -> {effect}'))
    logger.warning(f'resuming {source}: flags that differ from the checkpoint\'s:\n' + '\n'.join(lines))
    return set(changed)


def gather_from_ranks(value: Any) -> List[Any]:
    """Every rank's `value`, in rank order (a collective when distributed)."""
    if not is_dist_avail_and_initialized():
        return [value]
    values = [None] * get_world_size()
    dist.all_gather_object(values, value)
    return values


def restore_rng_streams(states: List[Dict[str, Any]]) -> str:
    """This rank's random streams from a checkpoint's per-rank states: a rank that existed continues its own;
    a rank the checkpoint's run did not have derives a fresh stream from the state of rank (rank mod saved
    ranks) and its own number (never from seed + rank, which would replay the first epoch's draws). Returns
    what was done, for the log."""
    rank = get_rank()
    if not states:
        return 'the checkpoint has no random states: fresh streams from --seed'
    restore_rng_state(states[rank % len(states)])
    if rank < len(states):
        return 'random streams continued'
    derived = random.getrandbits(62) + rank
    random.seed(derived)
    torch.manual_seed(derived)
    np.random.seed(derived % 2 ** 32)
    return f'rank {rank} is new: its random streams derive from rank {rank % len(states)}\'s saved state'


class TrainingRun:
    """A training run's state and its checkpoints.

    Holds the run's folder, the objects whose state a checkpoint keeps (model, optimizer, scheduler, EMA, loss
    scaler), where the run is (`start_epoch`, `start_samples` into it, the epoch's meters), the best accuracy,
    and the stop request. `resume()` restores a checkpoint; `save_position()` writes one inside an epoch,
    `save_epoch()` at an epoch's end; `stop()` ends the run after the save (requeue, exit status 75). Every
    method that writes is a collective: every rank calls it at the same point."""

    def __init__(self, args: argparse.Namespace, output_dir: Optional[Path], model: torch.nn.Module,
                 optimizer: torch.optim.Optimizer, lr_scheduler, model_ema=None, loss_scaler=None,
                 flag_names: Optional[Dict[str, str]] = None):
        self.args = args
        self.flag_names = flag_names
        self.output_dir = output_dir
        self.model = model
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.model_ema = model_ema
        self.loss_scaler = loss_scaler
        self.start_epoch = args.start_epoch
        self.start_samples = 0  # of epoch start_epoch, already trained
        self.start_repeats: Optional[int] = None  # the resumed epoch's image repeats, when it was mid-epoch
        self.epoch_meters: Optional[dict] = None
        self.max_accuracy = 0.0
        self.stop_request: Optional[StopRequest] = None
        self._epoch_start = 0
        self._epoch_repeats = 1

    # -- resuming ------------------------------------------------------------------------------------------------

    def resume(self, checkpoint: dict, source: str) -> None:
        """Restore the raw weights, optimizer, scheduler, EMA, scaler, random streams and position of a training
        checkpoint. The optimizer's hyperparameters (lr, weight decay, ...) stay this command line's; its state
        is restored unless the model or optimizer type changed, and the schedule unless a schedule flag did."""
        args = self.args
        changes = resume_changes(args, checkpoint, source, checkpoint['epoch'] + 1, self.flag_names)
        chosen = load_model_weights(self.model, checkpoint, source, use_ema=False)
        logger.info(f'Loaded the {chosen!r} weights of {source}')
        if self.model_ema is not None:
            if checkpoint.get('model_ema') is None:
                logger.warning(f'{source} has no EMA weights: the EMA starts from its model weights')
                self.model_ema.set(self.model)
            else:
                load_model_weights(self.model_ema.module, {'model_ema': checkpoint['model_ema']}, source,
                                   use_ema=True)
        if not changes & set(OPTIMIZER_TYPE_FLAGS):
            checkpoint_io.check_finite({'optimizer': checkpoint['optimizer']}, f'checkpoint {source}',
                                       'optimizer state')
            hyperparameters = [{k: v for k, v in group.items() if k != 'params'}
                               for group in self.optimizer.param_groups]
            self.optimizer.load_state_dict(checkpoint['optimizer'])
            for group, values in zip(self.optimizer.param_groups, hyperparameters):
                group.update(values)
        if not changes & set(SCHEDULE_FLAGS):
            self.lr_scheduler.load_state_dict(checkpoint['lr_scheduler'])
        if self.loss_scaler is not None and checkpoint.get('scaler') is not None:
            self.loss_scaler.load_state_dict(checkpoint['scaler'])
        logger.info(restore_rng_streams(checkpoint.get('rng') or []))
        self.start_epoch = checkpoint['epoch'] + 1
        self.lr_scheduler.step(self.start_epoch)  # the learning rate the uninterrupted run would use next
        self.max_accuracy = checkpoint.get('max_accuracy', 0.0)
        self._resume_position(checkpoint.get('mid_epoch'), source)
        logger.info(f'Resuming training at epoch {self.start_epoch}'
                    + (f', sample {self.start_samples}' if self.start_samples else ''))

    def _resume_position(self, position: Optional[dict], source: str) -> None:
        """The samples of epoch `start_epoch` already trained, from a checkpoint written inside it. ImageFolder
        positions resume on any layout; a shard epoch needs the same processes, --batch-size and --num_workers
        (which shards a loader worker reads depends on them)."""
        if not position:
            return
        args = self.args
        layout = {'world_size': get_world_size(), 'batch_size': args.batch_size,
                  'grad_accum_steps': args.grad_accum_steps}
        saved = {key: position.get(key) for key in layout}
        samples = position.get('samples')
        if samples is None:  # written before positions counted samples: whole steps of the saved layout
            samples = position['step'] * saved['grad_accum_steps'] * saved['batch_size'] * saved['world_size']
        if args.dataset == 'wds':
            shard_layout = {'world_size': layout['world_size'], 'batch_size': args.batch_size,
                            'num_workers': args.num_workers}
            saved_shards = {key: position.get(key) for key in shard_layout}
            if saved_shards != shard_layout:
                raise UserInputError(
                    f'{source} was written in the middle of epoch {position["epoch"]} of a shard dataset by a run '
                    f'with {saved_shards}; this run has {shard_layout}. A shard epoch resumes with the same '
                    f'processes, --batch-size and --num_workers, or from a checkpoint written at an epoch end.')
        self.start_samples = samples
        self.start_repeats = position.get('repeats')
        if saved == layout:
            self.epoch_meters = position['meters'][get_rank()]
        else:
            logger.warning(
                f'{source} was written in the middle of epoch {position["epoch"]} by a run with {saved}; this run '
                f'has {layout}: it trains the samples after the epoch\'s first {samples}, each once, in the new '
                f'layout (the same samples and augmentations, not bit-identical; the epoch\'s averaged '
                f'training stats restart)')

    # -- saving --------------------------------------------------------------------------------------------------

    def _checkpoint(self, last_finished_epoch: int, position: Optional[dict] = None) -> Optional[dict]:
        """The checkpoint dict on rank 0 (None elsewhere), with every rank's random states (and, inside an
        epoch, every rank's meters). Refuses weights that became NaN/inf (a finite loss can still overflow
        them), on every rank alike."""
        bad = [name for name, value in self.model.state_dict().items()
               if value.is_floating_point() and not torch.isfinite(value).all()]
        if bad:
            raise NonFiniteLossError(
                f'the weights became NaN or infinite ({bad[:5]}) although the loss was finite: stopping. Nothing '
                f'was written (the last checkpoint is untouched); lower --lr, keep --clip-grad on, or use '
                f'--amp-dtype bfloat16.')
        rng_states = gather_from_ranks(capture_rng_state())
        if position is not None:
            position = dict(position, meters=gather_from_ranks(position['meters']))
        if self.output_dir is None or not is_main_process():
            return None
        return {
            'model': self.model.state_dict(),
            'optimizer': self.optimizer.state_dict(),
            'lr_scheduler': self.lr_scheduler.state_dict(),
            'epoch': last_finished_epoch,
            'model_ema': get_state_dict(self.model_ema) if self.model_ema is not None else None,
            'scaler': self.loss_scaler.state_dict() if self.loss_scaler is not None else None,
            'max_accuracy': self.max_accuracy,
            'rng': rng_states,
            'mid_epoch': position,
            'args': vars(self.args),
        }

    def begin_epoch(self, epoch: int, sampler) -> Tuple[int, Optional[dict]]:
        """Point the training sampler (`EpochOrder`, or a shard split's batches) at the part of `epoch` still to
        train; returns (the optimizer step to count from, the epoch's meters so far or None)."""
        resumed = epoch == self.start_epoch and self.start_samples > 0
        self._epoch_start = self.start_samples if resumed else 0
        self._epoch_repeats = self.start_repeats if resumed and self.start_repeats else sampler.repeats
        sampler.set_epoch(epoch, self._epoch_start, self._epoch_repeats)
        per_step = get_world_size() * self.args.batch_size * self.args.grad_accum_steps
        return self._epoch_start // per_step, self.epoch_meters if resumed else None

    def save_position(self, epoch: int, step: int, micro_batches: int, meters: dict) -> None:
        """checkpoint.pth after optimizer step `step` of `epoch`, once every rank has trained `micro_batches`
        more batches of it (the ranks wait for the write)."""
        args = self.args
        samples = self._epoch_start + micro_batches * args.batch_size * get_world_size()
        checkpoint = self._checkpoint(epoch - 1, dict(
            epoch=epoch, step=step, samples=samples, repeats=self._epoch_repeats, meters=meters,
            world_size=get_world_size(), batch_size=args.batch_size, grad_accum_steps=args.grad_accum_steps,
            num_workers=args.num_workers))
        if checkpoint is not None:
            atomic_save(checkpoint, self.output_dir / CHECKPOINT)
            logger.info(f'saved {self.output_dir / CHECKPOINT} at epoch {epoch}, step {step} '
                        f'({samples} samples of the epoch)')
        if is_dist_avail_and_initialized():
            dist.barrier()

    def save_epoch(self, epoch: int, stats: Dict[str, Any], accuracy: float) -> None:
        """The end of `epoch`: log.txt's line, checkpoint_best.pth when `accuracy` (that of the weights --eval
        loads) is the best so far, and checkpoint.pth."""
        is_best = accuracy > self.max_accuracy
        self.max_accuracy = max(self.max_accuracy, accuracy)
        checkpoint = self._checkpoint(epoch)
        if checkpoint is None:
            return
        append_log(self.output_dir, stats)
        # best first: a kill between the two writes re-runs this epoch, which rewrites the same best
        if is_best:
            atomic_save(checkpoint, self.output_dir / BEST_CHECKPOINT)
        atomic_save(checkpoint, self.output_dir / CHECKPOINT)

    # -- stopping ------------------------------------------------------------------------------------------------

    def __enter__(self) -> 'TrainingRun':
        self.stop_request = StopRequest()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_request.close()

    def stop_agreed(self) -> bool:
        """After a training step: whether the ranks agreed to stop (one step after a signal)."""
        return self.stop_request.agreed()

    def stop_agreed_now(self) -> bool:
        """At an epoch's end: whether any rank has been signalled by now."""
        return self.stop_request.agreed_now()

    def stop(self, where: str) -> None:
        """Once checkpoint.pth holds the position: requeue the Slurm job (--requeue, rank 0), then every rank
        raises TrainingStopped (exit status 75)."""
        if self.output_dir is None:
            logger.warning('stopping on a signal without --output_dir: nothing was saved')
        if self.args.requeue and is_main_process():
            requeue_slurm_job()
        if is_dist_avail_and_initialized():
            dist.barrier()  # no rank exits (which makes srun --kill-on-bad-exit end the others) before the requeue
        signum = self.stop_request.signal
        raise TrainingStopped(f'stopped by signal {signum or "(on another rank)"} {where}; rerun the same command '
                              f'to resume from {self.output_dir / CHECKPOINT if self.output_dir else "nothing"}')
