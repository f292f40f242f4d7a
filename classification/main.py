"""ImageNet training, evaluation and throughput for every model family of the package, with the DeiT recipe
(ScalableViT's Appendix C) under each family's own defaults (`TRAIN_RECIPES`, see `scalablevit.family`).

    torchrun --nproc_per_node=8 main.py --model scalable_vit_small --batch-size 128 --data-path PATH --dist-eval \
        --drop-path 0.2 --output_dir runs/small
    python main.py --eval --resume CKPT --model scalable_vit_small --data-path PATH
    python main.py --model scalable_vit_small --data-path PATH --batch-size 64 --throughput

Restarting a killed training command resumes from `--output_dir`/checkpoint.pth and ends with the same weights.
On SIGTERM or SIGUSR1 (a Slurm preemption, `--signal=USR1@90`) every rank finishes its optimizer step, the
position within the epoch is saved to checkpoint.pth and the command exits with status 75 (`EXIT_STOPPED`);
the same command then resumes at that step and ends bit-identical to an uninterrupted run.
"""
import argparse
import datetime
import functools
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional, Tuple

import timm
import torch
import torch.distributed as dist
from timm.data import resolve_data_config
from timm.data.distributed_sampler import RepeatAugSampler
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3, NativeScaler, ParseKwargs, get_state_dict, random_seed

import scalablevit  # registers the models in timm
from scalablevit import checkpoint as checkpoint_io
from scalablevit.distributed import close_process_group

import utils
from datasets import UnreadableImageError, build_dataset
from engine import NonFiniteLossError, StepMixup, StopRequest, TrainingStopped, evaluate, throughput, train_one_epoch
from sampler import ResumableSampler, SeededSamples, ignore_stop_signals
from shards import ShardSplit, build_shard_split

