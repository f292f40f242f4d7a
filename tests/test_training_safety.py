"""Nothing silently wrong in training runs: checkpoint integrity, one run per output folder, what a resume keeps, and
images converted as they are. Each test is a probe that used to end with exit 0 and a wrong result."""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from scalablevit import checkpoint as checkpoint_io
from scalablevit.demo_data import make_demo_image_folder
from scalablevit.run_folder import LOCK_NAME, RunFolderError, lock_run_folder

import image_data as cls_datasets
import main as cls_main
from errors import UserInputError
from helpers import ROOT, TINY_MODEL, create_tiny

CLASSIFICATION = ROOT / 'classification'

TINY = ['--model', TINY_MODEL, '--input-size', '32', '--device', 'cpu', '--num_workers', '0']
TRAIN = [*TINY, '--batch-size', '8', '--warmup-epochs', '1', '--lr', '4e-3']


def run_in_process(argv):
    cls_main.main(argparse.ArgumentParser(parents=[cls_main.get_args_parser()]).parse_args(argv))


@pytest.fixture(scope='module')
def data(tmp_path_factory) -> Path:
    return make_demo_image_folder(tmp_path_factory.mktemp('data'), num_classes=4, train_per_class=8, val_per_class=4,
                                  size=32)


@pytest.fixture(scope='module')
def trained(data, tmp_path_factory) -> Path:
    """A 2-epoch run whose checkpoint.pth (written by the project, with digests) the tests copy and damage."""
    out = tmp_path_factory.mktemp('trained')
    run_in_process([*TRAIN, '--data-path', str(data), '--output_dir', str(out), '--epochs', '2'])
    return out


def copy_run(trained: Path, out: Path) -> Path:
    out.mkdir()
    for name in ('checkpoint.pth', 'log.txt'):
        (out / name).write_bytes((trained / name).read_bytes())
    return out


def overwrite_tensor_bytes(path: Path, tensor: torch.Tensor, replacement: bytes) -> None:
    """Overwrite the first bytes of `tensor`'s stored data inside the checkpoint file `path` (what a bad disk
    sector or a faulty copy does)."""
    blob = path.read_bytes()
    stored = tensor.contiguous().numpy().tobytes()
    offset = blob.find(stored[:256])
    assert offset > 0 and blob.count(stored[:256]) == 1
    path.write_bytes(blob[:offset] + replacement + blob[offset + len(replacement):])


# --- integrity of what is written and read ----------------------------------------------------------------

def test_save_checkpoint_is_atomic_and_records_digests(tmp_path):
    model = create_tiny()
    checkpoint = {'model': model.state_dict(), 'epoch': 3}
    path = tmp_path / 'checkpoint.pth'
    checkpoint_io.save_checkpoint(checkpoint, path)
    assert checkpoint_io.DIGEST_KEY not in checkpoint  # the caller's dict is left alone
    stored = torch.load(path, weights_only=True)
    assert stored[checkpoint_io.DIGEST_KEY].keys() == {f'model.{k}' for k in model.state_dict()}
    loaded = checkpoint_io.load_checkpoint_file(str(path))
    assert checkpoint_io.DIGEST_KEY not in loaded and loaded['epoch'] == 3
    assert all(torch.equal(loaded['model'][k], v) for k, v in model.state_dict().items())
    assert not list(tmp_path.glob(checkpoint_io.TEMPORARY_PATTERN))


def test_nan_bytes_in_a_model_tensor_are_refused_naming_it(tmp_path):
    """64 NaNs written into one tensor's stored bytes: the digest names the tensor; a file without digests
    (released code, torch.save) is refused by the finite check, again naming the tensor."""
    model = create_tiny()
    weight = model.state_dict()['stages.1.0.attn.qkv.weight']
    nans = torch.full((64,), float('nan')).numpy().tobytes()
    ours, plain = tmp_path / 'ours.pth', tmp_path / 'plain.pth'
    checkpoint_io.save_checkpoint({'model': model.state_dict()}, ours)
    torch.save({'model': model.state_dict()}, plain)
    for path in (ours, plain):
        overwrite_tensor_bytes(path, weight, nans)
    with pytest.raises(checkpoint_io.CheckpointError, match=r'ours.pth has been altered .*model\.stages\.1\.0\.attn'
                                                            r'\.qkv\.weight'):
        checkpoint_io.load_state_dict(str(ours))
    with pytest.raises(checkpoint_io.CheckpointError, match=r"plain.pth: NaN or infinite values in the 'model' "
                                                            r'weights: stages\.1\.0\.attn\.qkv\.weight \(64 of'):
        checkpoint_io.load_state_dict(str(plain))


