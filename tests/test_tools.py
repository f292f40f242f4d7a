"""tools/ and figures/: FLOPs counting, ONNX export checked with onnxruntime, training-curve plots, figures."""
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import scalablevit

import export_onnx
import get_flops
from helpers import TINY_ARGS, TINY_MODEL

ROOT = Path(__file__).resolve().parents[1]


# the package's families (a subprocess does not see the test-only one of tests/toy_family.py)
PACKAGE_FAMILIES = [f for f in scalablevit.FAMILIES if f.model_cls.__module__.startswith('scalablevit.')]


def run(*args):
    result = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_flops_of_the_released_classifier():
    """fvcore's count of the released ScalableViT-S (the reference README): 4.28 G at 224, attention included."""
    result = get_flops.count('scalable_vit_small')
    assert result['params'] == pytest.approx(32.000472)
    assert result['flops'] == pytest.approx(4.2847, abs=5e-4)
    assert result['flops_no_attn'] < result['flops'] - 0.1  # attention's matrix products are counted


@pytest.mark.parametrize('config', [
    'detection/configs/demo/retinanet_scalablevit-test_fpn_demo-coco.py',
    'segmentation/configs/demo/fpn_scalablevit-test_demo-ade.py',
])
def test_flops_of_dense_models(config):
    pytest.importorskip('mmdet')
    result = get_flops.count(str(ROOT / config), shape=(128, 160))
    assert result['shape'] == (128, 160) and 0 < result['flops_no_attn'] < result['flops']
    assert result['params'] > 1


def test_model_zoo_table_lists_the_paper_models():
    assert len(get_flops.PAPER) == 19
    row = ('scalable_vit_small', 32.4, 4.2, dict(params=32.0, flops=4.28, flops_no_attn=4.11, shape=(224, 224)))
    table = get_flops.markdown_table([row])
    assert table.splitlines()[-1] == '| scalable_vit_small | 224×224 | 32.00 | 32.4 | 4.28 | 4.11 | 4.2 |'
    zoo = (ROOT / 'docs' / 'model_zoo.md').read_text()
    assert all(Path(target).stem in zoo for target, _, _ in get_flops.PAPER + get_flops.OTHER_FAMILIES)


def test_model_zoo_rows_come_from_the_families(monkeypatch):
    """Every released variant has a zoo row; a new family's variants get rows with no published numbers."""
    assert get_flops.unlisted_family_models() == []
    listed = {target for target, _, _ in get_flops.PAPER + get_flops.OTHER_FAMILIES}
    for family in PACKAGE_FAMILIES:
        assert {name for variant, name in family.model_names.items() if variant != 'test'} <= listed
    new_family = SimpleNamespace(model_names={'base': 'new_net_base', 'test': 'new_net_test'})
    monkeypatch.setattr(scalablevit, 'FAMILIES', [*scalablevit.FAMILIES, new_family])
    assert get_flops.unlisted_family_models() == [('new_net_base', None, None)]


@pytest.mark.parametrize('features', [False, True])
def test_onnx_export_matches_pytorch(tmp_path, features):
    """Dynamic batch (and H/W for the backbone): sizes that need no padding and that need it in every stage."""
    pytest.importorskip('onnxruntime')
    model = export_onnx.build('scalable_vit_small', '', features, TINY_ARGS)
    path = tmp_path / 'model.onnx'
    outputs = export_onnx.export(model, path, features, (224, 224), opset=17)
    assert outputs == (['stage0', 'stage1', 'stage2', 'stage3'] if features else ['logits'])
    sizes = [(224, 224), (97, 131), (64, 96)] if features else [(224, 224)]
    assert export_onnx.compare(model, path, sizes, batch=3) <= 1e-4


@pytest.mark.slow  # a subprocess
def test_onnx_cli_with_checkpoint(tmp_path):
    pytest.importorskip('onnxruntime')
    source = timm.create_model('scalable_vit_small', **TINY_ARGS)
    checkpoint = tmp_path / 'released.pth'
    torch.save({'model': source.state_dict()}, checkpoint)
    out = run(ROOT / 'tools' / 'export_onnx.py', 'scalable_vit_small', '--checkpoint', checkpoint, '--features',
              '--out', tmp_path / 'backbone.onnx', '--model-kwargs', *[f'{k}={v}' for k, v in TINY_ARGS.items()])
    assert 'outputs: stage0, stage1, stage2, stage3' in out and '97x131' in out


