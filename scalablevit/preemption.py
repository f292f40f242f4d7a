"""Stopping a run on a cluster's signal, the same way in all three tasks (classification, detection,
segmentation).

Slurm (a preemption, `scancel --signal`, `--signal=USR1@90`) and torchrun send SIGTERM or SIGUSR1 to every
process of a job step before the kill. The run's handler only sets a flag (`StopRequest`): the step in flight
and any checkpoint write finish; the ranks agree to stop after the same step; the run saves its position, may
requeue its Slurm job (`requeue_slurm_job`) and exits with `EXIT_STOPPED`, and rerunning the same command
resumes. Data-loader workers ignore the signals (`ignore_stop_signals`), so that the main process can finish.
"""
import logging
import os
import signal
import subprocess
from typing import Optional, Tuple

import torch
import torch.distributed as dist

__all__ = ['STOP_SIGNALS', 'EXIT_STOPPED', 'TrainingStopped', 'StopRequest', 'ignore_stop_signals',
           'requeue_slurm_job']

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
# sysexits' EX_TEMPFAIL, 'temporary failure, try again': the run saved its position; rerunning resumes it
EXIT_STOPPED = 75

logger = logging.getLogger(__name__)


class TrainingStopped(Exception):
    """Training stopped on a signal after its checkpoint was written; rerunning the command resumes."""


class StopRequest:
    """A stop flag set by SIGTERM/SIGUSR1 and agreed across ranks.

    `agreed()` is for the training loop, after every step: it all-reduces (MAX, on the CPU through gloo, so no
    GPU sync) this step's flag without waiting and returns the previous call's result, so every rank stops
    after the same step, one step after the signal, and the reduction's latency hides behind a step.
    `agreed_now()` waits for the answer: for points where the run can stop at once (an epoch's end, after its
    evaluation and checkpoint). Every rank must make the same calls in the same order.
    Use it as a context manager: the previous handlers come back on exit."""

    def __init__(self):
        self.signal: Optional[int] = None
        self._group = None
        self._pending: Optional[Tuple[torch.Tensor, object]] = None
        if dist.is_available() and dist.is_initialized():
            self._group = dist.new_group(backend='gloo') if dist.get_backend() != 'gloo' else dist.group.WORLD
        self._previous = {signum: signal.signal(signum, self._handle) for signum in STOP_SIGNALS}

    def _handle(self, signum: int, frame) -> None:
        self.signal = signum

    def agreed(self) -> bool:
        """Whether any rank had received a stop signal by the previous call (a collective)."""
        if self._group is None:
            return self.signal is not None
        result = self._wait()
        flag = torch.tensor([self.signal is not None], dtype=torch.int32)
        self._pending = flag, dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group, async_op=True)
        return result

    def agreed_now(self) -> bool:
        """Whether any rank has received a stop signal by now, or by the previous `agreed()` (a collective that
        waits for its answer)."""
        if self._group is None:
            return self.signal is not None
        earlier = self._wait()
        flag = torch.tensor([self.signal is not None], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group)
        return earlier or bool(flag.item())

    def _wait(self) -> bool:
        if self._pending is None:
            return False
        flag, work = self._pending
        work.wait()
        self._pending = None
        return bool(flag.item())

    def close(self) -> None:
        """Finish the reduction in flight and give the signals back to their previous handlers."""
        if self._pending is not None:
            self._wait()
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def __enter__(self) -> 'StopRequest':
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def ignore_stop_signals(worker_id: int = 0) -> None:
    """Ignore SIGTERM/SIGUSR1, which Slurm sends to every process of a job step. As a DataLoader `worker_init_fn`:
    the main process can finish its step and save (it shuts its workers down itself). In a stopped run's main
    process: its exit status stays 75 while srun ends the step's other tasks after the first one exits."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def requeue_slurm_job() -> bool:
    """`scontrol requeue $SLURM_JOB_ID`: Slurm starts the same job script again, which resumes. Returns whether
    the job was requeued (a warning says why not)."""
    job = os.environ.get('SLURM_JOB_ID')
    if job is None:
        logger.warning('requeue: not a Slurm job (no SLURM_JOB_ID), nothing requeued')
        return False
    try:
        result = subprocess.run(['scontrol', 'requeue', job], capture_output=True, text=True)
    except OSError as error:
        logger.warning(f'scontrol requeue {job} failed: {error}')
        return False
    if result.returncode:
        logger.warning(f'scontrol requeue {job} failed: {result.stderr.strip()}')
        return False
    logger.info(f'requeued Slurm job {job}')
    return True
