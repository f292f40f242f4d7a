"""The torch.distributed rendezvous for tasks started by Slurm's `srun`, and the end of a distributed run.

`srun` starts every task itself and describes it with SLURM_* variables, but sets none of the variables that
`init_process_group(init_method='env://')` reads (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT). Used by
`classification/` (timm's `init_distributed_device`) and by the OpenMMLab drivers on CPU (mmengine's slurm
launcher does the same itself on GPUs, with this module's MASTER_PORT).
"""
import gc
import os
import re
import shutil
import subprocess

__all__ = ['is_slurm_task', 'slurm_master_port', 'set_slurm_rendezvous', 'close_process_group']

DEFAULT_PORT_BASE = 29500


def is_slurm_task() -> bool:
    """Whether this process is one of several tasks started by `srun` (not torchrun inside an allocation)."""
    return 'SLURM_PROCID' in os.environ and int(os.environ.get('SLURM_NTASKS', 1)) > 1 and 'RANK' not in os.environ


def slurm_master_port() -> int:
    """MASTER_PORT if set; else 29500 + SLURM_JOB_ID % 1000, so that two jobs sharing a node do not collide."""
    if 'MASTER_PORT' in os.environ:
        return int(os.environ['MASTER_PORT'])
    return DEFAULT_PORT_BASE + int(os.environ.get('SLURM_JOB_ID', 0)) % 1000


def _first_host(node_list: str) -> str:
    """The first host name of a Slurm node list ('gpu[03-05,07],cpu1' -> 'gpu03'), by `scontrol show hostnames`
    as Slurm expands it; a plain host name needs no scontrol."""
    if re.fullmatch(r'[\w.-]+', node_list):
        return node_list
    if shutil.which('scontrol') is None:
        raise RuntimeError(f'cannot expand the Slurm node list {node_list!r}: scontrol is not on PATH; '
                           f'set MASTER_ADDR to the first node of the job step')
    hosts = subprocess.run(['scontrol', 'show', 'hostnames', node_list], capture_output=True, text=True,
                           check=True).stdout.split()
    return hosts[0]


def set_slurm_rendezvous() -> bool:
    """Under `srun` with several tasks, set RANK, WORLD_SIZE and LOCAL_RANK from SLURM_PROCID, SLURM_NTASKS and
    SLURM_LOCALID, MASTER_ADDR to the step's first node and MASTER_PORT (`slurm_master_port`), keeping any
    MASTER_ADDR/MASTER_PORT already set. Returns whether this process is such a task."""
    if not is_slurm_task():
        return False
    os.environ['RANK'] = os.environ['SLURM_PROCID']
    os.environ['WORLD_SIZE'] = os.environ['SLURM_NTASKS']
    os.environ['LOCAL_RANK'] = os.environ.get('SLURM_LOCALID', '0')
    if 'MASTER_ADDR' not in os.environ:
        node_list = (os.environ.get('SLURM_STEP_NODELIST') or os.environ.get('SLURM_JOB_NODELIST')
                     or os.environ['SLURM_NODELIST'])
        os.environ['MASTER_ADDR'] = _first_host(node_list)
    os.environ['MASTER_PORT'] = str(slurm_master_port())
    return True


def close_process_group() -> None:
    """Destroy every process group at the end of a run, while the interpreter is still alive.

    A gloo group's worker threads take the GIL to release the tensors of the collectives they ran. Left to the
    interpreter's exit, the group dies with the finished run's reference cycles (the model's DDP wrapper holds
    it; mmengine's Runner is such a cycle), in the exit's last garbage collection; a worker that needs the GIL
    then is stopped inside a destructor and the process aborts (SIGABRT, "terminate called without an active
    exception") after a run that succeeded. So the cycles are collected first: destroying the group then drops
    its last reference, and its destructor joins the workers now. Call it once the run's objects are unreachable
    (after the driver returned and any exception's traceback is gone)."""
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()):
        return
    gc.collect()
    dist.destroy_process_group()