@pytest.mark.slow  # a subprocess per family
@pytest.mark.parametrize('family', PACKAGE_FAMILIES, ids=lambda f: f.name)
def test_onnx_cli_serves_every_family(tmp_path, family):
    """Dynamic height and width where the family's graph allows it, else the traced size only, said so."""
    pytest.importorskip('onnxruntime')
    out = run(ROOT / 'tools' / 'export_onnx.py', family.test_model, '--out', tmp_path / 'model.onnx',
              '--input-size', '64', '96')
    assert ('97x131' in out) == family.onnx_dynamic_sizes
    assert ('graph is for 64x96 inputs only' in out) == (not family.onnx_dynamic_sizes)


def test_onnx_export_reads_checkpoints_by_the_ema_rule(tmp_path):
    from export_onnx import build
    raw = timm.create_model(TINY_MODEL).state_dict()
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in raw.items()}
    checkpoint = tmp_path / 'trained.pth'
    torch.save({'model': raw, 'model_ema': ema}, checkpoint)
    for use_ema, expected in ((None, ema), (True, ema), (False, raw)):
        weights = build(TINY_MODEL, str(checkpoint), False, {}, use_ema).state_dict()
        assert all(torch.equal(weights[k], expected[k]) for k in expected), use_ema


def test_plot_mmengine_logs(tmp_path):
    run_dir = tmp_path / 'work' / '20260101_000000' / 'vis_data'
    run_dir.mkdir(parents=True)
    rows = [dict(lr=1e-4, loss=2.0 - 0.1 * i, iter=2 * i, step=2 * i, epoch=1) for i in range(1, 5)]
    rows.append({'coco/bbox_mAP': 0.12, 'coco/bbox_mAP_50': 0.3, 'step': 1})
    (run_dir / 'scalars.json').write_text(''.join(json.dumps(r) + '\n' for r in rows))
    out = tmp_path / 'curves.png'
    run(ROOT / 'tools' / 'plot_logs.py', tmp_path / 'work', '--out', out)
    image = np.asarray(Image.open(out).convert('L'))
    assert image.shape[1] > 1000 and len(np.unique(image)) > 10


def test_figure1_on_random_weights(tmp_path):
    out = tmp_path / 'figure1.png'
    run(ROOT / 'figures' / 'feature_maps.py', '--out', out, '--size', '112')
    assert Image.open(out).size[0] > 200


def test_figure1_rows(tmp_path):
    import feature_maps
    torch.manual_seed(0)
    base = timm.create_model('scalable_vit_small').eval()
    images = torch.randn(2, 3, 64, 64)
    maps = {kind: feature_maps.second_block_features(feature_maps.make_variant(base, kind), images)
            for kind, _ in feature_maps.ROWS}
    for values in maps.values():
        assert values.shape == (2, 16, 16) and values.min() == 0 and values.max() == 1
    # the SSA row is the model itself; the others change the second block
    x, H, W = base.patch_embeds[0](images)
    with torch.no_grad():
        reference = base.stages[0][1](base.pos_block[0](base.stages[0][0](x, H, W), H, W), H, W)
    norms = reference.norm(dim=-1).reshape(2, 16, 16)
    low, high = norms.flatten(1).min(1)[0][:, None, None], norms.flatten(1).max(1)[0][:, None, None]
    torch.testing.assert_close(maps['ssa'], (norms - low) / (high - low))
    assert not torch.allclose(maps['wsa'], maps['ssa']) and not torch.allclose(maps['ssa_rc1'], maps['ssa'])
    wsa = feature_maps.make_variant(base, 'wsa')
    assert wsa.stages[0][1].attn.lim_func.weight.abs().sum() == 0 and wsa.stages[0][0].attn.lim_func.bias.sum() == 0


def test_architecture_figure(tmp_path):
    out = tmp_path / 'arch.png'
    run(ROOT / 'figures' / 'architecture.py', '--variant', 'large', '--out', out)
    assert Image.open(out).size[0] > 1000
