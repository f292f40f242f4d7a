"""classification/main.py options for training with fewer GPUs and from pretrained weights: gradient accumulation,
--finetune (another class count and input size), --layer-decay, --torchcompile and --channels-last."""
import argparse
import json
import math
import sys
from pathlib import Path

import pytest
import torch
from timm.utils import random_seed

from scalablevit.checkpoint import CheckpointError
from scalablevit.demo_data import make_demo_image_folder

import main as cls_main
from helpers import ROOT, free_port, run_command

CLASSIFICATION = ROOT / 'classification'

TINY = ['--model', 'scalable_vit_test', '--input-size', '32', '--device', 'cpu', '--num_workers', '0',
        '--warmup-epochs', '1', '--lr', '4e-3']


@pytest.fixture(scope='module')
def data(tmp_path_factory) -> Path:
    return make_demo_image_folder(tmp_path_factory.mktemp('data'), num_classes=4, train_per_class=16, val_per_class=4,
                                  size=32)


def train_in_process(argv):
    args = argparse.ArgumentParser(parents=[cls_main.get_args_parser()]).parse_args(argv)
    cls_main.main(args)


@pytest.mark.slow
def test_accumulation_matches_the_large_batch(data, tmp_path, capsys):
    """8 optimizer steps of 2 x 4 images equal 8 steps of 8 images to float32 rounding (no mixup, no drop path;
    scalable_vit_test has no BatchNorm; the sample order and augmentations are the same by construction)."""
    common = [*TINY, '--data-path', str(data), '--epochs', '1', '--mixup', '0', '--cutmix', '0', '--drop-path', '0',
              '--warmup-epochs', '0']
    train_in_process([*common, '--batch-size', '8', '--output_dir', str(tmp_path / 'large')])
    capsys.readouterr()
    train_in_process([*common, '--batch-size', '4', '--grad-accum-steps', '2', '--output_dir', str(tmp_path / 'acc')])
    assert 'global batch 8 (4 per process x 1 processes x 2 accumulation steps)' in capsys.readouterr().out
    large, accumulated = (torch.load(tmp_path / d / 'checkpoint.pth', weights_only=True) for d in ('large', 'acc'))
    random_seed(0, 0)  # main.py's seeding before it creates the model
    initial = cls_main.create_classifier(cls_main.parse_args([*common]), 4).state_dict()
    moved = 0
    for key, value in large['model'].items():
        torch.testing.assert_close(accumulated['model'][key], value, rtol=1e-4, atol=2e-6, msg=key)
        moved += not torch.equal(value, initial[key])
    assert moved > len(large['model']) // 2  # the weights did train


@pytest.mark.slow
def test_accumulation_under_ddp_matches_the_large_batch(data, tmp_path):
    """2 processes: 2 x 4 images per step (DDP all-reduces only on the second micro-batch, `no_sync` on the first)
    give the weights of 8 images per step, to float32 rounding."""
    common = [*TINY, '--data-path', str(data), '--epochs', '1', '--mixup', '0', '--cutmix', '0', '--drop-path', '0',
              '--warmup-epochs', '0']
    for name, batch in (('large', ['--batch-size', '8']), ('acc', ['--batch-size', '4', '--grad-accum-steps', '2'])):
        run_command([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2',
                     f'--master_port={free_port()}', 'main.py', *common, *batch, '--output_dir', tmp_path / name],
                    cwd=CLASSIFICATION, timeout=600)
    large, accumulated = (torch.load(tmp_path / d / 'checkpoint.pth', weights_only=True) for d in ('large', 'acc'))
    assert large['args']['grad_accum_steps'] == 1 and accumulated['args']['grad_accum_steps'] == 2
    for key, value in large['model'].items():
        torch.testing.assert_close(accumulated['model'][key], value, rtol=1e-4, atol=2e-6, msg=key)


