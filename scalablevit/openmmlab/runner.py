"""Train/test drivers shared by `detection/` and `segmentation/`: mmengine's Runner behind the original
command lines (`train.py CONFIG [--resume]`, `test.py CONFIG CKPT [--eval METRICS]`).

Both stop with one error message (exit status 1) instead of a wrong result: a training run takes its work dir
for itself (`scalablevit.run_folder`), the heads' class counts and segmentation labels are checked against the
data and COCO annotation files are validated before pycocotools reads them (`checks.py`), and test.py refuses a
checkpoint that does not fit the config's model unless `--allow-mismatch`. For their runs the drivers install
the package's checkpoint policy in mmengine (`compat.use_checkpoint_policy`: atomic writes with digests, checked
reads; mmengine's own behaviour comes back when the driver returns). Training runs the preemptible loops
(`loops.py`): a stop signal (SIGTERM, SIGUSR1) ends the run with a checkpoint of the iteration it reached and exit
status 75 (`scalablevit.preemption.EXIT_STOPPED`), and `--resume` continues inside the epoch.
"""
import argparse
import functools
import logging
import os
import os.path as osp
import sys
from typing import Callable, List, Optional

from mmengine.config import Config, DictAction
from mmengine.device import is_cuda_available, is_mlu_available, is_musa_available, is_npu_available
from mmengine.logging import print_log
from mmengine.runner import Runner

from ..checkpoint import CheckpointError
from ..distributed import close_process_group, set_slurm_rendezvous
from ..preemption import EXIT_STOPPED, TrainingStopped, ignore_stop_signals
from ..run_folder import RunFolderError, lock_run_folder
from .checks import DataCheckError, checkpoint_mismatch, validate_annotation_files
from .compat import prepare_cpu_distributed, use_checkpoint_policy
from .loops import preemptible_train_cfg

LAUNCHERS = ['none', 'pytorch', 'slurm', 'mpi']