def test_eval_of_a_checkpoint_with_nan_weights_is_an_error(data, trained, tmp_path):
    """Used to evaluate to 'Acc@1 25.000 ... loss nan' with exit 0."""
    out = copy_run(trained, tmp_path / 'nan')
    weights = torch.load(out / 'checkpoint.pth', weights_only=True)['model']
    key = 'stages.1.0.attn.qkv.weight'
    overwrite_tensor_bytes(out / 'checkpoint.pth', weights[key], torch.full((64,), float('nan')).numpy().tobytes())
    with pytest.raises(checkpoint_io.CheckpointError, match=f'has been altered.*model.{key}'):
        run_in_process([*TINY, '--data-path', str(data), '--eval', '--resume', str(out / 'checkpoint.pth')])


def test_damaged_optimizer_state_stops_the_resume_naming_the_tensor(data, trained, tmp_path):
    """4 bytes of optimizer state overwritten: used to load and stop later with 'loss is nan ... lower --lr'."""
    out = copy_run(trained, tmp_path / 'opt')
    state = torch.load(out / 'checkpoint.pth', weights_only=True)['optimizer']['state']
    index, moments = next((i, s) for i, s in state.items() if s['exp_avg_sq'].numel() >= 256)
    overwrite_tensor_bytes(out / 'checkpoint.pth', moments['exp_avg_sq'], b'\xff\xff\xff\x7f')
    with pytest.raises(checkpoint_io.CheckpointError, match=rf'optimizer\.state\.{index}\.exp_avg_sq'):
        run_in_process([*TRAIN, '--data-path', str(data), '--output_dir', str(out), '--epochs', '2'])


def test_non_finite_optimizer_state_without_digests_is_refused(data, trained, tmp_path):
    out = copy_run(trained, tmp_path / 'opt_plain')
    checkpoint = torch.load(out / 'checkpoint.pth', weights_only=True)
    del checkpoint[checkpoint_io.DIGEST_KEY]  # as the released code writes them
    next(iter(checkpoint['optimizer']['state'].values()))['exp_avg'][0] = float('inf')
    torch.save(checkpoint, out / 'checkpoint.pth')
    with pytest.raises(checkpoint_io.CheckpointError, match=r'NaN or infinite values in the optimizer state: '
                                                        r'optimizer\.state\.0\.exp_avg \(1 of'):
        run_in_process([*TRAIN, '--data-path', str(data), '--output_dir', str(out), '--epochs', '2'])


@pytest.mark.parametrize('problem', ['missing', 'empty', 'truncated', 'not_a_checkpoint', 'folder'])
def test_unusable_checkpoint_files_name_the_file(tmp_path, problem):
    path = tmp_path / 'model.pth'
    if problem == 'empty':
        path.write_bytes(b'')
    elif problem == 'truncated':
        checkpoint_io.save_checkpoint({'model': create_tiny().state_dict()}, path)
        path.write_bytes(path.read_bytes()[:5000])
    elif problem == 'not_a_checkpoint':
        path.write_text('{"model": "weights"}')
    elif problem == 'folder':
        path.mkdir()
    message = {'missing': 'model.pth does not exist', 'empty': 'model.pth is empty',
               'truncated': 'cannot read checkpoint .*model.pth \\(truncated',
               'not_a_checkpoint': 'cannot read checkpoint .*model.pth', 'folder': 'is a folder'}[problem]
    error = FileNotFoundError if problem in ('missing', 'folder') else checkpoint_io.CheckpointError
    with pytest.raises(error, match=message):
        checkpoint_io.load_checkpoint_file(str(path))


def test_released_checkpoints_without_digests_still_load(tmp_path):
    model = create_tiny()
    path = tmp_path / 'released.pth'
    torch.save({'model': model.state_dict(), 'args': argparse.Namespace(model='x'), 'epoch': 299}, path)
    loaded = checkpoint_io.load_state_dict(str(path))
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())