AMP_DTYPES = {'float16': torch.float16, 'bfloat16': torch.bfloat16, 'none': None}
# the exit status after a stop signal (SIGTERM, SIGUSR1) once the checkpoint is written: sysexits' EX_TEMPFAIL,
# 'temporary failure, try again': rerunning the same command resumes where it stopped
EXIT_STOPPED = 75


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser('training and evaluation', add_help=False)
    parser.add_argument('--batch-size', default=64, type=int, help='per-GPU (per-process) batch size')
    parser.add_argument('--epochs', default=300, type=int)

    # model
    parser.add_argument('--model', default='scalable_vit_small', type=str, metavar='MODEL')
    parser.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs,
                        help='extra model arguments, e.g. depths="(2,2,2,2)"')
    parser.add_argument('--input-size', default=None, type=int,
                        help="image size (default: the model's pretrained cfg, e.g. 224; ScopeViT 256)")
    parser.add_argument('--drop', type=float, default=0.0, metavar='PCT', help='dropout before the classifier')
    parser.add_argument('--drop-path', type=float, default=None, metavar='PCT',
                        help="stochastic depth (default: the family's recipe, e.g. 0.2 for ScalableViT-S, 0.5 for "
                             "B and L; else the model's own)")
    parser.add_argument('--model-ema', action='store_true', help='keep an exponential moving average')
    parser.add_argument('--no-model-ema', action='store_false', dest='model_ema')
    parser.set_defaults(model_ema=False)
    parser.add_argument('--model-ema-decay', type=float, default=0.99996)
    parser.add_argument('--model-ema-force-cpu', action='store_true', default=False)
    parser.add_argument('--amp-dtype', default='bfloat16', choices=sorted(AMP_DTYPES),
                        help='mixed precision on GPU (ignored on CPU, which trains in float32)')

    # optimizer
    parser.add_argument('--opt', default='adamw', type=str, metavar='OPTIMIZER')
    parser.add_argument('--opt-eps', default=1e-8, type=float, metavar='EPSILON')
    parser.add_argument('--opt-betas', default=None, type=float, nargs='+', metavar='BETA')
    parser.add_argument('--clip-grad', type=float, default=5.0, metavar='NORM', help='0 disables clipping')
    parser.add_argument('--momentum', type=float, default=0.9, metavar='M')
    parser.add_argument('--weight-decay', type=float, default=0.05)

    # learning rate schedule
    parser.add_argument('--sched', default='cosine', type=str, metavar='SCHEDULER')
    parser.add_argument('--lr', type=float, default=5e-4, metavar='LR',
                        help='learning rate per 512 images; scaled by the global batch size')
    parser.add_argument('--lr-noise', type=float, nargs='+', default=None, metavar='pct, pct')
    parser.add_argument('--lr-noise-pct', type=float, default=0.67, metavar='PERCENT')
    parser.add_argument('--lr-noise-std', type=float, default=1.0, metavar='STDDEV')
    parser.add_argument('--warmup-lr', type=float, default=1e-6, metavar='LR')
    parser.add_argument('--min-lr', type=float, default=1e-5, metavar='LR')
    parser.add_argument('--decay-epochs', type=float, default=30, metavar='N')
    parser.add_argument('--warmup-epochs', type=int, default=5, metavar='N')
    parser.add_argument('--cooldown-epochs', type=int, default=10, metavar='N')
    parser.add_argument('--patience-epochs', type=int, default=10, metavar='N')
    parser.add_argument('--decay-rate', '--dr', type=float, default=0.1, metavar='RATE')

    # augmentation
    parser.add_argument('--color-jitter', type=float, default=0.3, metavar='PCT')
    parser.add_argument('--aa', type=str, default='rand-m9-mstd0.5-inc1', metavar='NAME',
                        help='RandAugment policy ("none" disables it)')
    parser.add_argument('--smoothing', type=float, default=0.1, help='label smoothing')
    parser.add_argument('--train-interpolation', type=str, default=None,
                        help="training resize interpolation (default: the model's pretrained cfg)")
    parser.add_argument('--repeated-aug', action='store_true')
    parser.add_argument('--no-repeated-aug', action='store_false', dest='repeated_aug')
    parser.set_defaults(repeated_aug=True)
    parser.add_argument('--reprob', type=float, default=0.25, metavar='PCT', help='random erase probability')
    parser.add_argument('--remode', type=str, default='pixel')
    parser.add_argument('--recount', type=int, default=1)
    parser.add_argument('--mixup', type=float, default=0.8, help='mixup alpha (0 disables)')
    parser.add_argument('--cutmix', type=float, default=1.0, help='cutmix alpha (0 disables)')
    parser.add_argument('--cutmix-minmax', type=float, nargs='+', default=None)
    parser.add_argument('--mixup-prob', type=float, default=1.0)
    parser.add_argument('--mixup-switch-prob', type=float, default=0.5)
    parser.add_argument('--mixup-mode', type=str, default='batch', choices=['batch', 'pair', 'elem'])
    parser.add_argument('--eval-crop-ratio', default=None, type=float,
                        help="eval resize = input / ratio (default: the model's pretrained cfg crop_pct, e.g. "
                             "0.875; 0.9 for Swin+VSA and ScopeViT)")
    parser.add_argument('--interpolation', type=str, default=None,
                        help="eval resize interpolation (default: the model's pretrained cfg)")
    parser.add_argument('--mean', type=float, nargs=3, default=None, metavar='MEAN',
                        help="normalisation mean (default: the model's pretrained cfg)")
    parser.add_argument('--std', type=float, nargs=3, default=None, metavar='STD',
                        help="normalisation std (default: the model's pretrained cfg)")

    # data, run and distributed settings
    parser.add_argument('--data-path', default='data/imagenet', type=str,
                        help='folder with train/ and val/ (ImageFolder), or with the tar shards of --dataset wds')
    parser.add_argument('--dataset', default='folder', choices=['folder', 'wds'],
                        help='folder: ImageFolder; wds: WebDataset tar shards with _info.json (tools/make_shards.py)')
    parser.add_argument('--skip-bad-images', action='store_true',
                        help='skip (and count) unreadable images instead of stopping')
    parser.add_argument('--output_dir', default='', help='where to save checkpoints and log.txt')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--seed', default=0, type=int)
    parser.add_argument('--resume', default='', help='checkpoint (or a folder holding checkpoint.pth) to resume or '
                                                     'evaluate; training resumes from --output_dir by itself')
    parser.add_argument('--override-resume', action='store_true',
                        help='resume although flags that cannot change mid-run (model, optimizer, schedule length, '
                             'batch size) differ from the checkpoint\'s: the new values apply')
    parser.add_argument('--start_epoch', default=0, type=int, metavar='N')
    parser.add_argument('--eval', action='store_true', help='evaluate only')
    parser.add_argument('--use-ema', action=argparse.BooleanOptionalAction, default=None,
                        help='--eval/--throughput: the EMA weights (--use-ema) or the raw ones (--no-use-ema); '
                             'default: EMA when the checkpoint has them (resuming training always takes both)')
    parser.add_argument('--throughput', action='store_true', help='measure inference img/s only')
    parser.add_argument('--throughput-warmup', default=50, type=int)
    parser.add_argument('--throughput-iters', default=30, type=int)
    parser.add_argument('--dist-eval', action='store_true', default=False, help='split evaluation across ranks')
    parser.add_argument('--num_workers', default=10, type=int)
    parser.add_argument('--pin-mem', action='store_true')
    parser.add_argument('--no-pin-mem', action='store_false', dest='pin_mem')
    parser.set_defaults(pin_mem=torch.cuda.is_available())
    parser.add_argument('--dist_url', default='env://')
    parser.add_argument('--local_rank', '--local-rank', default=None, type=int,
                        help='set by `torch.distributed.launch` without --use_env')

    # clusters: accumulation, preemption, fine-tuning, GPU speed
    parser.add_argument('--grad-accum-steps', type=int, default=1, metavar='K',
                        help='micro-batches per optimizer step: the global batch (which scales the lr) is '
                             '--batch-size x processes x K')
    parser.add_argument('--checkpoint-interval', type=int, default=0, metavar='N',
                        help='also write checkpoint.pth every N optimizer steps within an epoch (0: at epoch ends '
                             'and on a stop signal only)')
    parser.add_argument('--requeue', action='store_true',
                        help='under Slurm: after a stop signal (SIGTERM, SIGUSR1) has been saved, requeue the job '
                             '(scontrol requeue $SLURM_JOB_ID)')
    parser.add_argument('--finetune', default='', metavar='CKPT',
                        help='start training from the weights of CKPT (EMA weights when present, see --use-ema); a '
                             'classifier of another class count is re-initialised. Ignored when resuming')
    parser.add_argument('--layer-decay', type=float, default=None, metavar='RATE',
                        help="layer-wise lr decay (timm's, by the model's group_matcher), e.g. 0.75 for fine-tuning")
    parser.add_argument('--torchcompile', nargs='?', const='inductor', default=None, metavar='BACKEND',
                        help='torch.compile the model (default backend: inductor)')
    parser.add_argument('--channels-last', action='store_true', help='train and evaluate in channels-last layout')
    return parser


