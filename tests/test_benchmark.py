"""benchmarks/benchmark.py: the table and JSON it produces (tiny settings; speed targets live in the benchmark)."""
import json
import subprocess
import sys

import pytest

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


@pytest.mark.slow  # about 30 s: each row builds its backbone in its own process
def test_dense_benchmark_rows_json_and_curve(tmp_path):
    pytest.importorskip('mmdet')
    out, plot = tmp_path / 'dense.json', tmp_path / 'curve.png'
    result = subprocess.run(
        [sys.executable, str(ROOT / 'benchmarks' / 'dense.py'), '--curve', '--models', 'scalablevit-s', 'swin-t',
         '--sizes', '96x96', '128x160', '--warmup', '0', '--repeats', '1', '--threads', '1', '--json', str(out),
         '--plot', str(plot)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(out.read_text())['rows']
    assert {(r['model'], r['size'], r['mode']) for r in rows} == {
        (m, s, mode) for m in ('scalablevit-s', 'swin-t') for s in ('96x96', '128x160') for mode in ('infer', 'train')}
    for row in rows:
        assert 'error' not in row and row['batch_size'] == 1 and row['median_s'] > 0
        assert row['peak_mb'] > 0 and 0 <= row['step_mb'] <= row['peak_mb']
    train = {(r['model'], r['size']): r['step_mb'] for r in rows if r['mode'] == 'train'}
    assert train['scalablevit-s', '128x160'] > train['scalablevit-s', '96x96']  # more pixels, more activations
    assert plot.stat().st_size > 10_000
