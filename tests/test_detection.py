"""detection/: the MMDetection backbone, the paper's ten configs and a CPU train/test/demo round trip."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

mmdet = pytest.importorskip('mmdet')
from mmengine.config import Config  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402

import scalablevit.openmmlab  # noqa: E402,F401  (registers the backbone)
from scalablevit.openmmlab import ScalableViTBackbone  # noqa: E402

DETECTION = Path(__file__).resolve().parents[1] / 'detection'
sys.path.insert(0, str(DETECTION))
from make_demo_coco import make_dataset  # noqa: E402

TINY_ARCH = dict(embed_dims=(16, 32, 64, 128), num_heads=(1, 2, 4, 8), depths=(2, 2, 2, 2),
                 channel_ratios=(2., 1.25, 0.5, 1.))

# Paper, Table 3 (millions); B and L must match to 0.15 M, S to 0.5 M (the released S is ~0.4 M smaller).
PAPER_PARAMS = {
    'retinanet_scalablevit-s_fpn_1x_coco': 36.4, 'retinanet_scalablevit-s_fpn_ms-3x_coco': 36.4,
    'retinanet_scalablevit-b_fpn_1x_coco': 85.6, 'retinanet_scalablevit-b_fpn_ms-3x_coco': 85.6,
    'retinanet_scalablevit-l_fpn_1x_coco': 112.6,
    'mask-rcnn_scalablevit-s_fpn_1x_coco': 46.3, 'mask-rcnn_scalablevit-s_fpn_ms-3x_coco': 46.3,
    'mask-rcnn_scalablevit-b_fpn_1x_coco': 94.9, 'mask-rcnn_scalablevit-b_fpn_ms-3x_coco': 94.9,
    'mask-rcnn_scalablevit-l_fpn_1x_coco': 121.4,
}


def build_detector(config: Path):
    from mmdet.registry import MODELS
    cfg = Config.fromfile(str(config))
    init_default_scope('mmdet')
    return cfg, MODELS.build(cfg.model)


@pytest.mark.parametrize('name', sorted(PAPER_PARAMS))
def test_config_parameter_count_matches_paper(name):
    cfg, model = build_detector(DETECTION / 'configs' / f'{name}.py')
    params = sum(p.numel() for p in model.parameters()) / 1e6
    tolerance = 0.5 if '-s_' in name else 0.15
    assert abs(params - PAPER_PARAMS[name]) <= tolerance, f'{name}: {params:.2f} M vs paper {PAPER_PARAMS[name]}'


@pytest.mark.parametrize('name', sorted(PAPER_PARAMS))
def test_config_settings_follow_the_paper(name):
    cfg = Config.fromfile(str(DETECTION / 'configs' / f'{name}.py'))
    optimizer = cfg.optim_wrapper.optimizer
    three_x = 'ms-3x' in name
    expected_lr = 1e-4 if (three_x or name.startswith('retinanet')) else 2e-4
    assert optimizer.type == 'AdamW' and optimizer.lr == expected_lr
    assert optimizer.weight_decay == (0.05 if three_x else 1e-4)
    assert cfg.optim_wrapper.paramwise_cfg == dict(norm_decay_mult=0., custom_keys={'pos_block': dict(decay_mult=0.)})
    warmup, steps = cfg.param_scheduler
    assert warmup.type == 'LinearLR' and warmup.end == 500 and not warmup.by_epoch
    assert (cfg.train_cfg.max_epochs, steps.milestones) == ((36, [27, 33]) if three_x else (12, [8, 11]))
    resize = cfg.train_dataloader.dataset.pipeline[2]
    if three_x:
        assert resize.type == 'RandomResize' and resize.scale == [(1333, 480), (1333, 800)] and resize.keep_ratio
    else:
        assert resize.type == 'Resize' and resize.scale == (1333, 800)
    assert cfg.train_dataloader.batch_size == 2 and cfg.auto_scale_lr.base_batch_size == 16
    assert cfg.model.backbone.init_cfg.type == 'Pretrained'


def test_backbone_outputs_and_options():
    torch.manual_seed(0)
    backbone = ScalableViTBackbone(arch=TINY_ARCH, out_indices=(1, 3)).eval()
    with torch.no_grad():
        outs = backbone(torch.randn(2, 3, 97, 131))
    assert [tuple(o.shape) for o in outs] == [(2, 32, 13, 17), (2, 128, 4, 5)]
    # each output is layer-normalised over channels
    torch.testing.assert_close(outs[0].mean(1), torch.zeros(2, 13, 17), atol=1e-5, rtol=0)

    pruned = ScalableViTBackbone(arch=TINY_ARCH, out_indices=(0, 1))
    assert len(pruned.stages) == 2 and not any(k.startswith('stages.2') for k in pruned.state_dict())

    frozen = ScalableViTBackbone(arch=TINY_ARCH, frozen_stages=1).train()
    assert not frozen.stages[1][0].training and frozen.stages[2][0].training
    trainable = {n.split('.')[0] + '.' + n.split('.')[1] for n, p in frozen.named_parameters() if p.requires_grad}
    assert 'stages.0' not in trainable and 'patch_embeds.1' not in trainable and 'stages.2' in trainable

    plain = ScalableViTBackbone(arch=TINY_ARCH, out_indices=(1, 3), drop_path_rate=0.)
    checkpointed = ScalableViTBackbone(arch=TINY_ARCH, out_indices=(1, 3), drop_path_rate=0., with_cp=True)
    checkpointed.load_state_dict(plain.state_dict())
    x = torch.randn(1, 3, 64, 64, requires_grad=True)
    for a, b in zip(checkpointed.train()(x), plain.train()(x)):
        torch.testing.assert_close(a, b)


def test_backbone_loads_imagenet_checkpoint(tmp_path):
    classifier = timm.create_model('scalable_vit_small', **TINY_ARCH)
    path = tmp_path / 'released.pth'
    torch.save({'model': classifier.state_dict()}, path)
    backbone = ScalableViTBackbone(arch=TINY_ARCH, init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    backbone.init_weights()
    for key, value in backbone.state_dict().items():
        if not key.startswith('out_norms.'):
            assert torch.equal(value, classifier.state_dict()[key]), key

    other = timm.create_model('scalable_vit_small', **dict(TINY_ARCH, embed_dims=(32, 64, 128, 256)))
    torch.save({'model': other.state_dict()}, path)
    with pytest.raises(ValueError, match='patch_embeds.0.proj.weight: checkpoint'):
        ScalableViTBackbone(arch=TINY_ARCH, init_cfg=dict(type='Pretrained', checkpoint=str(path))).init_weights()


def test_backbone_in_both_registries():
    from mmdet.registry import MODELS as DET
    assert DET.get('ScalableViTBackbone') is ScalableViTBackbone
    mmseg = pytest.importorskip('mmseg')
    from mmseg.registry import MODELS as SEG
    assert mmseg and SEG.get('ScalableViTBackbone') is ScalableViTBackbone


def run(args, cwd):
    result = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    return result.stdout + result.stderr


@pytest.mark.parametrize('method', ['retinanet', 'mask-rcnn'])
def test_train_resume_test_and_demo_on_cpu(tmp_path, method):
    """Train two epochs on a generated COCO dataset, resume for a third, evaluate with the COCO metric
    through test.py (old `--eval` spelling), and draw the detections with demo.py."""
    make_dataset(tmp_path / 'data' / 'demo_coco', train_images=8, val_images=4)
    config = DETECTION / 'configs' / 'demo' / f'{method}_scalablevit-tiny_fpn_demo-coco.py'
    work = tmp_path / 'work'
    log = run([str(DETECTION / 'train.py'), str(config), '--work-dir', str(work)], cwd=tmp_path)
    assert (work / 'epoch_2.pth').exists()
    assert 'coco/bbox_mAP' in log

    log = run([str(DETECTION / 'train.py'), str(config), '--work-dir', str(work), '--resume',
               '--cfg-options', 'train_cfg.max_epochs=3'], cwd=tmp_path)
    assert 'resumed epoch: 2' in log and (work / 'epoch_3.pth').exists()

    log = run([str(DETECTION / 'test.py'), str(config), str(work / 'epoch_3.pth'), '--eval', 'mAP',
               '--work-dir', str(tmp_path / 'test')], cwd=tmp_path)
    assert 'coco/bbox_mAP' in log
    assert ('coco/segm_mAP' in log) == (method == 'mask-rcnn')

    image = next((tmp_path / 'data' / 'demo_coco' / 'val2017').iterdir())
    out_file = tmp_path / 'demo.png'
    run([str(DETECTION / 'demo.py'), str(image), str(config), str(work / 'epoch_3.pth'), '--out-file',
         str(out_file), '--score-thr', '0.0'], cwd=tmp_path)
    from PIL import Image
    assert Image.open(out_file).size == Image.open(image).size


def test_demo_dataset_is_valid_coco(tmp_path):
    from pycocotools.coco import COCO
    root = make_dataset(tmp_path / 'coco', train_images=3, val_images=2)
    coco = COCO(str(root / 'annotations' / 'instances_train2017.json'))
    assert len(coco.getImgIds()) == 3 and [c['name'] for c in coco.loadCats(coco.getCatIds())] == [
        'disc', 'square', 'triangle']
    for ann in coco.loadAnns(coco.getAnnIds()):
        mask = coco.annToMask(ann)
        assert mask.sum() > 0 and abs(mask.sum() - ann['area']) / ann['area'] < 0.2
    assert json.loads((root / 'annotations' / 'instances_val2017.json').read_text())['images'][0]['id'] == 1


def test_no_weight_decay_on_norms_and_peg():
    from mmengine.optim import build_optim_wrapper
    cfg, model = build_detector(DETECTION / 'configs' / 'demo' / 'retinanet_scalablevit-tiny_fpn_demo-coco.py')
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    decay = {id(p): group['weight_decay'] for group in wrapper.optimizer.param_groups for p in group['params']}
    params = dict(model.named_parameters())
    assert decay[id(params['backbone.pos_block.0.proj.0.weight'])] == 0
    assert decay[id(params['backbone.stages.0.0.norm1.weight'])] == 0
    assert decay[id(params['backbone.stages.0.1.attn.norm_act.0.weight'])] == 0
    assert decay[id(params['backbone.out_norms.2.weight'])] == 0
    assert decay[id(params['backbone.stages.0.0.attn.qkv.weight'])] == 1e-4
    assert decay[id(params['neck.lateral_convs.0.conv.weight'])] == 1e-4