def build_train_loader(args, dataset) -> tuple:
    """DeiT's sampling (repeated augmentation across ranks when distributed, plain shuffling otherwise), in an
    order fixed by (seed, epoch) and with per-sample augmentation seeds (`sampler.py`), so that an epoch can
    resume at any step. The loader's own seed comes from a private generator, not the global stream."""
    world_size, rank = utils.get_world_size(), utils.get_rank()
    if isinstance(dataset, ShardSplit):  # shards: the rank's batches come from the dataset itself
        batches = dataset.loader_dataset(args.batch_size, args.num_workers, rank, world_size, train=True,
                                         seed=args.seed)
        return batches, torch.utils.data.DataLoader(
            batches, batch_size=None, num_workers=args.num_workers, pin_memory=args.pin_mem,
            worker_init_fn=ignore_stop_signals, generator=torch.Generator().manual_seed(args.seed))
    if args.distributed and args.repeated_aug:
        order = RepeatAugSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True)
    else:
        order = torch.utils.data.DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True,
                                                    seed=args.seed)
    sampler = ResumableSampler(order, args.seed, rank)
    loader = torch.utils.data.DataLoader(
        SeededSamples(dataset), sampler=sampler, batch_size=args.batch_size, num_workers=args.num_workers,
        pin_memory=args.pin_mem, drop_last=True, worker_init_fn=ignore_stop_signals,
        generator=torch.Generator().manual_seed(args.seed))
    return sampler, loader


def build_val_loader(args, dataset, batch_size: int) -> torch.utils.data.DataLoader:
    if isinstance(dataset, ShardSplit):  # every sample once: all shards, or with --dist-eval the rank's share
        split_ranks = args.distributed and args.dist_eval
        batches = dataset.loader_dataset(batch_size, args.num_workers, utils.get_rank() if split_ranks else 0,
                                         utils.get_world_size() if split_ranks else 1, train=False)
        return torch.utils.data.DataLoader(batches, batch_size=None, num_workers=args.num_workers,
                                           pin_memory=args.pin_mem)
    if args.distributed and args.dist_eval:
        sampler = torch.utils.data.DistributedSampler(
            dataset, num_replicas=utils.get_world_size(), rank=utils.get_rank(), shuffle=False)
    else:
        sampler = torch.utils.data.SequentialSampler(dataset)
    return torch.utils.data.DataLoader(
        dataset, sampler=sampler, batch_size=batch_size, num_workers=args.num_workers,
        pin_memory=args.pin_mem, drop_last=False)


def create_classifier(args, num_classes: int) -> torch.nn.Module:
    check_model_name(args.model)
    # drop_path None: the model's own default (timm's create_model drops None arguments)
    return timm.create_model(args.model, pretrained=False, num_classes=num_classes, drop_rate=args.drop,
                             drop_path_rate=args.drop_path, **args.model_kwargs)


def check_model_name(name: str) -> None:
    if not timm.is_model(name):
        models = [model for family in scalablevit.FAMILIES for model in family.models()]
        raise utils.UserInputError(f'unknown --model {name}; this package\'s models: {models} (any timm model name '
                                   f'also works)')


def resolve_data_args(args: argparse.Namespace) -> None:
    """Fill input size, crop, interpolations and mean/std not given on the command line from the model's
    pretrained cfg (timm's `resolve_data_config`)."""
    cfg = timm.models.get_pretrained_cfg(args.model) if timm.is_model(args.model) else None
    data = resolve_data_config({}, pretrained_cfg=cfg.to_dict() if cfg is not None else {'input_size': (3, 224, 224)})
    for name, value in (('input_size', data['input_size'][-1]), ('eval_crop_ratio', data['crop_pct']),
                        ('train_interpolation', data['interpolation']), ('interpolation', data['interpolation']),
                        ('mean', tuple(data['mean'])), ('std', tuple(data['std']))):
        if getattr(args, name) is None:
            setattr(args, name, value)


