"""classification/: distributed training, evaluation, throughput, crash-safe resume and clear errors, on CPU."""
import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from scalablevit.checkpoint import CheckpointError
from scalablevit.demo_data import make_demo_image_folder

import image_data as cls_datasets
import main as cls_main
from errors import UserInputError
from helpers import free_port

CLASSIFICATION = Path(__file__).resolve().parents[1] / 'classification'

TINY_MODEL = ['--model', 'scalable_vit_test', '--input-size', '32']
FAST = ['--batch-size', '8', '--warmup-epochs', '1', '--lr', '4e-3', '--device', 'cpu']


@pytest.fixture(scope='module')
def data(tmp_path_factory) -> Path:
    return make_demo_image_folder(tmp_path_factory.mktemp('data'), num_classes=4, train_per_class=16, val_per_class=8,
                                  size=32)


def run(args, timeout=300, **kwargs) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')
    return subprocess.run(args, cwd=CLASSIFICATION, capture_output=True, text=True, timeout=timeout, env=env,
                          **kwargs)


def train_command(data, out, epochs, *extra):
    return [sys.executable, 'main.py', *TINY_MODEL, *FAST, '--data-path', str(data), '--output_dir', str(out),
            '--epochs', str(epochs), '--num_workers', '1', *extra]


def test_model_recipes_are_defaults_under_explicit_flags():
    """Each family's TRAIN_RECIPES and each model's pretrained cfg give the defaults; explicit flags win."""
    swin = cls_main.parse_args(['--model', 'swin_tiny_vsa_patch4_window7_224'])
    assert (swin.drop_path, swin.warmup_epochs, swin.model_ema) == (0.2, 20, True)
    assert (swin.input_size, swin.eval_crop_ratio, swin.interpolation) == (224, 0.9, 'bicubic')
    small = cls_main.parse_args(['--model', 'swin_small_vsa_patch4_window7_224', '--no-model-ema', '--drop-path', '0.1',
                                 '--eval-crop-ratio', '0.95'])
    assert (small.drop_path, small.warmup_epochs, small.model_ema, small.eval_crop_ratio) == (0.1, 20, False, 0.95)
    scope = cls_main.parse_args(['--model', 'scope_vit_tiny'])
    assert (scope.input_size, scope.eval_crop_ratio, scope.drop_path, scope.model_ema) == (256, 0.9, 0.1, False)
    vitae = cls_main.parse_args(['--model', 'vitaev2_vsa_48m'])
    assert (vitae.drop_path, vitae.warmup_epochs, vitae.weight_decay, vitae.input_size) == (0.25, 10, 0.055, 224)
    deit = cls_main.parse_args(['--model', 'scalable_vit_small', '--input-size', '192'])
    assert (deit.drop_path, deit.warmup_epochs, deit.model_ema, deit.input_size) == (0.2, 5, False, 192)
    assert (deit.eval_crop_ratio, deit.mean) == (0.875, (0.485, 0.456, 0.406))
    other = cls_main.parse_args(['--model', 'resnet18'])  # a timm model of no family: DeiT's recipe, timm's cfg
    assert (other.drop_path, other.warmup_epochs, other.eval_crop_ratio) == (None, 5, 0.95)


def test_unknown_model_lists_every_family():
    with pytest.raises(UserInputError, match='scope_vit_tiny.*(any timm model name also works)'):
        cls_main.check_model_name('scalable_vit_huge')


def run_in_process(argv):
    args = argparse.ArgumentParser(parents=[cls_main.get_args_parser()]).parse_args(argv)
    cls_main.main(args)


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_ddp_two_processes_gloo(data, tmp_path):
    out = tmp_path / 'ddp'
    result = run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2', f'--master_port={free_port()}',
                  'main.py', *TINY_MODEL, *FAST, '--data-path', str(data), '--output_dir', str(out),
                  '--epochs', '2', '--num_workers', '0', '--dist-eval', '--model-ema'])
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'distributed init (rank 0 of 2, gloo)' in result.stdout
    logs = [json.loads(line) for line in (out / 'log.txt').read_text().splitlines()]
    assert [row['epoch'] for row in logs] == [0, 1]
    checkpoint = torch.load(out / 'checkpoint.pth', weights_only=True)
    assert checkpoint['epoch'] == 1 and len(checkpoint['rng']) == 2 and checkpoint['model_ema'] is not None
    # repeated augmentation: each rank sees 64 * 3 / 2 samples -> floor(64 / 2) = 32 selected, 4 steps of 8
    assert 'Epoch: [0] [3/4]' in result.stdout