def test_edited_checkpoints_load_when_only_keys_were_removed_or_added(trained, tmp_path):
    """Dropping the optimizer state or adding EMA weights to one of our files is no damage; changing a
    recorded tensor is."""
    checkpoint = torch.load(trained / 'checkpoint.pth', weights_only=True)
    del checkpoint['optimizer']
    checkpoint['model_ema'] = checkpoint['model']
    torch.save(checkpoint, tmp_path / 'edited.pth')
    assert 'optimizer' not in checkpoint_io.load_checkpoint_file(str(tmp_path / 'edited.pth'))
    next(iter(checkpoint['model'].values())).add_(1)
    torch.save(checkpoint, tmp_path / 'changed.pth')
    with pytest.raises(checkpoint_io.CheckpointError, match='saved without its'):
        checkpoint_io.load_checkpoint_file(str(tmp_path / 'changed.pth'))


# --- one run per output folder ----------------------------------------------------------------------------

def hold_lock(folder: Path, pid: int = 4242) -> int:
    """Hold `folder`'s lock as another run would: flock on a descriptor of its own (flock locks belong to the
    open file, so this process's later attempt conflicts like another process's); returns the descriptor."""
    import fcntl
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, f'PID {pid} on node7, since 2026-12-01 20:00:00 UTC\n'.encode())
    return fd


def test_second_run_on_a_folder_stops_at_once_naming_the_holder(data, tmp_path):
    """Two runs on one --output_dir used to both exit 0 with every epoch logged twice, and the second deleted
    the first's in-flight checkpoint write."""
    out = tmp_path / 'run'
    fd = hold_lock(out)
    in_flight = out / '.checkpoint.pth.tmp-4242'  # the holder's save in progress
    in_flight.write_bytes(b'partial')
    try:
        started = time.time()
        with pytest.raises(UserInputError, match='in use by another run: PID 4242 on node7'):
            run_in_process([*TRAIN, '--data-path', str(data), '--output_dir', str(out), '--epochs', '1'])
        assert time.time() - started < 5
        assert in_flight.exists()  # only the lock holder removes temporaries
        assert not (out / 'log.txt').exists()
    finally:
        os.close(fd)
    lock = lock_run_folder(out)  # the holder is gone: its lock with it; stale temporaries go now
    assert not in_flight.exists() and f'PID {os.getpid()} ' in (out / LOCK_NAME).read_text()
    lock.release()


KILLED_HOLDER = """
import os, signal, sys, time
from scalablevit.run_folder import lock_run_folder
lock_run_folder(sys.argv[1])
child = os.fork()  # a data-loader worker, say, that outlives its killed parent by a while
if child == 0:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1), os.dup2(devnull, 2)  # let the test's pipes close
    time.sleep(60)
    os._exit(0)
print(child, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_runs_forked_workers_do_not_keep_its_folder_locked(tmp_path):
    """kill -9 of a run whose loader workers live on a few seconds more: the restart takes the folder at once
    (the workers used to hold the flock they inherited, and the restart stopped with 'in use by another run')."""
    out = tmp_path / 'run'
    result = subprocess.run([sys.executable, '-c', KILLED_HOLDER, str(out)], capture_output=True, text=True,
                            cwd=ROOT, timeout=60)
    assert result.returncode == -9, result.stderr
    worker = int(result.stdout)
    try:
        os.kill(worker, 0)  # the orphaned worker still lives
        lock = lock_run_folder(out)
        lock.release()
    finally:
        os.kill(worker, 9)


@pytest.mark.slow
def test_two_training_commands_on_one_folder(data, tmp_path):
    """Two runs started on the same --output_dir (both used to exit 0, logging every epoch twice): the second
    exits at once with status 2 and the holder's PID while the first goes on."""
    out = tmp_path / 'shared'
    command = [sys.executable, 'main.py', *TRAIN, '--data-path', str(data), '--output_dir', str(out),
               '--epochs', '100']
    env = dict(os.environ, OMP_NUM_THREADS='1')
    first = subprocess.Popen(command, cwd=CLASSIFICATION, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True, env=env)
    try:
        deadline = time.time() + 120
        while not (out / LOCK_NAME).exists() or not (out / LOCK_NAME).read_text():
            assert time.time() < deadline and first.poll() is None
            time.sleep(0.1)
        second = subprocess.run(command, cwd=CLASSIFICATION, capture_output=True, text=True, env=env, timeout=120)
        assert second.returncode == 2 and f'PID {first.pid} on ' in second.stderr
        assert 'Traceback' not in second.stderr
        while not (out / 'log.txt').exists() or len((out / 'log.txt').read_text().splitlines()) < 2:
            assert time.time() < deadline and first.poll() is None, first.stderr.read()[-3000:]
            time.sleep(0.2)
    finally:
        first.kill()
        first.wait()
    epochs = [json.loads(line)['epoch'] for line in (out / 'log.txt').read_text().splitlines()]
    assert epochs == list(range(len(epochs)))
    lock_run_folder(out).release()  # the kernel released the killed run's lock