def restore_training_state(checkpoint, source, optimizer, lr_scheduler, model_ema, loss_scaler,
                           keep_optimizer_state: bool = True, keep_schedule: bool = True) -> tuple:
    """Restore optimizer, scheduler, EMA, scaler and RNG states; return (start epoch, best accuracy so far).

    The optimizer's hyperparameters (lr, weight decay, betas, ...) stay those of this command line; its state
    is restored unless `keep_optimizer_state` is False (another optimizer type), and the scheduler's unless
    `keep_schedule` is False (a changed schedule: this command line's applies from the next epoch)."""
    if keep_optimizer_state:
        utils.check_finite({'optimizer': checkpoint['optimizer']}, f'checkpoint {source}', 'optimizer state')
        hyperparameters = [{k: v for k, v in group.items() if k != 'params'} for group in optimizer.param_groups]
        optimizer.load_state_dict(checkpoint['optimizer'])
        for group, values in zip(optimizer.param_groups, hyperparameters):
            group.update(values)
    if keep_schedule:
        lr_scheduler.load_state_dict(checkpoint['lr_scheduler'])
    if model_ema is not None and checkpoint.get('model_ema') is not None:
        utils.load_model_weights(model_ema.module, {'model_ema': checkpoint['model_ema']}, source, use_ema=True)
    if loss_scaler is not None and checkpoint.get('scaler') is not None:
        loss_scaler.load_state_dict(checkpoint['scaler'])
    rng_states = checkpoint.get('rng', [])
    if len(rng_states) == utils.get_world_size():
        utils.restore_rng_state(rng_states[utils.get_rank()])
    else:
        utils.logger.warning(f'checkpoint has RNG states for {len(rng_states)} processes, this run has '
                             f'{utils.get_world_size()}: continuing with fresh random streams')
    start_epoch = checkpoint['epoch'] + 1
    lr_scheduler.step(start_epoch)  # the learning rate the uninterrupted run would use next
    return start_epoch, checkpoint.get('max_accuracy', 0.0)


# What a resumed command line may change. Flags that define the run are refused unless --override-resume; a
# changed schedule flag replaces the saved schedule by this command line's (from the next epoch on); a changed
# model or optimizer type leaves the saved optimizer state unusable; everything else applies as given.
FIXED_ON_RESUME = ('model', 'model_kwargs', 'opt', 'layer_decay', 'sched', 'epochs', 'warmup_epochs',
                   'cooldown_epochs', 'decay_epochs', 'batch_size', 'grad_accum_steps', 'global_batch_size')
SCHEDULE_FLAGS = ('sched', 'epochs', 'lr', 'warmup_lr', 'min_lr', 'warmup_epochs', 'cooldown_epochs',
                  'decay_epochs', 'decay_rate', 'patience_epochs', 'lr_noise', 'lr_noise_pct', 'lr_noise_std')
OPTIMIZER_TYPE_FLAGS = ('model', 'model_kwargs', 'opt', 'layer_decay')
NOT_APPLIED_ON_RESUME = {'seed': 'not applied: the random streams continue from the checkpoint'}
# where and how the run executes, not what it computes: never compared
RUN_ENVIRONMENT = ('resume', 'override_resume', 'start_epoch', 'eval', 'use_ema', 'throughput', 'throughput_warmup',
                   'throughput_iters', 'output_dir', 'data_path', 'device', 'num_workers', 'pin_mem', 'dist_url',
                   'dist_eval', 'local_rank', 'rank', 'world_size', 'gpu', 'distributed', 'dist_backend',
                   'skip_bad_images', 'checkpoint_interval', 'requeue', 'finetune', 'torchcompile', 'channels_last')


def resume_changes(args: argparse.Namespace, checkpoint: dict, source: str, start_epoch: int) -> set:
    """Compare this command line with the one that wrote the checkpoint (its 'args'): every flag that differs
    is logged with what happens to it, and flags that cannot change mid-run (`FIXED_ON_RESUME`) are a
    UserInputError unless --override-resume. Returns the names of the differing flags."""
    saved = checkpoint.get('args')
    saved = vars(saved) if isinstance(saved, argparse.Namespace) else saved
    if not isinstance(saved, dict):
        utils.logger.warning(f'{source} records no command line: the flags of this run cannot be checked against '
                             f'the one that wrote it')
        return set()
    current = dict(vars(args), global_batch_size=args.batch_size * utils.get_world_size() * args.grad_accum_steps)
    saved = dict(saved, global_batch_size=saved.get('batch_size', 0) * saved.get('world_size', 1)
                 * saved.get('grad_accum_steps', 1))
    changed = sorted(k for k in current if k in saved and k not in RUN_ENVIRONMENT and current[k] != saved[k])
    if not changed:
        return set()
    options = {action.dest: action.option_strings[0] for action in get_args_parser()._actions
               if action.option_strings}
    options.update(global_batch_size='global batch size (--batch-size x processes x --grad-accum-steps)',
                   lr='--lr (scaled to the global batch)')

    def describe(key: str, effect: str) -> str:
        return f'  {options.get(key, key)}: {current[key]!r} (checkpoint: {saved[key]!r}){effect}'

    fixed = [k for k in changed if k in FIXED_ON_RESUME]
    if fixed and not args.override_resume:
        raise utils.UserInputError(
            f'{source} was written by a run with other settings that cannot change mid-run:\n'
            + '\n'.join(describe(k, '') for k in fixed)
            + '\nResume with the checkpoint\'s values, or pass --override-resume to apply the new ones from '
              f'epoch {start_epoch} on (another --opt or model starts from a fresh optimizer state).')
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
    utils.logger.warning(f'resuming {source}: flags that differ from the checkpoint\'s:\n' + '\n'.join(lines))
    return set(changed)


