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
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import timm
import torch
from timm.data import resolve_data_config
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3, NativeScaler, ParseKwargs, random_seed

import scalablevit  # registers the models in timm
from scalablevit import checkpoint as checkpoint_io
from scalablevit.distributed import close_process_group
from scalablevit.preemption import EXIT_STOPPED, TrainingStopped, ignore_stop_signals

from distributed_setup import get_rank, get_world_size, init_distributed, is_main_process
from engine import NonFiniteLossError, StepMixup, TrainStep, evaluate, throughput, train_one_epoch
from errors import UserInputError
from image_data import UnreadableImageError, build_dataset
from run_files import load_model_weights, lock_output_dir
from run_log import logger, truncate_log
from run_state import TrainingRun, resolve_resume
from sampler import EpochOrder, SeededSamples
from shards import ShardSplit, build_shard_split

AMP_DTYPES = {'float16': torch.float16, 'bfloat16': torch.bfloat16, 'none': None}
REPEATED_AUG_COPIES = 3  # DeiT's repeated augmentation: each image three times per epoch, on three ranks


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
    parser.add_argument('--amp', action=argparse.BooleanOptionalAction, default=None,
                        help='mixed precision (torch.autocast) in --amp-dtype; default: on for CUDA, off elsewhere')
    parser.add_argument('--amp-dtype', default='bfloat16', choices=sorted(AMP_DTYPES),
                        help='the autocast dtype: bfloat16, or float16 with the loss scaler; none disables AMP')

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
    parser.add_argument('--log-tensorboard', action='store_true',
                        help='also write the epoch scalars as TensorBoard events to --output_dir/tensorboard')
    return parser


def build_train_loader(args, dataset) -> tuple:
    """DeiT's sampling (repeated augmentation across ranks when distributed, plain shuffling otherwise) in an
    order fixed by (seed, epoch) and independent of the number of processes, with per-sample augmentation seeds
    (`sampler.py`), so that an epoch can resume at any step on any layout. The loader's own seed comes from a
    private generator, not the global stream. Returns (what `set_epoch` positions, the loader)."""
    world_size, rank = get_world_size(), get_rank()
    if isinstance(dataset, ShardSplit):  # shards: the rank's batches come from the dataset itself
        batches = dataset.loader_dataset(args.batch_size, args.num_workers, rank, world_size, train=True,
                                         seed=args.seed)
        return batches, torch.utils.data.DataLoader(
            batches, batch_size=None, num_workers=args.num_workers, pin_memory=args.pin_mem,
            worker_init_fn=ignore_stop_signals, generator=torch.Generator().manual_seed(args.seed))
    repeats = REPEATED_AUG_COPIES if args.repeated_aug and world_size > 1 else 1
    sampler = EpochOrder(len(dataset), args.batch_size, args.seed, rank, world_size, repeats)
    loader = torch.utils.data.DataLoader(
        SeededSamples(dataset), sampler=sampler, batch_size=args.batch_size, num_workers=args.num_workers,
        pin_memory=args.pin_mem, drop_last=True, worker_init_fn=ignore_stop_signals,
        generator=torch.Generator().manual_seed(args.seed))
    return sampler, loader


def build_val_loader(args, dataset, batch_size: int) -> torch.utils.data.DataLoader:
    """Every validation sample once (with --dist-eval: split across ranks). Its workers ignore the stop
    signals too: a signal during the evaluation lets it finish, and the epoch's checkpoint follows."""
    if isinstance(dataset, ShardSplit):  # every sample once: all shards, or with --dist-eval the rank's share
        split_ranks = args.distributed and args.dist_eval
        batches = dataset.loader_dataset(batch_size, args.num_workers, get_rank() if split_ranks else 0,
                                         get_world_size() if split_ranks else 1, train=False)
        return torch.utils.data.DataLoader(batches, batch_size=None, num_workers=args.num_workers,
                                           pin_memory=args.pin_mem, worker_init_fn=ignore_stop_signals)
    if args.distributed and args.dist_eval:
        sampler = torch.utils.data.DistributedSampler(
            dataset, num_replicas=get_world_size(), rank=get_rank(), shuffle=False)
    else:
        sampler = torch.utils.data.SequentialSampler(dataset)
    return torch.utils.data.DataLoader(
        dataset, sampler=sampler, batch_size=batch_size, num_workers=args.num_workers,
        pin_memory=args.pin_mem, drop_last=False, worker_init_fn=ignore_stop_signals)