def _count_all_reduces(rank: int, world_size: int, port: int, counts) -> None:
    """One rank of test_accumulation_all_reduces_once_per_optimizer_step: a real DDP model on gloo whose comm
    hook counts the gradient all-reduces of 3 optimizer steps over 7 micro-batches (steps of 3, 3 and 1)."""
    import torch.distributed as dist
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    import engine
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank, world_size=world_size)
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 2))
    calls = []

    def counting_hook(state, bucket):
        calls.append(1)
        return allreduce_hook(state, bucket)

    model.register_comm_hook(None, counting_hook)  # None: the default process group
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = [(torch.randn(2, 4), torch.tensor([0, 1])) for _ in range(7)]
    step = engine.TrainStep(torch.nn.CrossEntropyLoss(), optimizer, torch.device('cpu'), accum_steps=3,
                            ddp_model=model)
    stats, stopped = engine.train_one_epoch(model, step, loader, 0)
    counts[rank] = (len(calls), stopped, stats['loss'])
    dist.destroy_process_group()


@pytest.mark.slow
def test_accumulation_all_reduces_once_per_optimizer_step():
    """DDP all-reduces the gradients once per optimizer step, not per micro-batch: the forward of every
    micro-batch but a step's last runs under `no_sync` too (DDP prepares the reduction in the forward)."""
    import torch.multiprocessing as mp
    counts = mp.Manager().dict()
    mp.spawn(_count_all_reduces, args=(2, free_port(), counts), nprocs=2)
    assert [counts[rank][0] for rank in range(2)] == [3, 3]
    assert not counts[0][1] and counts[0][2] > 0


def test_mixup_draws_once_per_optimizer_step():
    """With accumulation every micro-batch of a step is mixed with the same lambda."""
    from engine import StepMixup
    mixup = StepMixup(mixup_alpha=0.8, cutmix_alpha=0.0, num_classes=4, label_smoothing=0.0)
    lams = []
    for step in range(3):
        mixup.next_step()
        for _ in range(2):
            x = torch.ones(2, 3, 8, 8)
            x[1] = 0
            _, target = mixup(x, torch.tensor([0, 1]))
            lams.append(round(target[0, 0].item(), 6))
    assert lams[0] == lams[1] and lams[2] == lams[3] and lams[4] == lams[5] and len(set(lams)) == 3


@pytest.fixture(scope='module')
def pretrained(data, tmp_path_factory) -> Path:
    """A small trained checkpoint with EMA weights (4 classes, 32 px)."""
    out = tmp_path_factory.mktemp('pretrained')
    train_in_process([*TINY, '--data-path', str(data), '--output_dir', str(out), '--epochs', '1', '--batch-size',
                      '8', '--model-ema', '--model-ema-decay', '0.9'])
    return out / 'checkpoint.pth'


class Captured(Exception):
    pass


def test_finetune_to_other_classes_and_size(pretrained, tmp_path, monkeypatch, capsys):
    """--finetune into 5 classes at 96 px: every tensor but the last classifier layer equals the checkpoint's EMA
    weights (the EMA rule), that layer keeps its fresh initialisation, and the log names it; --layer-decay
    scales the lr of earlier layer groups down."""
    five = make_demo_image_folder(tmp_path / 'five', num_classes=5, train_per_class=4, val_per_class=2, size=96)
    captured = {}

    def capture(model, train_step, *args, **kwargs):
        captured['state'] = {k: v.clone() for k, v in model.state_dict().items()}
        captured['lr_scales'] = sorted({group.get('lr_scale', 1.0) for group in train_step.optimizer.param_groups})
        raise Captured

    monkeypatch.setattr(cls_main, 'train_one_epoch', capture)
    with pytest.raises(Captured):
        train_in_process([*TINY, '--input-size', '96', '--data-path', str(five), '--batch-size', '4', '--epochs',
                          '1', '--finetune', str(pretrained), '--layer-decay', '0.75'])
    log = capsys.readouterr().out
    assert "Fine-tuning from the 'model_ema' weights" in log
    assert "not loaded: ['head.3.bias', 'head.3.weight'] (re-initialised: another class count)" in log
    checkpoint = torch.load(pretrained, weights_only=True)
    source, state = checkpoint['model_ema'], captured['state']
    assert state['head.3.weight'].shape == (5, source['head.3.weight'].shape[1])
    assert not torch.equal(source['head.0.weight'], checkpoint['model']['head.0.weight'])  # EMA: not the raw ones
    for key, value in source.items():
        if not key.startswith('head.3.'):
            assert torch.equal(state[key], value), key
    assert len(captured['lr_scales']) > 2 and captured['lr_scales'][-1] == 1.0 and captured['lr_scales'][0] < 0.5