def resolve_resume(args: argparse.Namespace, output_dir: Optional[Path]) -> str:
    """The checkpoint to start from: --resume (a folder means its checkpoint.pth), else
    --output_dir/checkpoint.pth when it exists (restarting a training command resumes it), else ''."""
    if args.resume:
        if not Path(args.resume).is_dir():
            return args.resume
        candidate = Path(args.resume) / 'checkpoint.pth'
        if candidate.is_file():
            return str(candidate)
        found = sorted(p.name for p in Path(args.resume).glob('*.pth'))
        raise utils.UserInputError(f'--resume {args.resume} is a folder without checkpoint.pth'
                                   + (f'; it holds {found[:5]}: pass one of them' if found else ''))
    if output_dir is not None and (output_dir / 'checkpoint.pth').exists():
        return str(output_dir / 'checkpoint.pth')
    return ''


def load_finetune_weights(model: torch.nn.Module, path: str, use_ema: Optional[bool]) -> None:
    """DeiT's --finetune: the weights of `path` (by the package's checkpoint policy: EMA weights when present,
    unless --no-use-ema) into a model for another class count and/or input size. Classifier tensors of another
    shape keep their fresh initialisation and buffers the checkpoint lacks keep the model's; anything else that
    does not fit is an error that names the tensors. What was not loaded is logged."""
    checkpoint = utils.load_checkpoint_file(path)
    try:
        state_dict, chosen = checkpoint_io.select_state_dict(checkpoint, use_ema)
    except ValueError as e:
        raise utils.UserInputError(f'--finetune {path}: {e}') from None
    utils.check_finite(state_dict, f'--finetune {path}', f'{chosen!r} weights')
    classifier = model.pretrained_cfg.get('classifier', 'head') + '.'
    model_state = model.state_dict()
    buffers = {name for name, _ in model.named_buffers()}
    shape_errors, missing, unexpected = checkpoint_io.compare_state_dict(state_dict, model)
    reinitialised = sorted(k for k in state_dict if k in model_state and k.startswith(classifier)
                           and state_dict[k].shape != model_state[k].shape)
    shape_errors = [e for e in shape_errors if e.split(':')[0] not in reinitialised]
    kept_buffers = [k for k in missing if k in buffers]
    missing = [k for k in missing if k not in buffers]
    if shape_errors or missing or unexpected:
        raise utils.UserInputError(
            f'--finetune {path} does not fit --model {model.pretrained_cfg["architecture"]} (only the classifier '
            f'{classifier[:-1]} may differ):\n{checkpoint_io.describe_mismatch(shape_errors, missing, unexpected)}')
    model.load_state_dict({k: v for k, v in state_dict.items() if k not in reinitialised}, strict=False)
    loaded = len(state_dict) - len(reinitialised)
    utils.logger.info(f'Fine-tuning from the {chosen!r} weights of {path}: loaded {loaded} tensors; not loaded: '
                      f'{reinitialised or "none"} (re-initialised: another class count)'
                      + (f', {kept_buffers} (the model\'s buffers)' if kept_buffers else ''))


def mid_epoch_position(checkpoint: dict, args: argparse.Namespace, source: str) -> Tuple[int, Optional[dict]]:
    """(optimizer steps already done in epoch `args.start_epoch`, this rank's meters of that epoch) of a
    checkpoint written mid-epoch; (0, None) for one written at an epoch end. The position means the same
    samples only for the same number of processes, batch size and accumulation."""
    position = checkpoint.get('mid_epoch')
    if not position:
        return 0, None
    layout = {'world_size': utils.get_world_size(), 'batch_size': args.batch_size,
              'grad_accum_steps': args.grad_accum_steps}
    if args.dataset == 'wds':  # which shards a loader worker reads depends on their number
        layout['num_workers'] = args.num_workers
    saved = {key: position.get(key) for key in layout}
    if saved != layout:
        raise utils.UserInputError(
            f'{source} was written in the middle of epoch {position["epoch"]} by a run with {saved}; this run has '
            f'{layout}. Resume it with the same processes, --batch-size and --grad-accum-steps (shards: and '
            f'--num_workers), or from a checkpoint written at an epoch end.')
    return position['step'], position['meters'][utils.get_rank()]


