"""Training where users train: the Slurm launchers of all three tasks on a real one-node Slurm cluster started
here, and the srun rendezvous. (The legacy `torch.distributed.launch --use_env` command: test_classification.py.)"""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import ROOT, free_port, run_command

CLASSIFICATION, DETECTION, SEGMENTATION = ROOT / 'classification', ROOT / 'detection', ROOT / 'segmentation'
TINY_TRAINING = ['--model', 'scalable_vit_test', '--input-size', '32', '--batch-size', '8', '--warmup-epochs', '1',
                 '--lr', '4e-3', '--device', 'cpu']


def venv_path() -> str:
    """PATH with this Python's bin first, as the users' launch scripts expect `python`/`torchrun` there."""
    return f'{Path(sys.executable).parent}{os.pathsep}{os.environ["PATH"]}'


@pytest.fixture(scope='module')
def data(tmp_path_factory) -> Path:
    from scalablevit.demo_data import make_demo_image_folder
    return make_demo_image_folder(tmp_path_factory.mktemp('data'), num_classes=4, train_per_class=16, val_per_class=8,
                                  size=32)


@pytest.mark.slow
def test_classification_under_srun(slurm, data, tmp_path):
    """`srun -n 2 python main.py ...`: ranks from SLURM_*, the rendezvous on the step's first node."""
    out = tmp_path / 'srun'
    result = run_command(['srun', '-n', '2', '-N', '1', '--kill-on-bad-exit=1', sys.executable, 'main.py',
                          *TINY_TRAINING, '--data-path', data, '--output_dir', out, '--epochs', '1',
                          '--num_workers', '0'], cwd=CLASSIFICATION, timeout=300,
                         env=dict(slurm, MASTER_PORT=str(free_port())))
    assert 'distributed init (rank 0 of 2, gloo)' in result.stdout
    assert (out / 'checkpoint.pth').exists()