@pytest.mark.skipif(os.geteuid() == 0, reason='root writes to read-only folders')
def test_read_only_output_dir_fails_before_training(data, trained, tmp_path):
    out = copy_run(trained, tmp_path / 'read_only')
    out.chmod(0o555)
    try:
        with pytest.raises(UserInputError, match='is not writable'):
            run_in_process([*TRAIN, '--data-path', str(data), '--output_dir', str(out), '--epochs', '3'])
    finally:
        out.chmod(0o755)


def test_output_dir_that_is_a_file_fails_before_training(data, tmp_path):
    (tmp_path / 'out').write_text('not a folder')
    with pytest.raises(UserInputError, match='exists as a file'):
        run_in_process([*TRAIN, '--data-path', str(data), '--output_dir', str(tmp_path / 'out'), '--epochs', '1'])


def test_unwritable_folder_is_reported_before_any_step(tmp_path, monkeypatch):
    """The probe write runs before the first step (here the file system refuses it, as a read-only mount
    would, also for root)."""
    real_open = open

    def read_only_open(file, mode='r', *args, **kwargs):
        if '.write-probe' in str(file) and 'w' in mode:
            raise OSError(30, 'Read-only file system', str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr('builtins.open', read_only_open)
    with pytest.raises(RunFolderError, match='is not writable \\(Read-only file system'):
        lock_run_folder(tmp_path / 'ro')


# --- resume says what it keeps -----------------------------------------------------------------------------

def expected_lr(epoch: int, **flags) -> float:
    """The learning rate `main.py` uses in `epoch` for the tiny run's flags (scaled to the batch of 8)."""
    args = argparse.ArgumentParser(parents=[cls_main.get_args_parser()]).parse_args(
        [*TRAIN, *[item for k, v in flags.items() for item in (f'--{k}', str(v))]])
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=args.lr * args.batch_size / 512)
    scheduler, _ = timm.scheduler.create_scheduler_v2(
        optimizer, sched=args.sched, num_epochs=args.epochs, min_lr=args.min_lr, warmup_lr=args.warmup_lr,
        warmup_epochs=args.warmup_epochs, cooldown_epochs=args.cooldown_epochs)
    scheduler.step(epoch)
    return optimizer.param_groups[0]['lr']


def test_resume_with_a_new_lr_applies_it_and_says_so(data, trained, tmp_path, capsys):
    """Used to keep the old schedule without a word. (The checkpoint's command line is edited to a 3-epoch run,
    so that a third epoch remains; its tensors, and so their digests, are untouched.)"""
    out = copy_run(trained, tmp_path / 'lr')
    checkpoint = torch.load(out / 'checkpoint.pth', weights_only=True)
    checkpoint['args']['epochs'] = 3
    torch.save(checkpoint, out / 'checkpoint.pth')
    run_in_process([*TRAIN, '--data-path', str(data), '--output_dir', str(out), '--epochs', '3', '--lr', '8e-3'])
    err = capsys.readouterr().err
    assert '--lr (scaled to the global batch): 0.000125 (checkpoint: 6.25e-05) -> applied' in err
    assert '--epochs' not in err
    logged = json.loads((out / 'log.txt').read_text().splitlines()[2])
    assert logged['epoch'] == 2 and logged['train_lr'] == pytest.approx(expected_lr(2, epochs=3, lr=8e-3))
    assert expected_lr(2, epochs=3, lr=8e-3) != pytest.approx(expected_lr(2, epochs=3, lr=4e-3))


@pytest.mark.slow
def test_resume_with_more_epochs_on_request(data, trained, tmp_path, capsys):
    out = copy_run(trained, tmp_path / 'epochs')
    run_in_process([*TRAIN, '--data-path', str(data), '--output_dir', str(out), '--epochs', '3',
                    '--override-resume'])
    assert '--epochs: 3 (checkpoint: 2) -> applied' in capsys.readouterr().err
    logged = json.loads((out / 'log.txt').read_text().splitlines()[2])
    assert logged['epoch'] == 2 and logged['train_lr'] == pytest.approx(expected_lr(2, epochs=3))


