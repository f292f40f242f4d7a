"""Run classification/main.py and, when rank 0 enters a phase of training for the N-th time, send a stop
signal to every process of the job: the process FAULT_ROOT_PID (the launcher the test started) and all its
descendants (ranks, loader workers), as Slurm signals every process of a job step.

    FAULT_ROOT_PID=PID python inject.py PHASE N SIGNAL -- MAIN.PY ARGUMENTS
PHASE is one of PHASES; N counts that phase's entries from 1. The fault-matrix tests run it in place of main.py.
"""
import os
import signal
import sys
from pathlib import Path

CLASSIFICATION = Path(__file__).resolve().parents[2] / 'classification'
sys.path.insert(0, str(CLASSIFICATION))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import engine  # noqa: E402
import main  # noqa: E402
import run_state  # noqa: E402
from distributed_setup import get_rank  # noqa: E402
from helpers import signal_job  # noqa: E402

# phase: (module, attribute) whose call marks it
PHASES = {
    'loader-start': (torch.utils.data.DataLoader, '__iter__'),  # a training or validation loader starts
    'forward-backward': (engine.TrainStep, '__call__'),  # an optimizer step begins
    'optimizer-step': (torch.optim.AdamW, 'step'),
    'mid-epoch-save': (run_state.TrainingRun, 'save_position'),
    'evaluation': (engine, 'evaluate'),
    'epoch-save': (run_state.TrainingRun, 'save_epoch'),
    'between-epochs': (run_state.TrainingRun, 'stop_agreed_now'),
}


def signal_on_entry(owner, name: str, nth: int, signum: int) -> None:
    original = getattr(owner, name)
    entries = []

    def wrapper(*args, **kwargs):
        entries.append(1)
        if len(entries) == nth and get_rank() == 0:
            signal_job(int(os.environ['FAULT_ROOT_PID']), signum)
        return original(*args, **kwargs)

    setattr(owner, name, wrapper)
    if owner is engine and name == 'evaluate':
        main.evaluate = wrapper  # main.py imported it by name


if __name__ == '__main__':
    phase, nth, signame, separator, *argv = sys.argv[1:]
    assert separator == '--' and phase in PHASES, sys.argv
    signal_on_entry(*PHASES[phase], int(nth), getattr(signal, signame))
    os.chdir(CLASSIFICATION)
    sys.exit(main.cli(argv))