@pytest.mark.parametrize('model', ['scalable_vit_test', 'swin_vsa_test', 'scope_vit_test', 'vitaev2_vsa_test'])
def test_finetune_loads_every_family(tmp_path, model):
    """Every family: a 4-class checkpoint into a 5-class model; only the classifier's last layer is left out."""
    import timm
    source = timm.create_model(model, num_classes=4).state_dict()
    torch.save({'model': source}, tmp_path / 'source.pth')
    target = timm.create_model(model, num_classes=5)
    cls_main.load_finetune_weights(target, str(tmp_path / 'source.pth'), use_ema=None)
    state = target.state_dict()
    differing = sorted(k for k, v in source.items() if v.shape != state[k].shape or not torch.equal(v, state[k]))
    classifier = target.pretrained_cfg['classifier']
    assert differing == [f'{classifier}.bias', f'{classifier}.weight']


def test_finetune_refuses_another_variant(pretrained, data):
    with pytest.raises(CheckpointError, match='only the classifier head.3 may differ'):
        train_in_process([*TINY, '--model-kwargs', 'embed_dims=(16,32,64,96)', '--data-path', str(data),
                          '--batch-size', '8', '--epochs', '1', '--finetune', str(pretrained)])


@pytest.mark.slow
def test_torchcompile_and_channels_last_train(data, tmp_path, capsys):
    """--torchcompile (the eager backend: no compiler needed) with --channels-last trains, and the checkpoint
    holds the plain module's keys."""
    train_in_process([*TINY, '--data-path', str(data), '--output_dir', str(tmp_path), '--epochs', '1',
                      '--batch-size', '8', '--torchcompile', 'eager', '--channels-last'])
    checkpoint = torch.load(tmp_path / 'checkpoint.pth', weights_only=True)
    assert not any(k.startswith('_orig_mod.') for k in checkpoint['model'])
    assert '* Acc@1' in capsys.readouterr().out


def test_tensorboard_scalars_read_back(data, tmp_path):
    """--log-tensorboard: each epoch's train/test scalars as TensorBoard events, readable while the run goes on."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    train_in_process([*TINY, '--data-path', str(data), '--output_dir', str(tmp_path), '--epochs', '2',
                      '--batch-size', '8', '--log-tensorboard'])
    events = EventAccumulator(str(tmp_path / 'tensorboard'))
    events.Reload()
    assert {'train/loss', 'train/lr', 'test/acc1', 'test/loss'} <= set(events.Tags()['scalars'])
    logged = [json.loads(line) for line in (tmp_path / 'log.txt').read_text().splitlines()]
    accuracy = events.Scalars('test/acc1')
    assert [e.step for e in accuracy] == [0, 1]
    assert [e.value for e in accuracy] == pytest.approx([r['test_acc1'] for r in logged])


def test_amp_bfloat16_on_cpu_trains(data, tmp_path, capsys):
    """--amp on CPU: bfloat16 autocast (float16 with the loss scaler); the loss falls over 3 epochs."""
    for dtype in ('bfloat16', 'float16'):
        out = tmp_path / dtype
        train_in_process([*TINY, '--data-path', str(data), '--output_dir', str(out), '--epochs', '3',
                          '--batch-size', '8', '--amp', '--amp-dtype', dtype, '--mixup', '0', '--cutmix', '0',
                          '--warmup-epochs', '0', '--lr', '2e-2'])
        losses = [json.loads(line)['train_loss'] for line in (out / 'log.txt').read_text().splitlines()]
        assert all(map(math.isfinite, losses)) and losses[-1] < losses[0], (dtype, losses)
        checkpoint = torch.load(out / 'checkpoint.pth', weights_only=True)
        assert (checkpoint['scaler'] is not None) == (dtype == 'float16')