@pytest.mark.slow
def test_legacy_launcher_use_env(data, tmp_path):
    result = run([sys.executable, '-m', 'torch.distributed.launch', '--use_env', '--nproc_per_node=2',
                  f'--master_port={free_port()}', 'main.py', *TINY_MODEL, *FAST, '--data-path', str(data),
                  '--output_dir', str(tmp_path / 'legacy'), '--epochs', '1', '--num_workers', '0'])
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'distributed init (rank 0 of 2, gloo)' in result.stdout


@pytest.mark.slow
def test_errors_on_other_ranks_stay_visible(data, tmp_path):
    """Only rank 0 logs progress, but an error on rank 1 (an unreadable image in its share of the data)
    still reaches stderr with the rank named."""
    root = make_demo_image_folder(tmp_path / 'broken', num_classes=2, train_per_class=8, val_per_class=2, size=32)
    for image in (root / 'train' / 'class_01').iterdir():
        image.write_bytes(b'not an image')
    result = run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2',
                  f'--master_port={free_port()}', 'main.py', *TINY_MODEL, *FAST, '--batch-size', '2',
                  '--data-path', str(root), '--epochs', '1', '--num_workers', '0', '--no-repeated-aug'])
    assert result.returncode != 0
    assert 'error: cannot read image' in result.stderr
    assert result.stdout.count('distributed init (rank') == 1  # progress from rank 0 only


