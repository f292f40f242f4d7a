"""Test tiers: the fast default tier runs with `pytest`; `pytest --slow` adds the tests marked `slow`
(subprocess, DDP, kill-and-resume, full-size golden and OpenMMLab end-to-end runs). CI runs both. Tests marked
`gpu` (tests/test_gpu.py: `pytest -m gpu tests/test_gpu.py`) are skipped where torch sees no CUDA device."""
import os
import shutil
import socket
import subprocess
import time

import pytest
import torch

import toy_family  # noqa: F401  (a throw-away fifth model family: the shared suite must pick it up by the contract)
from helpers import create_tiny, free_port


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption('--slow', action='store_true', help='also run the tests marked slow')
    parser.addoption('--full-faults', action='store_true',
                     help='tests/test_fault_matrix.py: every case of the fault matrix, not a cross-section')


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line('markers', 'slow: subprocess/DDP/full-size/end-to-end tests (run with --slow)')
    config.addinivalue_line('markers', 'gpu: needs a CUDA device (skipped without one): pytest -m gpu')


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    if not torch.cuda.is_available():
        no_gpu = pytest.mark.skip(reason='gpu tier: torch sees no CUDA device (run on a GPU node: pytest -m gpu)')
        for item in items:
            if 'gpu' in item.keywords:
                item.add_marker(no_gpu)
    if config.getoption('--slow'):
        return
    skip = pytest.mark.skip(reason='slow tier: run with --slow')
    for item in items:
        if 'slow' in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return create_tiny().eval()


SLURM_DAEMONS = ('slurmctld', 'slurmd', 'srun', 'scontrol', 'sinfo')


@pytest.fixture(scope='session')
def slurm(tmp_path_factory):
    """A private one-node Slurm cluster (slurmctld + slurmd, no munge: auth/none) on free ports, one for the
    session (defined here once: a copy imported into several test modules starts one cluster per module); yields
    the environment under which `srun` submits to it. Skips where Slurm is not installed or not root."""
    if os.geteuid() != 0 or not all(shutil.which(name) for name in SLURM_DAEMONS):
        pytest.skip('needs root and Slurm (Debian/Ubuntu: apt-get install slurm-wlm) for a one-node cluster')
    root = tmp_path_factory.mktemp('slurm')
    host = socket.gethostname().split('.')[0]
    for folder in ('state', 'spool'):
        (root / folder).mkdir()
    (root / 'slurm.conf').write_text(f"""\
ClusterName=test
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/none
CredType=cred/none
ProctrackType=proctrack/pgid
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ReturnToService=2
KillWait=10
NodeName={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
""")
    env = dict(os.environ, SLURM_CONF=str(root / 'slurm.conf'))
    daemons = [subprocess.Popen([name, '-D', '-f', env['SLURM_CONF']] + (['-c'] if name == 'slurmctld' else []),
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
               for name in ('slurmctld', 'slurmd')]
    try:
        deadline = time.time() + 60
        state = ''
        while time.time() < deadline:
            state = subprocess.run(['sinfo', '-h', '-o', '%T'], env=env, capture_output=True, text=True).stdout
            if state.strip() == 'idle':
                break
            time.sleep(0.5)
        else:
            pytest.fail(f'the Slurm node did not come up ({state!r}); see {root}/slurmd.log')
        yield {'SLURM_CONF': env['SLURM_CONF']}
    finally:
        for daemon in daemons:
            daemon.terminate()
        for daemon in daemons:
            daemon.wait(timeout=30)