def tensorboard_writer(output_dir: Path):
    """A TensorBoard SummaryWriter on --output_dir/tensorboard (`--log-tensorboard`)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserInputError('--log-tensorboard needs the tensorboard package: pip install -r '
                             'requirements.txt') from None
    return SummaryWriter(str(output_dir / 'tensorboard'))


def create_classifier(args, num_classes: int) -> torch.nn.Module:
    check_model_name(args.model)
    # drop_path None: the model's own default (timm's create_model drops None arguments)
    return timm.create_model(args.model, pretrained=False, num_classes=num_classes, drop_rate=args.drop,
                             drop_path_rate=args.drop_path, **args.model_kwargs)


def check_model_name(name: str) -> None:
    if not timm.is_model(name):
        models = [model for family in scalablevit.FAMILIES for model in family.models()]
        raise UserInputError(f'unknown --model {name}; this package\'s models: {models} (any timm model name '
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


def load_finetune_weights(model: torch.nn.Module, path: str, use_ema: Optional[bool]) -> None:
    """DeiT's --finetune: the weights of `path` (by the package's checkpoint policy: EMA weights when present,
    unless --no-use-ema) into a model for another class count and/or input size. Classifier tensors of another
    shape keep their fresh initialisation and buffers the checkpoint lacks keep the model's; anything else that
    does not fit is an error that names the tensors. What was not loaded is logged."""
    checkpoint = checkpoint_io.load_checkpoint_file(path)
    try:
        state_dict, chosen = checkpoint_io.select_state_dict(checkpoint, use_ema)
    except ValueError as e:
        raise checkpoint_io.CheckpointError(f'--finetune {path}: {e}') from None
    checkpoint_io.check_finite(state_dict, f'--finetune {path}', f'{chosen!r} weights')
    classifier = model.pretrained_cfg.get('classifier', 'head') + '.'
    mismatch = checkpoint_io.StateDictMismatch.compare(state_dict, model, reinitialise=classifier,
                                                       keep_model_buffers=True)
    if mismatch:
        raise checkpoint_io.CheckpointError(
            f'--finetune {path} does not fit --model {model.pretrained_cfg["architecture"]} (only the classifier '
            f'{classifier[:-1]} may differ):\n{mismatch}')
    model.load_state_dict(mismatch.loadable(state_dict), strict=False)
    loaded = len(state_dict) - len(mismatch.reinitialised)
    logger.info(f'Fine-tuning from the {chosen!r} weights of {path}: loaded {loaded} tensors; not loaded: '
                f'{mismatch.reinitialised or "none"} (re-initialised: another class count)'
                + (f', {mismatch.kept_buffers} (the model\'s buffers)' if mismatch.kept_buffers else ''))


def mixup_active(args) -> bool:
    return args.mixup > 0 or args.cutmix > 0. or args.cutmix_minmax is not None


def validate_args(args) -> None:
    if args.batch_size < 1:
        raise UserInputError('--batch-size must be at least 1')
    if args.grad_accum_steps < 1:
        raise UserInputError('--grad-accum-steps must be at least 1')
    if args.checkpoint_interval < 0:
        raise UserInputError('--checkpoint-interval must be 0 (off) or a number of steps')
    if mixup_active(args) and args.batch_size % 2:  # timm's Mixup pairs each sample with its mirror
        raise UserInputError(f'--batch-size {args.batch_size} must be even for mixup/cutmix (any '
                             f'--mixup-mode); pass an even --batch-size, or --mixup 0 --cutmix 0')


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """The command line, with the chosen model's family recipe (`scalablevit.train_recipe`) as defaults under
    explicit flags, and its data settings from the pretrained cfg."""
    parser = argparse.ArgumentParser('main.py', parents=[get_args_parser()])
    parser.set_defaults(**scalablevit.train_recipe(parser.parse_known_args(argv)[0].model))
    args = parser.parse_args(argv)
    resolve_data_args(args)
    return args


def amp_settings(args, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype (None: float32): --amp on CUDA by default, on request elsewhere (CPU autocast runs
    bfloat16 and float16; float16 trains with the loss scaler)."""
    enabled = args.amp if args.amp is not None else device.type == 'cuda'
    return AMP_DTYPES[args.amp_dtype] if enabled else None


def log_tensorboard(writer, stats: Dict[str, float], epoch: int) -> None:
    """The epoch's scalars under train/ and test/ (`--log-tensorboard`), flushed so a watcher sees them now."""
    for name, value in stats.items():
        if name != 'epoch' and isinstance(value, (int, float)):
            writer.add_scalar(name.replace('_', '/', 1), value, epoch)
    writer.flush()