def _common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--work-dir', help='where logs and checkpoints go (default: ./work_dirs/CONFIG_NAME)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config entries, e.g. model.backbone.init_cfg=None')
    parser.add_argument('--launcher', choices=LAUNCHERS, default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def _load_config(args: argparse.Namespace) -> Config:
    if not osp.isfile(args.config):
        raise SystemExit(f'error: config {args.config} does not exist')
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    if args.launcher == 'slurm':
        set_slurm_rendezvous()  # srun's tasks: RANK, WORLD_SIZE, MASTER_ADDR, a per-job MASTER_PORT
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    prepare_cpu_distributed(cfg)
    hooks = list(cfg.get('custom_hooks') or [])
    if not any(isinstance(h, dict) and h.get('type') == 'DataCheckHook' for h in hooks):
        cfg.custom_hooks = hooks + [dict(type='DataCheckHook')]
    return cfg


def _driver(driver: Callable) -> Callable:
    """Run `driver` under the checkpoint policy; turn the errors that say what to fix (locked or unwritable
    work dir, data or checkpoint that does not fit) into one `error: ...` line and exit status 1, without a
    traceback, and a stop on a signal into its message and exit status 75; and close the process group mmengine
    opened once the run's objects are gone (`close_process_group`: else a finished run can abort at exit)."""
    @functools.wraps(driver)
    def run(*args, **kwargs):
        try:
            with use_checkpoint_policy():
                return driver(*args, **kwargs)
        except (RunFolderError, DataCheckError, CheckpointError) as error:
            message = f'error: {error}'  # the traceback, and the Runner in its frames, go with this block
        except TrainingStopped as stopped:
            ignore_stop_signals()  # srun --kill-on-bad-exit TERMs a rank still exiting after another exits 75
            print(stopped, file=sys.stderr, flush=True)
            message = EXIT_STOPPED
        finally:
            close_process_group()
        raise SystemExit(message)
    return run


def check_amp_device(cfg: Config) -> None:
    """mmengine's AmpOptimWrapper (what `--amp` selects) asserts a GPU, NPU, MLU or MUSA device when the Runner
    builds it, after the model: refuse it on other machines before any work, in one line. (Not CPU bfloat16
    autocast instead: mmcv's CPU NMS and RoIAlign kernels stop two-stage detectors under it; the models under CPU
    autocast are tested in tests/test_amp.py.)"""
    kind = (cfg.get('optim_wrapper') or {}).get('type')
    if getattr(kind, '__name__', str(kind)).rsplit('.', 1)[-1] != 'AmpOptimWrapper':
        return
    if not (is_cuda_available() or is_npu_available() or is_mlu_available() or is_musa_available()):
        raise SystemExit('error: --amp (mmengine\'s AmpOptimWrapper) needs a CUDA device (or NPU, MLU, MUSA) and '
                         'there is none here: train without --amp (the models under CPU autocast are tested by '
                         'tests/test_amp.py)')


def add_tensorboard(cfg: Config) -> None:
    """Add mmengine's TensorboardVisBackend to the config's visualizer (once)."""
    visualizer = cfg.get('visualizer')
    if visualizer is None:
        raise SystemExit('error: --tensorboard needs a `visualizer` in the config (the OpenMMLab default runtimes '
                         'define one)')
    backends = list(visualizer.get('vis_backends') or [])
    if not any(backend.get('type') == 'TensorboardVisBackend' for backend in backends):
        visualizer.vis_backends = backends + [dict(type='TensorboardVisBackend')]


@_driver
def train(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description='Train a model from a config')
    parser.add_argument('config', help='config file')
    parser.add_argument('--amp', action='store_true', help='automatic mixed precision')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the learning rate by (total batch size / the config\'s base_batch_size)')
    parser.add_argument('--resume', nargs='?', const='auto', default=None,
                        help='resume from CHECKPOINT, or from the latest checkpoint in the work dir if omitted '
                             '(none there: start afresh), continuing inside the epoch where a stop left it')
    parser.add_argument('--requeue', action='store_true',
                        help='under Slurm: after a stop signal (SIGTERM, SIGUSR1) has been saved, requeue the job '
                             '(scontrol requeue $SLURM_JOB_ID); its script should pass --resume')
    parser.add_argument('--tensorboard', action='store_true',
                        help='also write the logged scalars as TensorBoard event files (mmengine\'s '
                             'TensorboardVisBackend, under WORK_DIR/TIMESTAMP/vis_data)')
    _common_arguments(parser)
    args = parser.parse_args(argv)
    cfg = _load_config(args)
    if args.amp:
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.loss_scale = 'dynamic'
    check_amp_device(cfg)
    if args.auto_scale_lr:
        if 'base_batch_size' not in cfg.get('auto_scale_lr', {}):
            raise SystemExit('error: --auto-scale-lr needs auto_scale_lr.base_batch_size in the config')
        cfg.auto_scale_lr.enable = True
    if cfg.get('train_cfg'):
        cfg.train_cfg = preemptible_train_cfg(cfg.train_cfg, requeue=args.requeue)
    if args.tensorboard:
        add_tensorboard(cfg)
    if args.resume == 'auto':
        cfg.resume, cfg.load_from = True, None
    elif args.resume is not None:
        cfg.resume, cfg.load_from = True, args.resume
    if int(os.environ.get('RANK', '0')) == 0:
        lock_run_folder(cfg.work_dir)  # one run per work dir: held until this process ends
        # once, not on every rank (COCO's json is ~450 MB): the launchers stop the other ranks when rank 0 exits
        validate_annotation_files(cfg, ('train', 'val'))
    Runner.from_cfg(cfg).train()


@_driver
def test(
        argv: Optional[List[str]] = None,
        add_arguments: Optional[Callable[[argparse.ArgumentParser], None]] = None,
        adjust_config: Optional[Callable[[Config, argparse.Namespace], None]] = None,
        after_build: Optional[Callable[[Runner, argparse.Namespace], None]] = None,
) -> dict:
    """Evaluate CHECKPOINT with the config's test loop; the hooks add task-specific options
    (`--eval` metric names, test-time augmentation, result dumps). A checkpoint whose weights do not fit the
    config's model exactly is refused with the mismatch list unless `--allow-mismatch`."""
    parser = argparse.ArgumentParser(description='Test (and evaluate) a checkpoint')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--allow-mismatch', action='store_true',
                        help='evaluate even when the checkpoint lacks weights of the model, has others or has other '
                             'shapes (those weights stay as initialised): a warning instead of an error')
    _common_arguments(parser)
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args(argv)
    if not osp.isfile(args.checkpoint):
        raise SystemExit(f'error: checkpoint {args.checkpoint} does not exist')
    cfg = _load_config(args)
    cfg.load_from = args.checkpoint
    if adjust_config is not None:
        adjust_config(cfg, args)
    if int(os.environ.get('RANK', '0')) == 0:
        validate_annotation_files(cfg, ('test',))
    runner = Runner.from_cfg(cfg)
    mismatch = checkpoint_mismatch(runner.model, args.checkpoint)
    if mismatch and not args.allow_mismatch:
        raise SystemExit(f'error: checkpoint {args.checkpoint} does not fit the model of {args.config} (another '
                         f'config\'s or another task\'s checkpoint?); pass --allow-mismatch to evaluate anyway:\n'
                         f'{mismatch}')
    if mismatch:
        print_log(f'--allow-mismatch: checkpoint {args.checkpoint} does not fit the model:\n{mismatch}',
                  logger='current', level=logging.WARNING)
    if after_build is not None:
        after_build(runner, args)
    return runner.test()
