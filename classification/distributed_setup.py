"""The process group of a classification run: joining it (torchrun, `torch.distributed.launch --use_env`, Slurm)
and the rank queries the training loop asks, which answer for a single process too."""
import argparse

import torch
import torch.distributed as dist
from timm.utils import init_distributed_device

from scalablevit.distributed import set_slurm_rendezvous

from run_log import logger, setup_logging

__all__ = ['collective_device', 'get_rank', 'get_world_size', 'init_distributed', 'is_dist_avail_and_initialized',
           'is_main_process']


def is_dist_avail_and_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    return dist.get_world_size() if is_dist_avail_and_initialized() else 1


def get_rank() -> int:
    return dist.get_rank() if is_dist_avail_and_initialized() else 0


def is_main_process() -> bool:
    return get_rank() == 0


def collective_device() -> torch.device:
    """Where tensors of a collective live: CUDA under NCCL, CPU under gloo."""
    return torch.device('cuda') if dist.get_backend() == 'nccl' else torch.device('cpu')


def init_distributed(args: argparse.Namespace) -> torch.device:
    """Join the process group that torchrun, `torch.distributed.launch --use_env` or Slurm describe (timm's
    `init_distributed_device`: NCCL on GPU, gloo on CPU), set up rank-aware logging and return the device.

    Sets args.distributed, args.rank, args.world_size, args.local_rank and args.device. Under `srun` the
    rendezvous (MASTER_ADDR: the step's first node) comes from `scalablevit.distributed`.
    """
    set_slurm_rendezvous()
    device = init_distributed_device(args)
    setup_logging(args.rank)
    if args.distributed:
        logger.info(f'distributed init (rank {args.rank} of {args.world_size}, {dist.get_backend()})')
    return device