@pytest.fixture(scope='module')
def trained(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp('trained')
    run_in_process(train_command(data, out, 2)[2:])
    return out


@pytest.mark.slow
def test_evaluate_saved_checkpoint(data, trained):
    result = run([sys.executable, 'main.py', *TINY_MODEL, '--device', 'cpu', '--data-path', str(data),
                  '--eval', '--resume', str(trained / 'checkpoint.pth'), '--num_workers', '0'])
    assert result.returncode == 0, result.stderr[-3000:]
    last = json.loads((trained / 'log.txt').read_text().splitlines()[-1])
    assert f"* Acc@1 {last['test_acc1']:.3f} Acc@5 {last['test_acc5']:.3f} loss {last['test_loss']:.3f}" \
        in result.stdout


def test_evaluate_released_format_checkpoint(data, trained, tmp_path, capsys):
    """The released checkpoints hold {'model': state_dict} (plus DeiT's argparse args)."""
    weights = torch.load(trained / 'checkpoint.pth', weights_only=True)['model']
    released = tmp_path / 'released.pth'
    torch.save({'model': weights, 'args': argparse.Namespace(model='scalable_vit_small')}, released)
    run_in_process([*TINY_MODEL, '--device', 'cpu', '--data-path', str(data), '--eval', '--resume', str(released),
                    '--num_workers', '0'])
    last = json.loads((trained / 'log.txt').read_text().splitlines()[-1])
    assert f"* Acc@1 {last['test_acc1']:.3f}" in capsys.readouterr().out


def test_throughput_mode(data, capsys):
    run_in_process([*TINY_MODEL, '--device', 'cpu', '--data-path', str(data), '--batch-size', '16',
                    '--throughput', '--throughput-warmup', '2', '--throughput-iters', '3', '--num_workers', '0'])
    out = capsys.readouterr().out
    assert 'batch_size 16 throughput' in out
    assert float(out.split('throughput ')[1].split(' img/s')[0]) > 0


def test_eval_follows_the_ema_rule(data, trained, tmp_path, capsys):
    """--eval takes the EMA weights of a checkpoint that has them, --no-use-ema the raw ones."""
    checkpoint = torch.load(trained / 'checkpoint.pth', weights_only=True)
    raw = checkpoint['model']
    checkpoint['model_ema'] = {k: torch.zeros_like(v) if v.is_floating_point() else v for k, v in raw.items()}
    path = tmp_path / 'with_ema.pth'
    torch.save(checkpoint, path)
    argv = [*TINY_MODEL, '--device', 'cpu', '--data-path', str(data), '--eval', '--resume', str(path),
            '--num_workers', '0']
    last = json.loads((trained / 'log.txt').read_text().splitlines()[-1])
    logged = f"* Acc@1 {last['test_acc1']:.3f} Acc@5 {last['test_acc5']:.3f} loss {last['test_loss']:.3f}"
    run_in_process(argv + ['--no-use-ema'])
    out = capsys.readouterr().out
    assert "Loaded the 'model' weights" in out and logged in out
    run_in_process(argv)
    out = capsys.readouterr().out
    assert "Loaded the 'model_ema' weights" in out and logged not in out and 'loss 1.386' in out  # zeros: ln 4
    with pytest.raises(CheckpointError, match='has no EMA weights'):
        run_in_process([*argv[:-4], '--resume', str(trained / 'checkpoint.pth'), '--num_workers', '0',
                        '--use-ema'])


@pytest.mark.slow
@pytest.mark.parametrize('model', ['scalable_vit_test', 'swin_vsa_test', 'scope_vit_test', 'vitaev2_vsa_test'])
def test_killed_runs_resume_to_bit_identical_weights(data, tmp_path, model):
    """SIGKILL at several points (mid-epoch, during start-up), restart the same command each time: the
    final checkpoint and log equal those of an uninterrupted run, bit for bit (VSA's grid_sample included:
    deterministic on CPU)."""
    epochs = 4
    reference = tmp_path / 'reference'
    result = run(train_command(data, reference, epochs, '--model-ema', '--model', model))
    assert result.returncode == 0, result.stderr[-3000:]

    out = tmp_path / 'killed'
    command = train_command(data, out, epochs, '--model-ema', '--model', model)
    env = dict(os.environ, OMP_NUM_THREADS='1')
    kills = 0
    for wait in ('after-epoch-0', 'after-epoch-1', 2.0):
        process = subprocess.Popen(command, cwd=CLASSIFICATION, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, env=env)
        deadline = time.time() + 120
        if isinstance(wait, str):  # kill shortly after the given epoch's checkpoint lands, i.e. mid-epoch
            target = int(wait.rsplit('-', 1)[1])
            while time.time() < deadline and process.poll() is None:
                ckpt = out / 'checkpoint.pth'
                if ckpt.exists() and torch.load(ckpt, weights_only=True)['epoch'] >= target:
                    break
                time.sleep(0.05)
            time.sleep(0.3)
        else:
            time.sleep(wait)
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.wait()
    assert kills >= 2
    result = run(command)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'Resuming training at epoch' in result.stdout

    final, expected = (torch.load(d / 'checkpoint.pth', weights_only=True) for d in (out, reference))
    assert final['epoch'] == expected['epoch'] == epochs - 1
    for part in ('model', 'model_ema'):
        for key, value in expected[part].items():
            assert torch.equal(final[part][key], value), f'{part}.{key}'
    for index, state in expected['optimizer']['state'].items():
        for name, value in state.items():
            assert torch.equal(final['optimizer']['state'][index][name], value)
    assert (out / 'log.txt').read_text() == (reference / 'log.txt').read_text()
    assert not list(out.glob('.*.tmp-*'))


def test_non_finite_loss_stops_and_keeps_last_checkpoint(data, trained, tmp_path, monkeypatch):
    out = tmp_path / 'nan'
    out.mkdir()
    for name in ('checkpoint.pth', 'log.txt'):
        (out / name).write_bytes((trained / name).read_bytes())
    before = {name: file_digest(out / name) for name in ('checkpoint.pth', 'log.txt')}

    class NaNLoss(torch.nn.Module):
        def forward(self, outputs, targets):
            return outputs.sum() * float('nan')

    monkeypatch.setattr(cls_main, 'SoftTargetCrossEntropy', NaNLoss)
    with pytest.raises(cls_main.NonFiniteLossError, match='loss is nan at epoch 2, step 0'):
        run_in_process([*TINY_MODEL, *FAST, '--data-path', str(data), '--output_dir', str(out), '--epochs', '4',
                        '--num_workers', '0', '--override-resume'])
    assert {name: file_digest(out / name) for name in before} == before


@pytest.mark.slow
def test_non_finite_loss_exit_code(data, trained, tmp_path):
    """From the command line: exit status 3 and a message, not a traceback."""
    out = tmp_path / 'nan_cli'
    out.mkdir()
    checkpoint = torch.load(trained / 'checkpoint.pth', weights_only=True)
    del checkpoint['tensor_sha256']  # edited on purpose: Adam's second moments made negative, so the first step
    for state in checkpoint['optimizer']['state'].values():  # takes a square root of them and turns NaN
        state['exp_avg_sq'].fill_(-1.0)
    torch.save(checkpoint, out / 'checkpoint.pth')
    before = file_digest(out / 'checkpoint.pth')
    result = run(train_command(data, out, 4, '--override-resume'))
    assert result.returncode == 3
    assert 'error: loss is nan at epoch 2' in result.stderr and 'Traceback' not in result.stderr
    assert file_digest(out / 'checkpoint.pth') == before


@pytest.mark.parametrize('problem, message', [
    ('missing_path', 'does not exist: point it at the folder holding train/ and val/'),
    ('no_val', 'must contain train/ and val/ folders'),
    ('flat_layout', 'has no class folders: images must be in train/<class>/<image>'),
    ('empty_class', 'class folders without images'),
    ('class_mismatch', 'train/ and val/ class folders differ'),
    ('unknown_model', 'unknown --model no_such_model'),
    ('odd_batch', 'must be even for mixup/cutmix'),
])
def test_bad_input_is_reported_clearly(data, tmp_path, problem, message):
    root = tmp_path / 'bad'
    if problem != 'missing_path':
        make_demo_image_folder(root, num_classes=2, train_per_class=8, val_per_class=2, size=32)
    extra = []
    if problem == 'no_val':
        for f in (root / 'val').rglob('*'):
            if f.is_file():
                f.unlink()
        for d in sorted((root / 'val').rglob('*'), reverse=True):
            d.rmdir()
        (root / 'val').rmdir()
    elif problem == 'flat_layout':
        for f in (root / 'train' / 'class_00').iterdir():
            f.rename(root / 'train' / f'loose_{f.name}')
        for d in (root / 'train').iterdir():
            if d.is_dir():
                for f in d.iterdir():
                    f.unlink()
                d.rmdir()
    elif problem == 'empty_class':
        (root / 'train' / 'class_05').mkdir()
    elif problem == 'class_mismatch':
        (root / 'val' / 'class_01').rename(root / 'val' / 'class_09')
    elif problem == 'unknown_model':
        extra = ['--model', 'no_such_model']
    elif problem == 'odd_batch':
        extra = ['--batch-size', '7']
    with pytest.raises(UserInputError, match=message.replace('(', r'\(').replace(')', r'\)')):
        run_in_process([*TINY_MODEL, *FAST, '--data-path', str(root), '--epochs', '1', '--num_workers', '0',
                        *extra])


@pytest.mark.slow
def test_bad_input_exit_code_and_message(tmp_path):
    result = run([sys.executable, 'main.py', *TINY_MODEL, *FAST, '--data-path', str(tmp_path / 'nowhere')])
    assert result.returncode == 2
    assert result.stderr.startswith('error: --data-path') and 'Traceback' not in result.stderr


def test_checkpoint_for_another_model_names_keys(data, trained):
    with pytest.raises(CheckpointError, match=r'another variant') as error:
        run_in_process(['--model', 'scalable_vit_small', '--device', 'cpu', '--data-path', str(data), '--eval',
                        '--resume', str(trained / 'checkpoint.pth'), '--num_workers', '0'])
    assert 'patch_embeds.0.proj.weight: checkpoint (16, 3, 7, 7) vs model (64, 3, 7, 7)' in str(error.value)


def test_checkpoint_for_another_class_count_names_keys(data, trained, tmp_path):
    root = make_demo_image_folder(tmp_path / 'three', num_classes=3, train_per_class=8, val_per_class=2, size=32)
    with pytest.raises(CheckpointError, match='with 3 classes') as error:
        run_in_process([*TINY_MODEL, '--device', 'cpu', '--data-path', str(root), '--eval',
                        '--resume', str(trained / 'checkpoint.pth'), '--num_workers', '0'])
    assert 'head.3.weight: checkpoint (4, 64) vs model (3, 64)' in str(error.value)


def test_missing_checkpoint(data):
    with pytest.raises(FileNotFoundError, match='checkpoint /no/such.pth does not exist'):
        run_in_process([*TINY_MODEL, '--device', 'cpu', '--data-path', str(data), '--eval',
                        '--resume', '/no/such.pth', '--num_workers', '0'])


@pytest.mark.parametrize('mode', ['L', 'RGBA', 'CMYK', 'P', 'I;16'])
def test_non_rgb_images_are_converted(tmp_path, mode):
    path = tmp_path / ('image.tiff' if mode in ('CMYK', 'I;16') else 'image.png')
    Image.new(mode, (10, 12)).save(path)
    image = cls_datasets.load_rgb(str(path))
    assert image.mode == 'RGB' and image.size == (10, 12)


def test_unreadable_image_named_or_skipped(tmp_path, capsys):
    root = make_demo_image_folder(tmp_path / 'broken', num_classes=2, train_per_class=8, val_per_class=2, size=32)
    broken = root / 'train' / 'class_01' / '0003.jpg'
    broken.write_bytes(b'not an image')
    Image.new('L', (32, 32), 128).save(root / 'train' / 'class_00' / 'gray.png')
    Image.new('RGBA', (32, 32)).save(root / 'train' / 'class_00' / 'alpha.png')
    # batch 2 without drop-outs of the last partial batch: every image is visited in the epoch
    argv = [*TINY_MODEL, *FAST, '--batch-size', '2', '--data-path', str(root), '--epochs', '1',
            '--num_workers', '0']
    with pytest.raises(cls_datasets.UnreadableImageError, match=f'cannot read image {broken}'):
        run_in_process(argv)
    with pytest.warns(UserWarning, match='skipped an unreadable image'):
        run_in_process(argv + ['--skip-bad-images'])
    assert 'skipped 1 unreadable training images so far' in capsys.readouterr().out


def test_plot_logs(trained, tmp_path):
    result = run([sys.executable, '../tools/plot_logs.py', str(trained / 'log.txt'), '--out', str(tmp_path / 'c.png')])
    assert result.returncode == 0, result.stderr
    image = np.asarray(Image.open(tmp_path / 'c.png').convert('L'))
    assert image.shape[1] > 1000 and len(np.unique(image)) > 10


def test_eval_and_finetune_read_published_safetensors_and_hub_folders(data, trained, tmp_path, capsys):
    """tools/publish_checkpoint.py's outputs load where main.py reads checkpoints: --eval --resume of a
    .safetensors file and of a hub folder give the accuracy of the EMA weights they hold."""
    from publish_checkpoint import publish
    written = publish(str(trained / 'checkpoint.pth'), str(tmp_path / 'tiny'), formats=['safetensors'],
                      hub_dir=str(tmp_path / 'hub'))
    safetensors_file = next(Path(p) for p in written if str(p).endswith('.safetensors') and 'hub' not in str(p))
    argv = [*TINY_MODEL, '--device', 'cpu', '--data-path', str(data), '--eval', '--num_workers', '0']
    run_in_process([*argv, '--resume', str(trained / 'checkpoint.pth')])
    expected = capsys.readouterr().out.split('* Acc@1')[1].splitlines()[0]
    for source in (safetensors_file, tmp_path / 'hub'):
        run_in_process([*argv, '--resume', str(source)])
        assert capsys.readouterr().out.split('* Acc@1')[1].splitlines()[0] == expected, source
