"""The OpenMMLab layer (`scalablevit.openmmlab`): the generic backbone wrapper, every paper config's training
step, mmengine compatibility, and 2-process DDP through the users' `dist_train.sh` / `dist_test.sh` on CPU."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

pytest.importorskip('mmdet')
pytest.importorskip('mmseg')
from mmengine.config import Config  # noqa: E402
from mmengine.logging import HistoryBuffer  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402

import scalablevit.openmmlab  # noqa: E402,F401  (registers the backbone)
from scalablevit.openmmlab import ScalableViTBackbone, ScopeViTBackbone, use_checkpoint_policy  # noqa: E402

from helpers import ROOT, TINY_MODEL, free_port, run_command  # noqa: E402

DETECTION, SEGMENTATION = ROOT / 'detection', ROOT / 'segmentation'


def _paper_configs() -> list:
    """The paper configs of every family (configs/*.py, configs/<family>/*.py), not the CPU smoke configs. The
    fast tier keeps the first of each (head, backbone family) pair; the other sizes and schedules (the same code
    at other widths or epochs) and the Cascade heads (4conv1fc: ~30 s a step on CPU) run in the slow tier."""
    configs, seen = [], set()
    for task in (DETECTION, SEGMENTATION):
        for path in sorted(task.glob('configs/**/*.py')):
            if 'demo' in path.parts:
                continue
            head, backbone = path.stem.split('_')[:2]
            pair = (head, backbone.rsplit('-', 1)[0])  # scalablevit-b -> scalablevit, vitaev2-s-vsa -> vitaev2-s
            fast = pair not in seen and not head.startswith('cascade')
            seen.add(pair)
            configs.append(path if fast else pytest.param(path, marks=pytest.mark.slow))
    return configs


PAPER_CONFIGS = _paper_configs()


# --- every paper config: one training step reaches every trainable parameter -------------------------------

def shallow_config(config: Path) -> Config:
    """The config with its backbone at full width but two blocks per stage (ScalableViT: one SSA, one IWSA)
    and no pretrained weights: same heads, necks and stage widths, a fraction of the compute."""
    from mmdet.registry import MODELS
    cfg = Config.fromfile(str(config))
    backbone = cfg.model.backbone
    backbone.arch = dict(MODELS.get(backbone.type).arch_settings[backbone.arch], depths=(2, 2, 2, 2))
    backbone.init_cfg = None
    return cfg


def detection_batch(model, num_classes: int):
    from mmdet.testing import demo_mm_inputs
    torch.manual_seed(0)
    packed = demo_mm_inputs(batch_size=2, image_shapes=[(3, 128, 160)] * 2, num_items=[3, 2],
                            num_classes=num_classes, with_mask=True)
    return model.data_preprocessor(packed, True)


def segmentation_batch(model, num_classes: int):
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    generator = torch.Generator().manual_seed(0)
    inputs, samples = [], []
    for _ in range(2):
        inputs.append(torch.randint(0, 256, (3, 128, 128), generator=generator, dtype=torch.uint8))
        sample = SegDataSample(metainfo=dict(img_shape=(128, 128), ori_shape=(128, 128), pad_shape=(128, 128)))
        sample.gt_sem_seg = PixelData(data=torch.randint(0, num_classes, (1, 128, 128), generator=generator))
        samples.append(sample)
    return model.data_preprocessor(dict(inputs=inputs, data_samples=samples), True)


@pytest.mark.parametrize('config', PAPER_CONFIGS, ids=lambda p: p.stem)
def test_paper_config_training_step_reaches_every_parameter(config):
    """A parameter outside the loss's graph stops multi-GPU training (DDP: "Expected to have finished
    reduction in the prior iteration"); the RetinaNet configs once left the stage-0 output norm out."""
    cfg = shallow_config(config)
    if DETECTION in config.parents:
        from mmdet.registry import MODELS
        init_default_scope('mmdet')
        model = MODELS.build(cfg.model).train()
        head = cfg.model.get('bbox_head') or cfg.model.roi_head.bbox_head
        data = detection_batch(model, (head[0] if isinstance(head, list) else head).num_classes)  # cascade: 3 heads
    else:
        from mmseg.registry import MODELS
        init_default_scope('mmseg')
        cfg.model.data_preprocessor.size = (128, 128)
        model = MODELS.build(cfg.model).train()
        data = segmentation_batch(model, cfg.model.decode_head.num_classes)
    loss, _ = model.parse_losses(model(**data, mode='loss'))
    assert torch.isfinite(loss)
    loss.backward()
    without_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not without_grad, f'{config.stem}: no gradient for {without_grad}'
    if cfg.model.backbone.get('norm_outputs', True):
        assert any(n.startswith('backbone.out_norms.') for n, _ in model.named_parameters())


# --- the generic backbone wrapper ---------------------------------------------------------------------------

def test_backbone_outputs_and_options():
    torch.manual_seed(0)
    backbone = ScalableViTBackbone(arch='test', out_indices=(3, 1)).eval()
    assert backbone.out_indices == (1, 3)
    with torch.no_grad():
        outs = backbone(torch.randn(2, 3, 97, 131))
    assert [tuple(o.shape) for o in outs] == [(2, 32, 13, 17), (2, 128, 4, 5)]
    # each output is layer-normalised over channels
    torch.testing.assert_close(outs[0].mean(1), torch.zeros(2, 13, 17), atol=1e-5, rtol=0)

    raw = ScalableViTBackbone(arch='test', out_indices=(1,), norm_outputs=False).eval()
    raw.load_state_dict(backbone.state_dict(), strict=False)
    with torch.no_grad():
        (out,) = raw(torch.randn(1, 3, 64, 64))
    assert out.mean(1).abs().max() > 1e-3  # not normalised

    pruned = ScalableViTBackbone(arch='test', out_indices=(0, 1))
    assert len(pruned.stages) == 2 and not any(k.startswith('stages.2') for k in pruned.state_dict())

    with pytest.raises(ValueError, match="arch must be one of"):
        ScalableViTBackbone(arch='tiny')


def test_every_package_backbone_is_named_in_backbone_py():
    """Where a config's reader looks for `type='...Backbone'`: each family of the package has its backbone as a
    module attribute of backbone.py (the registered class), in its `__all__`, and in its docstring's table with
    the model class and the `arch` variants, default first."""
    from mmdet.registry import MODELS

    from scalablevit import FAMILIES
    from scalablevit.openmmlab import backbone as module
    package_families = [f for f in FAMILIES if f.model_cls.__module__.startswith('scalablevit.')]
    assert len(package_families) >= 4
    for family in package_families:
        name = family.backbone_name
        assert getattr(module, name, None) is module.BACKBONES[name] is MODELS.get(name), name
        assert name in module.__all__
        rows = [line.split(maxsplit=2) for line in module.__doc__.splitlines() if line.split()[:1] == [name]]
        variants = [family.default_arch] + [v for v in family.arch_settings if v != family.default_arch]
        assert rows == [[name, f'{family.model_cls.__module__}.{family.model_cls.__name__}',
                         ', '.join(map(repr, variants))]], name


def classifier_checkpoint(path: Path, **extra) -> dict:
    """Save a tiny classifier's weights as `main.py` does; returns its state dict."""
    torch.manual_seed(0)
    classifier = timm.create_model(TINY_MODEL)
    torch.save({'model': classifier.state_dict(), **extra}, path)
    return classifier.state_dict()


def assert_backbone_holds(backbone, state_dict, prefix=''):
    for key, value in backbone.state_dict().items():
        if not key.startswith('out_norms.'):
            assert torch.equal(value, state_dict[prefix + key]), key


def test_backbone_loads_imagenet_checkpoint(tmp_path):
    path = tmp_path / 'released.pth'
    weights = classifier_checkpoint(path)
    backbone = ScalableViTBackbone(arch='test', init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    backbone.init_weights()
    assert_backbone_holds(backbone, weights)

    other = timm.create_model(TINY_MODEL, embed_dims=(32, 64, 128, 256))
    torch.save({'model': other.state_dict()}, path)
    with pytest.raises(ValueError, match='patch_embeds.0.proj.weight: checkpoint'):
        ScalableViTBackbone(arch='test', init_cfg=dict(type='Pretrained', checkpoint=str(path))).init_weights()


def test_backbone_init_follows_the_ema_rule(tmp_path):
    path = tmp_path / 'with_ema.pth'
    raw = classifier_checkpoint(path)
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in raw.items()}
    torch.save({'model': raw, 'model_ema': ema}, path)
    for use_ema, expected in ((None, ema), (True, ema), (False, raw)):
        init_cfg = dict(type='Pretrained', checkpoint=str(path), use_ema=use_ema)
        backbone = ScalableViTBackbone(arch='test', init_cfg=init_cfg)
        backbone.init_weights()
        assert_backbone_holds(backbone, expected)

    classifier_checkpoint(path)  # no EMA weights
    with pytest.raises(ValueError, match='no EMA weights'):
        ScalableViTBackbone(arch='test', init_cfg=dict(type='Pretrained', checkpoint=str(path),
                                                       use_ema=True)).init_weights()


def test_backbone_loads_a_detector_checkpoint_by_prefix(tmp_path):
    torch.manual_seed(0)
    source = ScalableViTBackbone(arch='test')
    path = tmp_path / 'detector.pth'
    detector = {f'backbone.{k}': v for k, v in source.state_dict().items()}
    detector['neck.conv.weight'] = torch.ones(1)
    torch.save({'state_dict': detector, 'meta': {}}, path)
    backbone = ScalableViTBackbone(arch='test', init_cfg=dict(type='Pretrained', checkpoint=str(path),
                                                              prefix='backbone.'))
    backbone.init_weights()
    assert_backbone_holds(backbone, detector, prefix='backbone.')
    with pytest.raises(ValueError, match="no keys under prefix 'head.'"):
        ScalableViTBackbone(arch='test', init_cfg=dict(type='Pretrained', checkpoint=str(path),
                                                       prefix='head.')).init_weights()


def test_backbone_rejects_a_checkpoint_of_another_family(tmp_path):
    path = tmp_path / 'resnet.pth'
    torch.save({'state_dict': {'conv1.weight': torch.zeros(8, 3, 7, 7), 'fc.weight': torch.zeros(10, 8)}}, path)
    with pytest.raises(ValueError, match='none of the tensors of ScalableViTBackbone'):
        ScalableViTBackbone(arch='test', init_cfg=dict(type='Pretrained', checkpoint=str(path))).init_weights()


def test_scope_vit_backbone_keeps_batchnorm_statistics_and_loads_the_classifier(tmp_path):
    """ScopeViT through the generic wrapper: the stage BatchNorms' maps at any size, ImageNet weights by
    init_cfg, and with norm_eval every BatchNorm stays in eval mode while the rest trains."""
    torch.manual_seed(0)
    classifier = timm.create_model('scope_vit_test').eval()
    for module in classifier.modules():
        if isinstance(module, torch.nn.BatchNorm2d):  # statistics that differ from the defaults
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    path = tmp_path / 'scope_vit_test.pth'
    torch.save({'model': classifier.state_dict()}, path)
    backbone = ScopeViTBackbone(arch='test', norm_outputs=False, norm_eval=True,
                                init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    backbone.init_weights()
    backbone.train()
    batch_norms = [m for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert batch_norms and not any(m.training for m in batch_norms) and backbone.blocks1.training
    x = torch.randn(2, 3, 97, 131)
    backbone(x)  # a training-mode forward must not move the statistics
    backbone.eval()
    with torch.no_grad():
        outs = backbone(x)
        expected = classifier.forward_intermediates(x, intermediates_only=True)
    assert [o.shape[1:] for o in outs] == [(16, 25, 33), (32, 13, 17), (64, 7, 9), (128, 4, 5)]
    for out, ref in zip(outs, expected):
        torch.testing.assert_close(out, ref)


@pytest.mark.slow  # a subprocess
def test_model_package_never_imports_openmmlab():
    code = ('import sys, timm, scalablevit; timm.create_model("scalable_vit_test"); '
            'print(sorted({m.split(".")[0] for m in sys.modules} & {"mmengine", "mmcv", "mmdet", "mmseg"}))')
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == '[]'


def test_mmengine_checkpoints_load_with_weights_only(tmp_path):
    """mmengine calls a bare `torch.load` (weights_only=True since PyTorch 2.6); its message hub's
    HistoryBuffers must round-trip, and arbitrary callables must still be refused."""
    buffer = HistoryBuffer()
    for value in (1.0, 2.0, 4.0):
        buffer.update(value)
    path = tmp_path / 'iter_1.pth'
    with use_checkpoint_policy():
        torch.save({'message_hub': {'log_scalars': {'train/loss': buffer}}, 'meta': {'seed': 0}}, path)
        loaded = torch.load(path)['message_hub']['log_scalars']['train/loss']
        assert isinstance(loaded, HistoryBuffer) and loaded.mean() == pytest.approx(7 / 3)
        assert loaded.current() == 4.0

        torch.save({'payload': os.getcwd}, path)
        with pytest.raises(Exception, match='weights_only'):
            torch.load(path)


# --- 2-process DDP through the users' launch scripts ---------------------------------------------------------

def distributed(args, cwd: Path) -> str:
    """Run a dist_*.sh script as users do: torchrun from the environment's bin, a free rendezvous port."""
    env = dict(PORT=str(free_port()), PATH=f'{Path(sys.executable).parent}{os.pathsep}{os.environ["PATH"]}')
    result = run_command(['bash', *args], cwd=cwd, env=env)
    return result.stdout + result.stderr


@pytest.mark.slow
def test_retinanet_trains_and_tests_on_two_processes(tmp_path):
    from scalablevit.demo_data import make_demo_coco
    make_demo_coco(tmp_path / 'data' / 'demo_coco', train_images=8, val_images=4)
    config = DETECTION / 'configs' / 'demo' / 'retinanet_scalablevit-test_fpn_demo-coco.py'
    work = tmp_path / 'work'
    log = distributed([DETECTION / 'dist_train.sh', config, 2, '--work-dir', work,
                       '--cfg-options', 'train_cfg.max_epochs=1'], cwd=tmp_path)
    assert 'Distributed training: True' in log and 'GPU number: 2' in log  # mmengine's names for the world
    assert (work / 'epoch_1.pth').exists()
    log = distributed([DETECTION / 'dist_test.sh', config, work / 'epoch_1.pth', 2, '--eval', 'bbox',
                       '--work-dir', tmp_path / 'test'], cwd=tmp_path)
    assert 'coco/bbox_mAP' in log


@pytest.mark.slow
def test_semantic_fpn_trains_and_tests_on_two_processes(tmp_path):
    from scalablevit.demo_data import make_demo_ade
    make_demo_ade(tmp_path / 'data' / 'demo_ade', train_images=8, val_images=4)
    config = SEGMENTATION / 'configs' / 'demo' / 'fpn_scalablevit-test_demo-ade.py'
    work = tmp_path / 'work'
    log = distributed([SEGMENTATION / 'dist_train.sh', config, 2, '--work-dir', work], cwd=tmp_path)
    assert 'Distributed training: True' in log and 'GPU number: 2' in log and (work / 'iter_4.pth').exists()
    assert 'SyncBN layers run as per-process BN' in log  # the config's SyncBN, on CPU processes
    log = distributed([SEGMENTATION / 'tools' / 'dist_test.sh', config, work / 'iter_4.pth', 2, '--eval', 'mIoU',
                       '--work-dir', tmp_path / 'test'], cwd=tmp_path)
    assert 0 <= float(log.split('mIoU: ')[-1].split()[0]) <= 100


def test_tensorboard_flag_writes_the_logged_scalars(tmp_path, monkeypatch):
    """`train.py --tensorboard`: the scalars the run logs (loss, lr) are in TensorBoard event files, equal to
    those of mmengine's own scalars.json, step by step."""
    pytest.importorskip('tensorboard')
    import json

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from scalablevit.demo_data import make_demo_ade
    from scalablevit.openmmlab.runner import train
    monkeypatch.chdir(tmp_path)
    make_demo_ade(tmp_path / 'data' / 'demo_ade', train_images=4, val_images=1)
    work = tmp_path / 'work'
    train([str(SEGMENTATION / 'configs' / 'demo' / 'fpn_scalablevit-test_demo-ade.py'), '--work-dir', str(work),
           '--tensorboard', '--cfg-options', 'train_cfg.max_iters=3', 'train_cfg.val_interval=10',
           'default_hooks.logger.interval=1', 'default_hooks.checkpoint.interval=10',
           f'visualizer.name={tmp_path.name}'])  # mmengine reuses a visualizer of the same name in a process
    (events,) = work.glob('*/vis_data/events.out.tfevents.*')
    logged = [json.loads(line) for line in (events.parent / 'scalars.json').read_text().splitlines()]
    accumulator = EventAccumulator(str(events.parent))
    accumulator.Reload()
    assert {'loss', 'lr'} <= set(accumulator.Tags()['scalars'])
    for tag in ('loss', 'lr'):
        written = [(event.step, event.value) for event in accumulator.Scalars(tag)]
        assert written == [(line['step'], pytest.approx(line[tag])) for line in logged if tag in line]
        assert [step for step, _ in written] == [1, 2, 3]
