"""benchmarks/benchmark.py: the table and JSON it produces (tiny settings; speed targets live in the benchmark)."""
import argparse
import json
import subprocess
import sys
from typing import Dict

import pytest
import torch

from helpers import ROOT


@pytest.mark.slow  # about 90 s: each row measures memory and time in its own process
def test_benchmark_rows_and_json(tmp_path):
    out = tmp_path / 'bench.json'
    result = subprocess.run(
        [sys.executable, str(ROOT / 'benchmarks' / 'benchmark.py'), '--models', 'scalable_vit_small',
         '--batch-size', '2', '--img-size', '64', '--warmup', '1', '--repeats', '2', '--threads', '1',
         '--json', str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = {(r['variant'], r['mode']): r for r in report['rows']}
    assert set(rows) == {('fast', 'infer'), ('fast', 'train'), ('explicit', 'infer'), ('explicit', 'train'),
                         ('ckpt', 'train')}
    assert report['matmul_peak_gflop_per_s'] > 0
    for row in rows.values():
        assert row['min_s'] <= row['median_s'] <= row['max_s'] and row['img_per_s'] > 0
        assert row['peak_mb'] > 0 and 0 <= row['step_mb'] <= row['peak_mb']
        assert 0 < row['fraction_of_peak'] < 2
    # 64 px: about (64 / 224)^2 of the 4.28 G multiply-adds at 224 (plus IWSA's padded windows), 2 FLOPs each
    assert 2 * 4.285 * (64 / 224) ** 2 < rows['fast', 'infer']['gflops_per_image'] < 1.0
    assert rows['fast', 'train']['step_mb'] > 0
    # Tensor-level step memory: the gradients alone are 122 MiB; checkpointing keeps fewer activations.
    assert 120 < rows['ckpt', 'train']['tensor_mb'] < rows['fast', 'train']['tensor_mb'] < 400
    assert 0 < rows['fast', 'infer']['tensor_mb'] < 50
    assert report['allocator'] == 'cached'
    assert 'matmul peak' in result.stdout and 'scalable_vit_small' in result.stdout
    fast = rows['fast', 'infer']
    assert fast['gmacs_per_image'] == pytest.approx(fast['gflops_per_image'] / 2)
    assert fast['gmac_per_s'] == pytest.approx(fast['gmacs_per_image'] * fast['img_per_s'])
    assert 'rate_ratio' not in fast  # no baseline among the models


@pytest.mark.slow  # about 40 s
def test_benchmark_work_rate_against_swin_t(tmp_path):
    out = tmp_path / 'bench.json'
    result = subprocess.run(
        [sys.executable, str(ROOT / 'benchmarks' / 'benchmark.py'), '--models', 'scalable_vit_small',
         'swin_tiny_patch4_window7_224', '--modes', 'infer', '--batch-size', '1', '--warmup', '1', '--repeats', '1',
         '--rounds', '2', '--threads', '1', '--json', str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {r['model']: r for r in json.loads(out.read_text())['rows']}
    assert rows['swin_tiny_patch4_window7_224']['rate_ratio'] == 1 and rows['scalable_vit_small']['rounds'] == 2
    assert 4.2 < rows['scalable_vit_small']['gmacs_per_image'] < 4.4  # 4.28 G multiply-adds at 224
    assert 4.4 < rows['swin_tiny_patch4_window7_224']['gmacs_per_image'] < 4.6  # timm Swin-T: 4.5 G
    assert 0.2 < rows['scalable_vit_small']['rate_ratio'] < 5


@pytest.mark.slow  # about 40 s: each row (and each work count) runs in its own process
def test_dense_benchmark_rows_json_and_curve(tmp_path):
    pytest.importorskip('mmdet')
    out, plot = tmp_path / 'dense.json', tmp_path / 'curve.png'
    result = subprocess.run(
        [sys.executable, str(ROOT / 'benchmarks' / 'dense.py'), '--curve', '--models', 'scalablevit-s', 'swin-t',
         '--sizes', '96x96', '128x160', '--warmup', '1', '--repeats', '1', '--rounds', '1', '--threads', '1',
         '--json', str(out), '--plot', str(plot)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report['allocator'] == 'cached' and report['baseline'] == 'swin-t'
    rows = report['rows']
    assert {(r['model'], r['size'], r['mode']) for r in rows} == {
        (m, s, mode) for m in ('scalablevit-s', 'swin-t') for s in ('96x96', '128x160') for mode in ('infer', 'train')}
    for row in rows:
        assert 'error' not in row and row['batch_size'] == 1 and row['median_s'] > 0
        assert row['peak_mb'] > 0 and 0 <= row['step_mb'] <= row['peak_mb']
        assert 0 < row['attention_gmacs'] < row['gmacs']
        assert row['gmac_per_s'] == pytest.approx(row['gmacs'] * (3 if row['mode'] == 'train' else 1)
                                                  / row['median_s'])
    by_key = {(r['model'], r['size'], r['mode']): r for r in rows}
    for size in ('96x96', '128x160'):
        for mode in ('infer', 'train'):
            ours, base = by_key['scalablevit-s', size, mode], by_key['swin-t', size, mode]
            assert base['rate_ratio'] == 1 and base['time_ratio'] == 1
            assert ours['time_ratio'] == pytest.approx(ours['median_s'] / base['median_s'])
            assert ours['rate_ratio'] == pytest.approx(ours['gmacs'] / base['gmacs'] / ours['time_ratio'])
    # work grows with the pixels: 128x160 has 2.2x the pixels of 96x96
    assert 1.5 < by_key['swin-t', '128x160', 'infer']['gmacs'] / by_key['swin-t', '96x96', 'infer']['gmacs'] < 3
    train = {(r['model'], r['size']): r['step_mb'] for r in rows if r['mode'] == 'train'}
    assert train['scalablevit-s', '128x160'] > train['scalablevit-s', '96x96']  # more pixels, more activations
    assert plot.stat().st_size > 10_000
    assert 'rate/base' in result.stdout and 'GMACs' in result.stdout


@pytest.mark.parametrize('model', ['scalablevit-s', 'scopevit-t', 'swin-t-vsa'])
def test_dense_work_counts_attention_inside_sdpa(model):
    """The benchmark counts the fused path's work as the explicit path's: attention inside SDPA included, the
    zero padding of SSA's narrower value width left out; mmengine alone would count nothing for SDPA."""
    pytest.importorskip('mmdet')
    from mmengine.analysis import FlopAnalyzer

    import dense
    args = argparse.Namespace(model=model, size='224x224')
    fused = dense.count_work(args)

    backbone = dense.build_backbone(model)
    backbone.eval()

    def count(**handles) -> Dict[str, int]:
        analyzer = FlopAnalyzer(backbone, (torch.randn(1, 3, 224, 224),))
        analyzer.set_op_handle(**handles)
        analyzer.unsupported_ops_warnings(False)
        analyzer.uncalled_modules_warnings(False)
        return analyzer.by_operator()

    without_handle = count()
    for module in backbone.modules():
        if hasattr(module, 'fused_attn'):
            module.fused_attn = False
    explicit = count()
    assert 'scaled_dot_product_attention' not in explicit
    assert fused['gmacs'] == pytest.approx(sum(explicit.values()) / 1e9, rel=1e-9)
    assert fused['attention_gmacs'] == pytest.approx((explicit['matmul'] + explicit.get('bmm', 0)) / 1e9, rel=1e-9)
    if model != 'swin-t-vsa':  # (its 49-token windows take the explicit ops on CPU: nothing to miss)
        missed = sum(explicit.values()) - sum(without_handle.values())  # SDPA's products, uncounted by mmengine
        assert missed > (1e7 if model == 'scalablevit-s' else 1e8)  # S: stage-1 SSA only at 224; ScopeViT: MSSA


def test_small_data_textures_are_distinct_real_regions_and_mosaics_are_labelled_per_pixel():
    """benchmarks/dense_small_data.py: eleven different photo regions; every mosaic pixel carries the class
    whose texture it shows."""
    import numpy as np
    pytest.importorskip('sklearn')
    import dense_small_data

    regions = dense_small_data.texture_regions(dense_small_data.photographs())
    assert len(regions) == len(dense_small_data.CLASSES) == 11
    means = np.array([region.mean(axis=(0, 1)) for region in regions])
    assert min(np.linalg.norm(means[i] - means[j]) + abs(regions[i].std() - regions[j].std())
               for i in range(11) for j in range(i)) > 1  # no region chosen twice
    # flat single-colour "textures": each pixel's colour must name its label
    flat = [np.full((96, 96, 3), 20.0 * k) for k in range(11)]
    image, labels = dense_small_data.mosaic(flat, 128, np.random.default_rng(0))
    assert image.shape == (128, 128, 3) and labels.shape == (128, 128) and 2 <= len(np.unique(labels)) <= 5
    assert np.array_equal(image[..., 0], 20.0 * labels)


def test_small_data_boxes_are_the_object_textures_and_overlap_little():
    """The detection images: each box holds exactly its class's (flat) texture, the rest a background one."""
    import numpy as np
    pytest.importorskip('sklearn')
    import dense_small_data

    flat = [np.full((96, 96, 3), 20.0 * k + 5) for k in range(11)]
    rng = np.random.default_rng(0)
    for _ in range(50):
        image, boxes, labels = dense_small_data.boxes_on_texture(flat, 128, rng)
        assert 1 <= len(boxes) == len(labels) <= 3 and image.shape == (128, 128, 3)
        covered = np.zeros((128, 128), bool)
        for (x, y, w, h), label in zip(boxes, labels):
            assert 24 <= w <= 56 and 24 <= h <= 56 and x + w <= 128 and y + h <= 128 and 0 <= label < 8
            covered[y:y + h, x:x + w] = True
        for i, box in enumerate(boxes):
            assert all(dense_small_data.box_iou(box, other) <= 0.1 for other in boxes[:i])
        later = {}  # a later box paints over an earlier one: the last box at a pixel owns it
        for (x, y, w, h), label in zip(boxes, labels):
            later.update({(r, c): label for r in range(y, y + h) for c in range(x, x + w)})
        for (r, c), label in later.items():
            assert image[r, c, 0] == 20.0 * label + 5
        background = image[~covered][:, 0]
        assert len(np.unique(background)) == 1 and (background[0] - 5) / 20 >= 8
    assert dense_small_data.box_iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(50 / 150)


@pytest.mark.parametrize('task', ['seg', 'det'])
@pytest.mark.parametrize('backbone', ['scalable_vit_test', 'resnet18_quarter'])
def test_small_data_config_swaps_only_the_backbone(tmp_path, backbone, task):
    """Both fine-tuning configs load, build their model with the chosen backbone and run it on a 128 image."""
    import torch
    pytest.importorskip('mmseg' if task == 'seg' else 'mmdet')
    import dense_small_data
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    make_config = dense_small_data.TASKS[task][0]
    path = tmp_path / 'config.py'
    path.write_text(make_config(tmp_path, backbone, None, 300, 2, 2e-3, 0.0, backbone_lr_mult=0.5))
    cfg = Config.fromfile(str(path))
    expected = 'ScalableViTBackbone' if backbone == 'scalable_vit_test' else 'ResNet'
    assert cfg.model.backbone.type == expected and cfg.model.backbone.init_cfg is None
    assert cfg.train_cfg.max_iters == 300 and cfg.randomness.seed == 2
    assert cfg.optim_wrapper.paramwise_cfg.custom_keys.backbone.lr_mult == 0.5
    if task == 'seg':
        assert cfg.model.decode_head.num_classes == 11 and cfg.model.neck.in_channels == [16, 32, 64, 128]
        assert cfg.train_dataloader.dataset.type == 'BaseSegDataset'
        from mmseg.registry import MODELS
    else:
        assert cfg.model.bbox_head.num_classes == 8 and cfg.model.neck.in_channels == [32, 64, 128]
        assert cfg.model.backbone.out_indices == (1, 2, 3) and cfg.train_cfg.type == 'IterBasedTrainLoop'
        from mmdet.registry import MODELS
    init_default_scope(cfg.default_scope)
    model = MODELS.build(cfg.model)
    features = model.extract_feat(torch.zeros(1, 3, 128, 128))
    assert [f.shape[1] for f in features] == ([64] * 4 if task == 'seg' else [64] * 5)


def test_small_data_timm_cnn_loads_what_main_py_pre_trained(tmp_path):
    """The pre-trainable CNN row: main.py's checkpoint of the quarter-width ResNet-18-D goes into
    MMSegmentation's TIMMBackbone whole (every stage tensor equal), the classifier left out; a checkpoint that
    lacks tensors is refused before fine-tuning."""
    import timm
    import torch
    pytest.importorskip('mmseg')
    import dense_small_data
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    spec = dense_small_data.BACKBONES['resnet18d_quarter']
    assert spec.tasks == ('seg',) and spec.timm_model == 'resnet18d'
    classifier = timm.create_model(spec.timm_model, num_classes=11, **spec.timm_kwargs)
    assert 0.7e6 < sum(p.numel() for p in classifier.parameters()) < 0.8e6  # the same size as ResNetV1c-18 / 4
    torch.save({'model': classifier.state_dict(), 'epoch': 59}, tmp_path / 'checkpoint.pth')
    dense_small_data.check_timm_checkpoint(spec, tmp_path / 'checkpoint.pth')
    partial = {k: v for k, v in classifier.state_dict().items() if not k.startswith('layer4.')}
    torch.save({'model': partial}, tmp_path / 'partial.pth')  # timm itself would load it without a word
    with pytest.raises(SystemExit, match='lacks 30 of the 138 tensors'):
        dense_small_data.check_timm_checkpoint(spec, tmp_path / 'partial.pth')
    path = tmp_path / 'config.py'
    path.write_text(dense_small_data.segmentation_config(tmp_path, 'resnet18d_quarter', tmp_path / 'checkpoint.pth',
                                                         300, 0, 2e-3, 0.0))
    cfg = Config.fromfile(str(path))
    init_default_scope(cfg.default_scope)
    model = MODELS.build(cfg.model)
    model.init_weights()
    loaded = model.backbone.timm_model.state_dict()
    assert loaded and all(torch.equal(tensor, classifier.state_dict()[name]) for name, tensor in loaded.items())
    features = model.extract_feat(torch.zeros(1, 3, 128, 128))
    assert [f.shape[-1] for f in features] == [32, 16, 8, 4]