def test_slurm_rendezvous_from_srun_environment(monkeypatch):
    """The variables srun sets for task 1 of 2 on one node become torch.distributed's env:// rendezvous."""
    from scalablevit.distributed import set_slurm_rendezvous
    for name in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT'):
        monkeypatch.setenv(name, '')  # restored (or removed) after the test, whatever the function sets
        monkeypatch.delenv(name)
    for name, value in dict(SLURM_PROCID='1', SLURM_NTASKS='2', SLURM_LOCALID='1', SLURM_JOB_ID='4321',
                            SLURM_STEP_NODELIST='node7', SLURM_NODELIST='node7').items():
        monkeypatch.setenv(name, value)
    assert set_slurm_rendezvous()
    assert [os.environ[n] for n in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT')] == \
        ['1', '2', '1', 'node7', str(29500 + 321)]
    monkeypatch.setenv('SLURM_NTASKS', '1')  # a single task (e.g. the batch script itself): not distributed
    monkeypatch.delenv('RANK')
    assert not set_slurm_rendezvous()


def openmmlab_demo(task: str, tmp_path: Path) -> Path:
    """The task's smallest CPU demo config, with its generated dataset under tmp_path/data."""
    if task == 'detection':
        from scalablevit.demo_data import make_demo_coco
        make_demo_coco(tmp_path / 'data' / 'demo_coco', train_images=8, val_images=4)
        return DETECTION / 'configs' / 'demo' / 'retinanet_scalablevit-test_fpn_demo-coco.py'
    from scalablevit.demo_data import make_demo_ade
    make_demo_ade(tmp_path / 'data' / 'demo_ade', train_images=8, val_images=4)
    return SEGMENTATION / 'configs' / 'demo' / 'fpn_scalablevit-test_demo-ade.py'


CLOSE_AFTER_A_RUN = """\
import os
import torch
import torch.distributed as dist
from scalablevit.distributed import close_process_group

def gloo_workers():
    tasks = os.listdir('/proc/self/task')
    return sum(open(f'/proc/self/task/{task}/comm').read().strip() == 'pt_gloo_runloop' for task in tasks)

dist.init_process_group('gloo')

class Run:  # a finished run as mmengine's Runner leaves it: a reference cycle that holds the DDP model
    pass

run = Run()
run.loop = run
run.model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 2))
run.model(torch.ones(3, 4)).sum().backward()
dist.broadcast(torch.ones(2), src=0)
running = gloo_workers()
del run
close_process_group()
print('gloo workers', running, gloo_workers(), dist.is_initialized())
"""


@pytest.mark.skipif(not Path('/proc/self/task').is_dir(), reason='counts threads in /proc')
def test_close_process_group_joins_gloo_workers_before_exit(tmp_path):
    """A finished run's process group is gone, its gloo workers joined, before the interpreter exits: left to
    the exit's garbage collection (the group lives in the run's reference cycles), a worker that takes the GIL
    then aborts a run that succeeded (SIGABRT after the last validation of a 2-task Slurm run)."""
    script = tmp_path / 'close.py'
    script.write_text(CLOSE_AFTER_A_RUN)
    env = dict(os.environ, OMP_NUM_THREADS='1', WORLD_SIZE='2', MASTER_ADDR='127.0.0.1',
               MASTER_PORT=str(free_port()))
    ranks = [subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, env=dict(env, RANK=str(rank)),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
    outputs = [rank.communicate(timeout=120)[0] for rank in ranks]
    assert [rank.returncode for rank in ranks] == [0, 0], outputs
    for output in outputs:
        running, left = output.split('gloo workers ')[1].split()[:2]
        assert int(running) > 0 and int(left) == 0, output  # workers ran the collectives, then were joined
        assert output.split()[-1] == 'False'


@pytest.mark.slow
@pytest.mark.parametrize('task', ['detection', 'segmentation'])
def test_openmmlab_slurm_train_and_test(slurm, task, tmp_path):
    """`slurm_train.sh PARTITION JOB_NAME CONFIG WORK_DIR` then `slurm_test.sh ... CHECKPOINT` on 2 CPU tasks
    (mmengine's `--launcher slurm`; GRES empty: the node has no GPUs)."""
    pytest.importorskip('mmdet')
    pytest.importorskip('mmseg')
    config = openmmlab_demo(task, tmp_path)
    folder = DETECTION if task == 'detection' else SEGMENTATION
    env = dict(slurm, PATH=venv_path(), GPUS='2', GPUS_PER_NODE='2', CPUS_PER_TASK='1', GRES='',
               MASTER_PORT=str(free_port()))  # free: a fixed port may meet another run's rendezvous
    work = tmp_path / 'work'
    options = ['--cfg-options', 'train_cfg.max_epochs=1'] if task == 'detection' else []
    result = run_command(['bash', folder / 'slurm_train.sh', 'debug', f'{task}-train', config, work, *options],
                         cwd=tmp_path, env=env, timeout=900)
    log = result.stdout + result.stderr
    assert 'Distributed training: True' in log and 'GPU number: 2' in log  # mmengine's names for the world
    checkpoint = work / ('epoch_1.pth' if task == 'detection' else 'iter_4.pth')
    assert checkpoint.exists()
    metric = ['--eval', 'bbox'] if task == 'detection' else ['--eval', 'mIoU']
    result = run_command(['bash', folder / 'slurm_test.sh', 'debug', f'{task}-test', config, checkpoint, *metric,
                          '--work-dir', tmp_path / 'test'], cwd=tmp_path, env=env, timeout=900)
    log = result.stdout + result.stderr
    assert ('coco/bbox_mAP' if task == 'detection' else 'mIoU') in log


def test_resume_survives_a_torn_last_checkpoint(tmp_path):
    """mmengine rewrites `last_checkpoint` in place: killed then, it is empty; `--resume` takes the checkpoint
    written last instead (by time: a stop's stopped.pth or iter_N.pth inside epoch N+1 is newer than epoch_N.pth),
    and the named one when it exists."""
    pytest.importorskip('mmdet')
    from scalablevit.openmmlab.compat import find_resumable_checkpoint
    for when, name in enumerate(('epoch_2.pth', 'epoch_9.pth', 'epoch_10.pth', 'other.pth')):
        (tmp_path / name).write_bytes(b'')
        os.utime(tmp_path / name, ns=(when * 10**9, when * 10**9))
    assert find_resumable_checkpoint(str(tmp_path)) == str(tmp_path / 'epoch_10.pth')  # no last_checkpoint
    (tmp_path / 'last_checkpoint').write_text('')
    assert find_resumable_checkpoint(str(tmp_path)) == str(tmp_path / 'epoch_10.pth')
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'epoch_11.pth'))
    assert find_resumable_checkpoint(str(tmp_path)) == str(tmp_path / 'epoch_10.pth')
    for when, name in ((4, 'iter_40.pth'), (5, 'stopped.pth')):
        (tmp_path / name).write_bytes(b'')
        os.utime(tmp_path / name, ns=(when * 10**9, when * 10**9))
        assert find_resumable_checkpoint(str(tmp_path)) == str(tmp_path / name)
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'epoch_9.pth'))
    assert find_resumable_checkpoint(str(tmp_path)) == str(tmp_path / 'epoch_9.pth')


@pytest.mark.slow
def test_detection_killed_mid_epoch_resumes(tmp_path):
    """`kill -9` in the middle of the second epoch, with `last_checkpoint` torn as a kill during its rewrite
    leaves it: `train.py --resume` continues from epoch 1 and finishes."""
    pytest.importorskip('mmdet')
    config = openmmlab_demo('detection', tmp_path)
    work = tmp_path / 'work'
    command = [sys.executable, str(DETECTION / 'train.py'), str(config), '--work-dir', str(work),
               '--cfg-options', 'train_cfg.max_epochs=2']
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=dict(os.environ, OMP_NUM_THREADS='1'))
    deadline = time.time() + 600
    while not (work / 'epoch_1.pth').exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.2)
    time.sleep(1.0)
    assert process.poll() is None, 'the run ended before it could be killed'
    process.kill()
    process.wait()
    assert not (work / 'epoch_2.pth').exists()
    (work / 'last_checkpoint').write_text('')
    result = run_command([str(DETECTION / 'train.py'), config, '--work-dir', work, '--resume',
                          '--cfg-options', 'train_cfg.max_epochs=2'], cwd=tmp_path, timeout=900)
    log = result.stdout + result.stderr
    assert f'resuming from the checkpoint written last, {work / "epoch_1.pth"}' in log
    assert 'resumed epoch: 1' in log and (work / 'epoch_2.pth').exists()
