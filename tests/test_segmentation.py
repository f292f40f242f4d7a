"""segmentation/: the paper's six configs and a CPU train/test (plain and multi-scale + flip)/demo round trip."""

import numpy as np
import pytest

mmseg = pytest.importorskip('mmseg')
from mmengine.config import Config  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402
from PIL import Image  # noqa: E402

import scalablevit.openmmlab  # noqa: E402,F401  (registers the backbone)
from scalablevit.demo_data import make_demo_ade  # noqa: E402
from scalablevit.paper import paper_params, param_tolerance, reference_params  # noqa: E402

from helpers import ROOT, run_command  # noqa: E402

SEGMENTATION = ROOT / 'segmentation'

PAPER_PARAMS = paper_params('segmentation/configs/')  # the paper's Table 4, in millions


def build_segmentor(config):
    from mmseg.registry import MODELS
    cfg = Config.fromfile(str(config))
    init_default_scope('mmseg')
    return cfg, MODELS.build(cfg.model)


@pytest.mark.parametrize('name', sorted(PAPER_PARAMS))
def test_config_parameter_count_matches_paper(name):
    _, model = build_segmentor(SEGMENTATION / 'configs' / f'{name}.py')
    params = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(params - PAPER_PARAMS[name]) <= param_tolerance(name), \
        f'{name}: {params:.2f} M vs paper {PAPER_PARAMS[name]}'