def main(args) -> None:
    resolve_data_args(args)
    validate_args(args)
    device = init_distributed(args)
    logger.info(str(args))
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True
    amp_dtype = amp_settings(args, device)
    random_seed(args.seed, get_rank())
    evaluating = args.eval or args.throughput
    output_dir = Path(args.output_dir) if args.output_dir else None
    if output_dir is not None and not evaluating and is_main_process():
        # one run per folder, checked writable before anything is computed (stale temporaries go here too)
        lock_output_dir(output_dir)
    resume = resolve_resume(args, output_dir, training=not evaluating)
    if args.eval and not resume:
        raise UserInputError('--eval needs the checkpoint to evaluate: pass --resume CHECKPOINT (or an '
                             '--output_dir holding checkpoint.pth)')

    build = build_shard_split if args.dataset == 'wds' else build_dataset
    dataset_val, num_classes = build(is_train=False, args=args)
    dataset_train = None
    if not evaluating:
        dataset_train, train_classes = build(is_train=True, args=args)
        if dataset_train.classes != dataset_val.classes:
            only_train = sorted(set(dataset_train.classes) - set(dataset_val.classes))[:5]
            only_val = sorted(set(dataset_val.classes) - set(dataset_train.classes))[:5]
            raise UserInputError(f'train/ and val/ class folders differ (only in train: {only_train}; '
                                 f'only in val: {only_val}); both need the same classes.')
        if len(dataset_train) < args.batch_size * get_world_size():
            raise UserInputError(f'the training set has {len(dataset_train)} images, fewer than one global '
                                 f'batch ({args.batch_size} x {get_world_size()}); lower --batch-size.')
        sampler_train, loader_train = build_train_loader(args, dataset_train)
    # DeiT evaluates with 1.5x the training batch; throughput is measured at --batch-size itself
    loader_val = build_val_loader(args, dataset_val, args.batch_size if args.throughput else int(1.5 * args.batch_size))

    mixup_fn = None
    if mixup_active(args):
        mixup_fn = StepMixup(
            mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
            prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
            label_smoothing=args.smoothing, num_classes=num_classes)

    logger.info(f'Creating model: {args.model}')
    model = create_classifier(args, num_classes).to(device)
    if args.finetune and not resume:
        load_finetune_weights(model, args.finetune, args.use_ema)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    model_without_ddp = model
    n_parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info(f'number of params: {n_parameters}')
    if args.distributed:  # broadcasts rank 0's initial weights to every rank
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[args.local_rank] if device.type == 'cuda' else None)
        model_without_ddp = model.module
    model_ema = None
    if args.model_ema:  # after DDP's broadcast: every rank's EMA starts from the same weights
        model_ema = ModelEmaV3(model_without_ddp, decay=args.model_ema_decay,
                               device=torch.device('cpu') if args.model_ema_force_cpu else None)
    ddp_model = model if args.distributed else None
    if args.torchcompile:
        model = torch.compile(model, backend=args.torchcompile)  # after DDP, as timm

    global_batch = args.batch_size * get_world_size() * args.grad_accum_steps
    logger.info(f'lr {args.lr:g} per 512 images x global batch {global_batch} ({args.batch_size} per process x '
                f'{get_world_size()} processes x {args.grad_accum_steps} accumulation steps) = '
                f'{args.lr * global_batch / 512.0:g}')
    args.lr = args.lr * global_batch / 512.0
    optimizer = create_optimizer_v2(
        model_without_ddp, opt=args.opt, lr=args.lr, weight_decay=args.weight_decay, momentum=args.momentum,
        layer_decay=args.layer_decay,
        **({'eps': args.opt_eps} if args.opt_eps is not None else {}),
        **({'betas': tuple(args.opt_betas)} if args.opt_betas else {}))
    loss_scaler = NativeScaler(device=device.type) if amp_dtype == torch.float16 else None
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

    run = TrainingRun(args, output_dir, model_without_ddp, optimizer, lr_scheduler, model_ema, loss_scaler,
                      flag_names={action.dest: action.option_strings[0] for action in get_args_parser()._actions
                                  if action.option_strings})
    if resume:
        checkpoint = checkpoint_io.load_checkpoint_file(resume)
        if not evaluating and all(k in checkpoint for k in ('optimizer', 'lr_scheduler', 'epoch')):
            run.resume(checkpoint, resume)  # the raw weights into the model, the EMA weights into the EMA
        else:  # the checkpoint policy: EMA weights when present, unless --no-use-ema
            chosen = load_model_weights(model_without_ddp, checkpoint, resume, use_ema=args.use_ema)
            logger.info(f'Loaded the {chosen!r} weights of {resume}')

    if args.throughput:
        throughput(loader_val, model_without_ddp, device, amp_dtype, args.throughput_warmup, args.throughput_iters)
        return
    if args.eval:
        test_stats = evaluate(loader_val, model, device, amp_dtype, args.channels_last)
        logger.info(f'Accuracy of the network on the {len(dataset_val)} test images: '
                    f'{test_stats["acc1"]:.1f}%')
        return

    if output_dir is not None and is_main_process():
        truncate_log(output_dir, run.start_epoch)
    writer = None
    if args.log_tensorboard and output_dir is not None and is_main_process():
        writer = tensorboard_writer(output_dir)
    train_step = TrainStep(criterion, optimizer, device, args.grad_accum_steps, loss_scaler, amp_dtype,
                           args.clip_grad or None, model_ema, mixup_fn, args.channels_last, ddp_model)
    logger.info(f'Start training for {args.epochs} epochs')
    start_time = time.time()
    with run:
        for epoch in range(run.start_epoch, args.epochs):
            first_step, meters = run.begin_epoch(epoch, sampler_train)
            train_stats, stopped = train_one_epoch(
                model, train_step, loader_train, epoch, run, start_step=first_step, meters=meters,
                checkpoint_interval=args.checkpoint_interval)
            if stopped:
                run.stop(f'in epoch {epoch}')
            test_stats = evaluate(loader_val, model, device, amp_dtype, args.channels_last)
            logger.info(f'Accuracy of the network on the {len(dataset_val)} test images: '
                        f'{test_stats["acc1"]:.1f}%')
            stats = {**{f'train_{k}': v for k, v in train_stats.items()},
                     **{f'test_{k}': v for k, v in test_stats.items()}}
            accuracy = test_stats['acc1']
            if model_ema is not None:  # rank by the weights --eval loads: the EMA's (timm ranks by it too)
                ema_stats = evaluate(loader_val, model_ema.module, device, amp_dtype, args.channels_last)
                logger.info(f'Accuracy of the EMA weights: {ema_stats["acc1"]:.1f}%')
                stats.update({f'test_ema_{k}': v for k, v in ema_stats.items()})
                accuracy = ema_stats['acc1']
            lr_scheduler.step(epoch + 1, accuracy)  # the metric: for --sched plateau
            run.save_epoch(epoch, {**stats, 'epoch': epoch, 'n_parameters': n_parameters}, accuracy)
            logger.info(f'Max accuracy{" (EMA weights)" if model_ema is not None else ""}: '
                        f'{run.max_accuracy:.2f}%')
            if dataset_train.num_skipped:
                logger.info(f'skipped {dataset_train.num_skipped} unreadable training images so far')
            if writer is not None:
                log_tensorboard(writer, stats, epoch)
            if epoch + 1 < args.epochs and run.stop_agreed_now():
                run.stop(f'after epoch {epoch}')
    if writer is not None:
        writer.close()

    total_time = datetime.timedelta(seconds=int(time.time() - start_time))
    logger.info(f'Training time {total_time}')


def cli(argv: Optional[List[str]] = None) -> int:
    """The command: run `main`, turn the errors that say what to fix (bad flags or data, a checkpoint that is
    missing, damaged or does not fit) into one `error:` line and an exit status (2: bad input, 3: NaN/inf,
    75: stopped on a signal, saved; rerun to resume): the one place they are caught."""
    arguments = parse_args(argv)
    status = 0
    try:
        main(arguments)
    except (UserInputError, UnreadableImageError, checkpoint_io.CheckpointError, FileNotFoundError) as error:
        print(f'error: {error}', file=sys.stderr, flush=True)  # FileNotFoundError: a named checkpoint
        status = 2
    except NonFiniteLossError as error:
        print(f'error: {error}', file=sys.stderr, flush=True)
        status = 3
    except TrainingStopped as stopped:
        ignore_stop_signals()  # srun --kill-on-bad-exit TERMs a rank still exiting after another exits 75
        print(str(stopped), file=sys.stderr, flush=True)
        status = EXIT_STOPPED
    finally:
        close_process_group()  # after the except blocks, which free the traceback and the model in its frames
    return status


if __name__ == '__main__':
    sys.exit(cli())