@pytest.mark.parametrize('flags, listed', [
    (['--opt', 'sgd'], "--opt: 'sgd' (checkpoint: 'adamw')"),
    (['--epochs', '5'], '--epochs: 5 (checkpoint: 2)'),
    (['--batch-size', '4'], 'global batch size (--batch-size x processes x --grad-accum-steps): 4 (checkpoint: 8)'),
    (['--model-kwargs', 'mlp_ratio=2.0'], "--model-kwargs: {'mlp_ratio': 2.0} (checkpoint: {})"),
])
def test_resume_refuses_changes_that_cannot_apply_mid_run(data, trained, tmp_path, flags, listed):
    out = copy_run(trained, tmp_path / 'fixed')
    argv = [*TRAIN, '--data-path', str(data), '--output_dir', str(out), '--epochs', '2', *flags]
    with pytest.raises(UserInputError, match='cannot change mid-run') as error:
        run_in_process(argv)
    assert listed in str(error.value) and '--override-resume' in str(error.value)


def test_resume_with_another_optimizer_on_request(data, trained, tmp_path, capsys):
    """Used to end in `KeyError: 'momentum'`; with --override-resume the new optimizer starts afresh."""
    out = copy_run(trained, tmp_path / 'sgd')
    run_in_process([*TRAIN, '--data-path', str(data), '--output_dir', str(out), '--epochs', '3', '--opt', 'sgd',
                    '--override-resume'])
    assert "--opt: 'sgd' (checkpoint: 'adamw') -> applied: the optimizer state starts afresh" in capsys.readouterr().err
    checkpoint = torch.load(out / 'checkpoint.pth', weights_only=True)
    assert checkpoint['epoch'] == 2 and 'momentum_buffer' in next(iter(checkpoint['optimizer']['state'].values()))


def test_eval_without_a_checkpoint_is_an_error(data):
    """Used to evaluate random weights with exit 0."""
    with pytest.raises(UserInputError, match='--eval needs the checkpoint to evaluate'):
        run_in_process([*TINY, '--data-path', str(data), '--eval'])


def test_resume_a_folder_means_its_checkpoint(data, trained, tmp_path, capsys):
    run_in_process([*TINY, '--data-path', str(data), '--eval', '--resume', str(trained)])
    last = json.loads((trained / 'log.txt').read_text().splitlines()[-1])
    assert f"Loaded the 'model' weights of {trained / 'checkpoint.pth'}" in capsys.readouterr().out
    with pytest.raises(UserInputError, match='is a folder without checkpoint.pth'):
        run_in_process([*TINY, '--data-path', str(data), '--eval', '--resume', str(tmp_path)])
    assert last['epoch'] == 1


def test_torn_last_log_line_is_dropped_with_a_warning(data, trained, tmp_path, capsys):
    """A run killed while appending to log.txt: used to block every resume with a JSONDecodeError."""
    out = copy_run(trained, tmp_path / 'torn')
    with open(out / 'log.txt', 'a') as f:
        f.write('{"train_lr": 0.001, "train_lo')
    run_in_process([*TRAIN, '--data-path', str(data), '--output_dir', str(out), '--epochs', '2'])
    assert 'dropped its incomplete last line' in capsys.readouterr().err
    assert (out / 'log.txt').read_text() == (trained / 'log.txt').read_text()


# --- images as they are ------------------------------------------------------------------------------------