def gather_from_ranks(value):
    """Every rank's `value`, in rank order (a collective when distributed)."""
    if not utils.is_dist_avail_and_initialized():
        return [value]
    values = [None] * utils.get_world_size()
    dist.all_gather_object(values, value)
    return values


def requeue_slurm_job() -> None:
    """`scontrol requeue $SLURM_JOB_ID`: Slurm starts the same job script again, which resumes."""
    job = os.environ.get('SLURM_JOB_ID')
    if job is None:
        utils.logger.warning('--requeue: not a Slurm job (no SLURM_JOB_ID), nothing requeued')
        return
    result = subprocess.run(['scontrol', 'requeue', job], capture_output=True, text=True)
    if result.returncode:
        utils.logger.warning(f'scontrol requeue {job} failed: {result.stderr.strip()}')
    else:
        utils.logger.info(f'requeued Slurm job {job}')


def mixup_active(args) -> bool:
    return args.mixup > 0 or args.cutmix > 0. or args.cutmix_minmax is not None


def validate_args(args) -> None:
    if args.batch_size < 1:
        raise utils.UserInputError('--batch-size must be at least 1')
    if args.grad_accum_steps < 1:
        raise utils.UserInputError('--grad-accum-steps must be at least 1')
    if args.checkpoint_interval < 0:
        raise utils.UserInputError('--checkpoint-interval must be 0 (off) or a number of steps')
    if mixup_active(args) and args.mixup_mode == 'batch' and args.batch_size % 2:
        raise utils.UserInputError(f'--batch-size {args.batch_size} must be even for batch-mode mixup/cutmix')


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """The command line, with the chosen model's family recipe (`scalablevit.train_recipe`) as defaults under
    explicit flags, and its data settings from the pretrained cfg."""
    parser = argparse.ArgumentParser('main.py', parents=[get_args_parser()])
    parser.set_defaults(**scalablevit.train_recipe(parser.parse_known_args(argv)[0].model))
    args = parser.parse_args(argv)
    resolve_data_args(args)
    return args