@pytest.mark.parametrize('name', sorted(PAPER_PARAMS))
def test_config_settings_follow_the_paper(name):
    cfg = Config.fromfile(str(SEGMENTATION / 'configs' / f'{name}.py'))
    optimizer = cfg.optim_wrapper.optimizer
    assert optimizer.type == 'AdamW'
    assert cfg.optim_wrapper.paramwise_cfg == dict(norm_decay_mult=0., custom_keys={'pos_block': dict(decay_mult=0.)})
    if name.startswith('fpn'):
        assert (optimizer.lr, optimizer.weight_decay) == (1e-4, 1e-4)
        (poly,) = cfg.param_scheduler
        assert (poly.type, poly.power, poly.end) == ('PolyLR', 0.9, 80000)
        assert (cfg.train_cfg.max_iters, cfg.train_dataloader.batch_size) == (80000, 4)
    else:
        assert (optimizer.lr, optimizer.weight_decay) == (6e-5, 0.01)
        warmup, poly = cfg.param_scheduler
        assert (warmup.type, warmup.end, poly.type, poly.power, poly.begin, poly.end) == (
            'LinearLR', 1500, 'PolyLR', 1.0, 1500, 160000)
        assert (cfg.train_cfg.max_iters, cfg.train_dataloader.batch_size) == (160000, 2)
        aux = cfg.model.auxiliary_head
        assert aux.type == 'FCNHead' and aux.in_index == 2 and aux.loss_decode.loss_weight == 0.4
        assert aux.in_channels == cfg.model.decode_head.in_channels[2]
    resize, crop = cfg.train_pipeline[2], cfg.train_pipeline[3]
    assert (resize.scale, resize.ratio_range, crop.crop_size) == ((2048, 512), (0.5, 2.0), (512, 512))
    assert cfg.test_pipeline[1].scale == (2048, 512) and cfg.model.test_cfg.mode == 'whole'
    tta_scales = [t.scale_factor for t in cfg.tta_pipeline[1].transforms[0]]
    assert tta_scales == [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
    assert cfg.model.backbone.init_cfg.type == 'Pretrained' and cfg.model.pretrained is None


SCOPE_VIT_PARAMS = reference_params('segmentation/configs/scope_vit/')  # released backbone + stock heads


@pytest.mark.parametrize('name', sorted(SCOPE_VIT_PARAMS))
def test_scope_vit_config_parameter_count_matches_reference(name):
    cfg, model = build_segmentor(SEGMENTATION / 'configs' / 'scope_vit' / f'{name}.py')
    params = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(params - SCOPE_VIT_PARAMS[name]) <= 0.005, f'{name}: {params:.3f} M vs {SCOPE_VIT_PARAMS[name]}'
    assert cfg.model.backbone.norm_eval and not cfg.model.backbone.norm_outputs
    assert cfg.model.backbone.drop_path_rate == (0.05 if '-xt_' in name else 0.1)
    assert set(cfg.optim_wrapper.paramwise_cfg.custom_keys) == {'ls1.gamma', 'ls2.gamma'}


def run(args, cwd):
    result = run_command(args, cwd)
    return result.stdout + result.stderr


@pytest.mark.slow
@pytest.mark.parametrize('method', ['fpn', 'upernet'])
def test_train_test_tta_and_demo_on_cpu(tmp_path, method):
    """Train a few iterations on a generated ADE20K-layout dataset, evaluate mIoU through test.py plainly and
    with --aug-test (6 scales x flip), and write a colour overlay with demo.py."""
    root = make_demo_ade(tmp_path / 'data' / 'demo_ade', train_images=8, val_images=3)
    config = SEGMENTATION / 'configs' / 'demo' / f'{method}_scalablevit-test_demo-ade.py'
    work = tmp_path / 'work'
    log = run([str(SEGMENTATION / 'train.py'), str(config), '--work-dir', str(work)], cwd=tmp_path)
    assert (work / 'iter_4.pth').exists() and 'mIoU' in log

    plain = run([str(SEGMENTATION / 'test.py'), str(config), str(work / 'iter_4.pth'), '--eval', 'mIoU',
                 '--work-dir', str(tmp_path / 'test')], cwd=tmp_path)
    augmented = run([str(SEGMENTATION / 'test.py'), str(config), str(work / 'iter_4.pth'), '--aug-test',
                     '--eval', 'mIoU', '--work-dir', str(tmp_path / 'tta')], cwd=tmp_path)
    for log in (plain, augmented):
        assert 0 <= float(log.split('mIoU: ')[-1].split()[0]) <= 100

    image = sorted((root / 'images' / 'validation').iterdir())[0]
    out_file = tmp_path / 'overlay.png'
    run([str(SEGMENTATION / 'demo.py'), str(image), str(config), str(work / 'iter_4.pth'), '--out-file',
         str(out_file)], cwd=tmp_path)
    overlay, original = np.asarray(Image.open(out_file).convert('RGB')), np.asarray(Image.open(image))
    assert overlay.shape == original.shape and not np.array_equal(overlay, original)


def train_resume_and_test(tmp_path, demo_config: str) -> str:
    """Train a demo config 4 iterations, resume it to 6, evaluate mIoU with test.py; the test log."""
    config = SEGMENTATION / 'configs' / 'demo' / f'{demo_config}.py'
    work = tmp_path / 'work'
    log = run([str(SEGMENTATION / 'train.py'), str(config), '--work-dir', str(work)], cwd=tmp_path)
    assert (work / 'iter_4.pth').exists() and 'mIoU' in log
    log = run([str(SEGMENTATION / 'train.py'), str(config), '--work-dir', str(work), '--resume',
               '--cfg-options', 'train_cfg.max_iters=6', 'train_cfg.val_interval=6',
               'default_hooks.checkpoint.interval=6'], cwd=tmp_path)
    assert 'resumed' in log.lower() and (work / 'iter_6.pth').exists()
    return run([str(SEGMENTATION / 'test.py'), str(config), str(work / 'iter_6.pth'), '--eval', 'mIoU',
                '--work-dir', str(tmp_path / 'test')], cwd=tmp_path)


@pytest.mark.slow
def test_cityscapes_train_resume_and_test_on_cpu(tmp_path):
    """The Swin-T+VSA UperNet Cityscapes config (narrow backbone) on a generated Cityscapes-layout dataset:
    train 4 iterations, resume to 6, evaluate mIoU over the 19 classes."""
    from scalablevit.demo_data import make_demo_cityscapes
    make_demo_cityscapes(tmp_path / 'data' / 'cityscapes_demo', train_images=6, val_images=2)
    log = train_resume_and_test(tmp_path, 'upernet_swin-vsa-test_demo-cityscapes')
    assert 'traffic sign' in log and 0 <= float(log.split('mIoU: ')[-1].split()[0]) <= 100


@pytest.mark.slow
def test_scope_vit_upernet_train_resume_and_test_on_cpu(tmp_path):
    """The ScopeViT-T UperNet config (narrow backbone, BatchNorm statistics frozen) on the ADE20K-layout
    dataset: train 4 iterations, resume to 6, evaluate mIoU."""
    make_demo_ade(tmp_path / 'data' / 'demo_ade', train_images=6, val_images=2)
    log = train_resume_and_test(tmp_path, 'upernet_scopevit-test_demo-ade')
    assert 0 <= float(log.split('mIoU: ')[-1].split()[0]) <= 100


def test_cityscapes_demo_dataset_follows_the_layout(tmp_path):
    from mmseg.datasets import CityscapesDataset

    from scalablevit.demo_data import make_demo_cityscapes
    root = make_demo_cityscapes(tmp_path / 'cityscapes', train_images=2, val_images=1)
    dataset = CityscapesDataset(data_root=str(root), data_prefix=dict(img_path='leftImg8bit/train',
                                                                      seg_map_path='gtFine/train'), pipeline=[])
    assert len(dataset) == 2
    label = np.asarray(Image.open(dataset[0]['seg_map_path']))
    assert set(np.unique(label)) <= {0, 7, 11, 13, 255} and (label == 255).any() and (label == 0).any()


def test_aug_test_flag_builds_multiscale_flip_tta():
    import argparse
    import importlib.util
    spec = importlib.util.spec_from_file_location('segmentation_test_script', SEGMENTATION / 'test.py')
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    cfg = Config.fromfile(str(SEGMENTATION / 'configs' / 'upernet_scalablevit-s_8xb2-160k_ade20k-512x512.py'))
    script.adjust_config(cfg, argparse.Namespace(eval=['mIoU', 'mDice'], aug_test=True, out=None, show_dir=None))
    assert cfg.model.type == 'SegTTAModel' and cfg.model.module.type == 'EncoderDecoder'
    scales, flips = cfg.test_dataloader.dataset.pipeline[1].transforms[:2]
    assert [t.scale_factor for t in scales] == [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
    assert sorted(t.prob for t in flips) == [0., 1.]
    assert cfg.test_evaluator.iou_metrics == ['mIoU', 'mDice']
    with pytest.raises(SystemExit, match='unknown --eval metric'):
        script.adjust_config(cfg, argparse.Namespace(eval=['bbox'], aug_test=False, out=None, show_dir=None))


def test_demo_dataset_follows_ade20k_conventions(tmp_path):
    root = make_demo_ade(tmp_path / 'ade', train_images=2, val_images=1)
    label = np.asarray(Image.open(root / 'annotations' / 'training' / 'ADE_train_00000000.png'))
    assert label.dtype == np.uint8 and set(np.unique(label)) <= {0, 1, 2, 3, 4} and (label == 0).any()
    image = Image.open(root / 'images' / 'training' / 'ADE_train_00000000.jpg')
    assert image.size == label.shape[::-1] and image.mode == 'RGB'