def png_48bit(pixels: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG (PIL writes none itself)."""
    import struct
    import zlib
    height, width, _ = pixels.shape
    raw = b''.join(b'\x00' + pixels[y].astype('>u2').tobytes() for y in range(height))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack('>I', len(body)) + kind + body + struct.pack('>I', zlib.crc32(kind + body))
    header = struct.pack('>IIBBBBB', width, height, 16, 2, 0, 0, 0)
    return b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) + chunk(b'IDAT', zlib.compress(raw)) + chunk(b'IEND', b'')


GREY_16 = np.array([[0, 1000, 32768, 65535]], dtype=np.uint16)
GREY_16_AS_8 = [0, 4, 128, 255]  # value * 255 / 65535


def write_image(mode: str, folder: Path) -> Path:
    path = folder / ('image.tiff' if mode in ('I;16B', 'I', 'F', 'CMYK') else 'image.png')
    if mode == 'I;16':
        Image.fromarray(GREY_16).save(path)
    elif mode == 'I;16B':
        Image.frombytes('I;16B', (4, 1), GREY_16.astype('>u2').tobytes()).save(path)
    elif mode == 'I':
        Image.fromarray(GREY_16.astype(np.int32)).save(path)
    elif mode == 'F':
        Image.fromarray(np.array([[0, 0.25, 0.5, 1]], np.float32)).save(path)
    elif mode == 'RGB48':
        path.write_bytes(png_48bit(np.array([[[0, 32768, 65535], [1000, 20000, 60000]]], np.uint16)))
    elif mode == 'CMYK':
        Image.frombytes('CMYK', (2, 1), bytes([100, 0, 0, 128, 0, 255, 0, 0])).save(path)
    elif mode == 'LA':
        Image.frombytes('LA', (2, 1), bytes([10, 255, 200, 0])).save(path)
    elif mode == 'P':
        image = Image.frombytes('P', (2, 1), bytes([0, 1]))
        image.putpalette([255, 0, 0, 0, 0, 255])
        image.save(path)
    elif mode == 'RGBA':
        Image.frombytes('RGBA', (2, 1), bytes([10, 20, 30, 255, 40, 50, 60, 0])).save(path)
    return path


@pytest.mark.parametrize('mode, expected', [
    ('I;16', [[[v] * 3 for v in GREY_16_AS_8]]),  # a 16-bit PNG: every pixel used to become 255
    ('I;16B', [[[v] * 3 for v in GREY_16_AS_8]]),
    ('I', [[[v] * 3 for v in GREY_16_AS_8]]),
    ('F', [[[0] * 3, [64] * 3, [128] * 3, [255] * 3]]),
    ('RGB48', [[[0, 128, 255], [3, 78, 234]]]),  # PIL keeps each channel's high byte
    ('CMYK', [[[77, 127, 127], [255, 0, 255]]]),  # (255 - c) * (255 - k) / 255
    ('LA', [[[10] * 3, [200] * 3]]),
    ('P', [[[255, 0, 0], [0, 0, 255]]]),
    ('RGBA', [[[10, 20, 30], [40, 50, 60]]]),  # alpha dropped
])
def test_images_convert_by_value_range(tmp_path, mode, expected):
    path = write_image(mode, tmp_path)
    image = cls_datasets.load_rgb(str(path))
    assert image.mode == 'RGB'
    np.testing.assert_array_equal(np.asarray(image), np.array(expected, dtype=np.uint8))


def test_non_finite_float_image_is_unreadable(tmp_path):
    path = tmp_path / 'nan.tiff'
    Image.fromarray(np.array([[0, np.nan]], np.float32)).save(path)
    with pytest.raises(cls_datasets.UnreadableImageError, match='NaN or infinite pixels'):
        cls_datasets.load_rgb(str(path))


# --- pretrained files named through timm ---------------------------------------------------------------------

@pytest.mark.parametrize('problem, message', [
    ('missing', 'model.pth does not exist'),
    ('empty', 'model.pth is empty'),
    ('truncated', 'cannot read checkpoint .*model.pth \\(truncated, damaged or not a PyTorch checkpoint'),
    ('wrong_kind', 'cannot read checkpoint .*model.pth \\(truncated, damaged or not a PyTorch checkpoint'),
])
def test_bad_pretrained_files_get_the_policy_messages(tmp_path, problem, message):
    """`pretrained_cfg_overlay=dict(file=bad)` read by timm alone gave a bare FileNotFoundError(''),
    EOFError('') or KeyError('101'); read by the policy (`read_pretrained_file`), the message names the file."""
    path = tmp_path / 'model.pth'
    if problem == 'empty':
        path.write_bytes(b'')
    elif problem == 'truncated':
        torch.save({'model': create_tiny().state_dict()}, path)
        path.write_bytes(path.read_bytes()[:3000])
    elif problem == 'wrong_kind':
        path.write_text('{"weights": [1, 2, 3]}')
    with pytest.raises((FileNotFoundError, checkpoint_io.CheckpointError), match=message):
        checkpoint_io.read_pretrained_file(True, dict(pretrained_cfg_overlay=dict(file=str(path))))


def test_pretrained_file_read_by_the_policy_loads_through_timm(tmp_path):
    source = create_tiny()
    path = tmp_path / 'model.pth'
    checkpoint_io.save_checkpoint({'model': source.state_dict(), 'epoch': 3}, path)
    kwargs = checkpoint_io.read_pretrained_file(True, dict(pretrained_cfg_overlay=dict(file=str(path))))
    model = timm.create_model(TINY_MODEL, pretrained=True, **kwargs)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in source.state_dict().items())
    untouched = dict(pretrained_cfg_overlay=dict(file=str(path)))
    assert checkpoint_io.read_pretrained_file(False, untouched) is untouched