def main(args) -> None:
    resolve_data_args(args)
    validate_args(args)
    device = utils.init_distributed(args)
    utils.logger.info(str(args))
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True
    amp_dtype = AMP_DTYPES[args.amp_dtype] if device.type == 'cuda' else None
    random_seed(args.seed, utils.get_rank())
    evaluating = args.eval or args.throughput
    output_dir = Path(args.output_dir) if args.output_dir else None
    if output_dir is not None and not evaluating and utils.is_main_process():
        # one run per folder, checked writable before anything is computed (stale temporaries go here too)
        utils.lock_output_dir(output_dir)
    resume = resolve_resume(args, output_dir)
    if args.eval and not resume:
        raise utils.UserInputError('--eval needs the checkpoint to evaluate: pass --resume CHECKPOINT (or an '
                                   '--output_dir holding checkpoint.pth)')

    build = build_shard_split if args.dataset == 'wds' else build_dataset
    dataset_val, num_classes = build(is_train=False, args=args)
    dataset_train = None
    if not (args.eval or args.throughput):
        dataset_train, train_classes = build(is_train=True, args=args)
        if dataset_train.classes != dataset_val.classes:
            only_train = sorted(set(dataset_train.classes) - set(dataset_val.classes))[:5]
            only_val = sorted(set(dataset_val.classes) - set(dataset_train.classes))[:5]
            raise utils.UserInputError(f'train/ and val/ class folders differ (only in train: {only_train}; '
                             f'only in val: {only_val}); both need the same classes.')
        if len(dataset_train) < args.batch_size * utils.get_world_size():
            raise utils.UserInputError(f'the training set has {len(dataset_train)} images, fewer than one global batch '
                             f'({args.batch_size} x {utils.get_world_size()}); lower --batch-size.')
        sampler_train, loader_train = build_train_loader(args, dataset_train)
    # DeiT evaluates with 1.5x the training batch; throughput is measured at --batch-size itself
    loader_val = build_val_loader(args, dataset_val, args.batch_size if args.throughput else int(1.5 * args.batch_size))

    mixup_fn = None
    if mixup_active(args):
        mixup_fn = StepMixup(
            mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
            prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
            label_smoothing=args.smoothing, num_classes=num_classes)

    utils.logger.info(f'Creating model: {args.model}')
    model = create_classifier(args, num_classes).to(device)
    if args.finetune and not resume:
        load_finetune_weights(model, args.finetune, args.use_ema)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    model_without_ddp = model
    n_parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    utils.logger.info(f'number of params: {n_parameters}')
    model_ema = None
    if args.model_ema:
        model_ema = ModelEmaV3(model, decay=args.model_ema_decay,
                               device=torch.device('cpu') if args.model_ema_force_cpu else None)
    if args.distributed:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[args.local_rank] if device.type == 'cuda' else None)
        model_without_ddp = model.module
    ddp_model = model if args.distributed else None
    if args.torchcompile:
        model = torch.compile(model, backend=args.torchcompile)  # after DDP, as timm

    global_batch = args.batch_size * utils.get_world_size() * args.grad_accum_steps
    utils.logger.info(f'lr {args.lr:g} per 512 images x global batch {global_batch} ({args.batch_size} per process x '
                      f'{utils.get_world_size()} processes x {args.grad_accum_steps} accumulation steps) = '
                      f'{args.lr * global_batch / 512.0:g}')
    args.lr = args.lr * global_batch / 512.0
    optimizer = create_optimizer_v2(
        model_without_ddp, opt=args.opt, lr=args.lr, weight_decay=args.weight_decay, momentum=args.momentum,
        layer_decay=args.layer_decay,
        **({'eps': args.opt_eps} if args.opt_eps is not None else {}),
        **({'betas': tuple(args.opt_betas)} if args.opt_betas else {}))
    loss_scaler = NativeScaler() if amp_dtype == torch.float16 else None
    lr_scheduler, _ = create_scheduler_v2(
        optimizer, sched=args.sched, num_epochs=args.epochs, decay_epochs=args.decay_epochs,
        cooldown_epochs=args.cooldown_epochs, patience_epochs=args.patience_epochs, decay_rate=args.decay_rate,
        min_lr=args.min_lr, warmup_lr=args.warmup_lr, warmup_epochs=args.warmup_epochs, noise=args.lr_noise,
        noise_pct=args.lr_noise_pct, noise_std=args.lr_noise_std, noise_seed=args.seed)
    if mixup_fn is not None:
        criterion = SoftTargetCrossEntropy()
    elif args.smoothing > 0.:
        criterion = LabelSmoothingCrossEntropy(smoothing=args.smoothing)
    else:
        criterion = torch.nn.CrossEntropyLoss()

    max_accuracy = 0.0
    start_step, epoch_meters = 0, None
    if resume:
        checkpoint = utils.load_checkpoint_file(resume)
        resuming = not evaluating and all(k in checkpoint for k in ('optimizer', 'lr_scheduler', 'epoch'))
        changes = resume_changes(args, checkpoint, resume, checkpoint['epoch'] + 1) if resuming else set()
        # evaluation follows the checkpoint policy (EMA when present, unless --no-use-ema); resuming training
        # restores the raw weights here and the EMA weights into the EMA
        chosen = utils.load_model_weights(model_without_ddp, checkpoint, resume,
                                          use_ema=args.use_ema if evaluating else False)
        utils.logger.info(f'Loaded the {chosen!r} weights of {resume}')
        if resuming:
            if model_ema is not None and checkpoint.get('model_ema') is None:
                utils.logger.warning(f'{resume} has no EMA weights: the EMA starts from its model weights')
                model_ema.set(model_without_ddp)
            args.start_epoch, max_accuracy = restore_training_state(
                checkpoint, resume, optimizer, lr_scheduler, model_ema, loss_scaler,
                keep_optimizer_state=not changes & set(OPTIMIZER_TYPE_FLAGS),
                keep_schedule=not changes & set(SCHEDULE_FLAGS))
            start_step, epoch_meters = mid_epoch_position(checkpoint, args, resume)
            utils.logger.info(f'Resuming training at epoch {args.start_epoch}'
                              + (f', step {start_step}' if start_step else ''))

    if args.throughput:
        throughput(loader_val, model_without_ddp, device, amp_dtype, args.throughput_warmup, args.throughput_iters)
        return
    if args.eval:
        test_stats = evaluate(loader_val, model, device, amp_dtype, args.channels_last)
        utils.logger.info(f'Accuracy of the network on the {len(dataset_val)} test images: '
                          f'{test_stats["acc1"]:.1f}%')
        return

    if output_dir is not None and utils.is_main_process():
        utils.truncate_log(output_dir, args.start_epoch)
    def training_checkpoint(last_finished_epoch: int, mid_epoch: Optional[dict] = None) -> Optional[dict]:
        """The checkpoint dict on rank 0 (None elsewhere), with every rank's RNG states (and, mid-epoch, every
        rank's meters): a collective, called by every rank at the same point."""
        rng_states = gather_from_ranks(utils.capture_rng_state())
        if mid_epoch is not None:
            mid_epoch = dict(mid_epoch, meters=gather_from_ranks(mid_epoch['meters']))
        if output_dir is None or not utils.is_main_process():
            return None
        return {
            'model': model_without_ddp.state_dict(),
            'optimizer': optimizer.state_dict(),
            'lr_scheduler': lr_scheduler.state_dict(),
            'epoch': last_finished_epoch,
            'model_ema': get_state_dict(model_ema) if model_ema is not None else None,
            'scaler': loss_scaler.state_dict() if loss_scaler is not None else None,
            'max_accuracy': max_accuracy,
            'rng': rng_states,
            'mid_epoch': mid_epoch,
            'args': vars(args),
        }

    def save_mid_epoch(epoch: int, steps_done: int, meters: dict) -> None:
        """checkpoint.pth after `steps_done` optimizer steps of `epoch` (the ranks wait for the write)."""
        checkpoint = training_checkpoint(epoch - 1, dict(
            epoch=epoch, step=steps_done, meters=meters, world_size=utils.get_world_size(),
            batch_size=args.batch_size, grad_accum_steps=args.grad_accum_steps, num_workers=args.num_workers))
        if checkpoint is not None:
            utils.atomic_save(checkpoint, output_dir / 'checkpoint.pth')
            utils.logger.info(f'saved {output_dir / "checkpoint.pth"} at epoch {epoch}, step {steps_done}')
        if args.distributed:
            dist.barrier()

    def stop_after_save(where: str) -> None:
        """Once checkpoint.pth holds the position: requeue the Slurm job (--requeue, rank 0), then every rank
        stops (exit status EXIT_STOPPED)."""
        if output_dir is None:
            utils.logger.warning('stopping on a signal without --output_dir: nothing was saved')
        if args.requeue and utils.is_main_process():
            requeue_slurm_job()
        if args.distributed:
            dist.barrier()  # no rank exits (which makes srun --kill-on-bad-exit end the others) before the requeue
        raise TrainingStopped(f'stopped by signal {stop.signal or "(on another rank)"} {where}; rerun the same '
                              f'command to resume from {output_dir / "checkpoint.pth" if output_dir else "nothing"}')

    utils.logger.info(f'Start training for {args.epochs} epochs')
    start_time = time.time()
    stop = StopRequest()
    try:
        for epoch in range(args.start_epoch, args.epochs):
            first_step = start_step if epoch == args.start_epoch else 0
            sampler_train.set_epoch(epoch, start=first_step * args.grad_accum_steps * args.batch_size)
            train_stats, stopped = train_one_epoch(
                model, criterion, loader_train, optimizer, device, epoch, loss_scaler, amp_dtype,
                args.clip_grad or None, model_ema, mixup_fn, accum_steps=args.grad_accum_steps,
                start_step=first_step, meters=epoch_meters if first_step else None,
                channels_last=args.channels_last, stop=stop, checkpoint_interval=args.checkpoint_interval,
                save=functools.partial(save_mid_epoch, epoch) if output_dir is not None else None,
                ddp_model=ddp_model)
            if stopped:
                stop_after_save(f'in epoch {epoch}')
            lr_scheduler.step(epoch + 1)
            test_stats = evaluate(loader_val, model, device, amp_dtype, args.channels_last)
            utils.logger.info(f'Accuracy of the network on the {len(dataset_val)} test images: '
                              f'{test_stats["acc1"]:.1f}%')
            is_best = test_stats['acc1'] > max_accuracy
            max_accuracy = max(max_accuracy, test_stats['acc1'])
            utils.logger.info(f'Max accuracy: {max_accuracy:.2f}%')
            if dataset_train.num_skipped:
                utils.logger.info(f'skipped {dataset_train.num_skipped} unreadable training images so far')

            # Every rank's RNG state goes into the checkpoint, so a resumed run continues each stream exactly.
            checkpoint = training_checkpoint(epoch)
            if checkpoint is not None:
                utils.append_log(output_dir, {**{f'train_{k}': v for k, v in train_stats.items()},
                                              **{f'test_{k}': v for k, v in test_stats.items()},
                                              'epoch': epoch, 'n_parameters': n_parameters})
                # best first: a kill between the two writes re-runs this epoch, which rewrites the same best
                if is_best:
                    utils.atomic_save(checkpoint, output_dir / 'checkpoint_best.pth')
                utils.atomic_save(checkpoint, output_dir / 'checkpoint.pth')
            if epoch + 1 < args.epochs and stop.agreed():
                stop_after_save(f'after epoch {epoch}')
    finally:
        stop.close()

    total_time = datetime.timedelta(seconds=int(time.time() - start_time))
    utils.logger.info(f'Training time {total_time}')


if __name__ == '__main__':
    arguments = parse_args()
    status = 0
    try:
        main(arguments)
    except (utils.UserInputError, UnreadableImageError) as error:
        print(f'error: {error}', file=sys.stderr, flush=True)
        status = 2
    except NonFiniteLossError as error:
        print(f'error: {error}', file=sys.stderr, flush=True)
        status = 3
    except TrainingStopped as stopped:
        print(str(stopped), file=sys.stderr, flush=True)
        status = EXIT_STOPPED
    finally:
        close_process_group()  # after the except blocks, which free the traceback and the model in its frames
    sys.exit(status)
