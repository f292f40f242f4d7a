"""classification/predict.py: top-k predictions with class names for images, folders and globs, to CSV or JSON."""
import argparse
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import scalablevit  # noqa: F401  (registers the models in timm)
from scalablevit.checkpoint import save_checkpoint
from scalablevit.demo_data import make_demo_image_folder

import main as cls_main
import predict
from errors import UserInputError
from helpers import ROOT, TINY_MODEL, run_command

CLASSIFICATION = ROOT / 'classification'


def run_predict(*argv) -> None:
    predict.main(predict.get_args_parser().parse_args([*map(str, argv), '--workers', '0']))


@pytest.fixture(scope='module')
def data(tmp_path_factory) -> Path:
    return make_demo_image_folder(tmp_path_factory.mktemp('data'), num_classes=4, train_per_class=16, val_per_class=8,
                                  size=32)


@pytest.fixture(scope='module')
def trained(data, tmp_path_factory) -> Path:
    """main.py's checkpoint after two epochs of the tiny model on the generated 4-class dataset."""
    out = tmp_path_factory.mktemp('trained')
    args = argparse.ArgumentParser(parents=[cls_main.get_args_parser()]).parse_args([
        '--model', TINY_MODEL, '--input-size', '32', '--batch-size', '8', '--warmup-epochs', '1', '--lr', '4e-3',
        '--device', 'cpu', '--data-path', str(data), '--output_dir', str(out), '--epochs', '2', '--num_workers', '0'])
    cls_main.main(args)
    return out


@pytest.fixture
def random_checkpoint(data, tmp_path) -> Path:
    """A main.py-style checkpoint of a randomly initialised 4-class tiny model trained on `data`."""
    torch.manual_seed(0)
    model = timm.create_model(TINY_MODEL, num_classes=4)
    path = tmp_path / 'random.pth'
    save_checkpoint({'model': model.state_dict(), 'args': {'model': TINY_MODEL, 'data_path': str(data),
                                                            'input_size': 32}}, path)
    return path


@pytest.mark.slow  # trains for ~15 s
def test_folder_predictions_of_a_trained_model_match_its_evaluation(data, trained, tmp_path):
    """The folder's class names come from the checkpoint's training folder, and the top-1 accuracy over the val
    folder equals the one main.py measured on the same images at the end of training."""
    out = tmp_path / 'predictions.csv'
    run_predict(data / 'val', '--checkpoint', trained / 'checkpoint.pth', '--topk', '2', '--output', out,
                '--batch-size', '5')
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 32 and list(rows[0]) == ['image', 'class_1', 'label_1', 'prob_1', 'class_2', 'label_2',
                                                 'prob_2']
    assert all(row['label_1'] == f'class_{int(row["class_1"]):02d}' for row in rows)
    assert all(1 >= float(row['prob_1']) >= float(row['prob_2']) >= 0 for row in rows)
    accuracy = 100 * np.mean([row['label_1'] == Path(row['image']).parent.name for row in rows])
    logged = json.loads((trained / 'log.txt').read_text().splitlines()[-1])['test_acc1']
    assert accuracy == pytest.approx(logged, abs=1e-3)


def test_json_output_glob_and_class_map(data, random_checkpoint, tmp_path):
    names = tmp_path / 'names.txt'
    names.write_text('cat\ndog\nbird\nfish\n')
    out = tmp_path / 'predictions.json'
    run_predict(f'{data}/val/class_01/*.jpg', '--checkpoint', random_checkpoint, '--class-map', names,
                '--topk', '10', '--output', out, '--amp')
    result = json.loads(out.read_text())
    assert result['labels'] == f'--class-map {names}' and len(result['predictions']) == 8
    for prediction in result['predictions']:
        assert Path(prediction['image']).parent.name == 'class_01'
        assert len(prediction['topk']) == 4  # top-k is capped at the class count
        assert [p['label'] for p in prediction['topk']] == [['cat', 'dog', 'bird', 'fish'][p['index']]
                                                            for p in prediction['topk']]
        assert sum(p['prob'] for p in prediction['topk']) == pytest.approx(1, abs=1e-4)


def test_class_names_stored_beside_the_checkpoint_and_imagenet_names(random_checkpoint, tmp_path, capsys):
    image = tmp_path / 'one.png'
    Image.fromarray(np.full((40, 50, 3), 120, np.uint8)).save(image)
    (random_checkpoint.parent / 'config.json').write_text(json.dumps({'label_names': ['a', 'b', 'c', 'd']}))
    run_predict(image, '--checkpoint', random_checkpoint, '--topk', '1')
    row = next(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert row['label_1'] == 'abcd'[int(row['class_1'])]

    imagenet = tmp_path / 'plain' / 'imagenet.pth'
    imagenet.parent.mkdir()
    torch.save(timm.create_model(TINY_MODEL).state_dict(), imagenet)  # a plain 1000-class state dict
    run_predict(image, '--checkpoint', imagenet, '--model', TINY_MODEL, '--topk', '1')
    row = next(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert row['label_1'] == timm.data.ImageNetInfo().index_to_description(int(row['class_1']))


def test_odd_images_are_read(random_checkpoint, tmp_path, capsys):
    """16-bit grey, 8-bit grey, RGBA, palette and images smaller than the crop all give predictions."""
    folder = tmp_path / 'odd'
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 65535, (37, 53), dtype=np.uint16)).save(folder / 'grey16.png')
    Image.fromarray(rng.integers(0, 255, (41, 29), dtype=np.uint8), 'L').save(folder / 'grey.png')
    Image.fromarray(rng.integers(0, 255, (30, 70, 4), dtype=np.uint8), 'RGBA').save(folder / 'rgba.png')
    Image.fromarray(rng.integers(0, 255, (30, 30, 3), dtype=np.uint8)).convert('P').save(folder / 'palette.png')
    Image.fromarray(rng.integers(0, 255, (7, 5, 3), dtype=np.uint8)).save(folder / 'tiny.jpg')
    (folder / 'notes.txt').write_text('not an image, not in a folder search')
    run_predict(folder, '--checkpoint', random_checkpoint, '--topk', '1')
    rows = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert sorted(Path(r['image']).name for r in rows) == ['grey.png', 'grey16.png', 'palette.png', 'rgba.png',
                                                            'tiny.jpg']


@pytest.mark.parametrize('problem, message', [
    ('empty folder', 'no images in folder'),
    ('glob matching nothing', 'no file matches'),
    ('missing input', 'does not exist'),
    ('unreadable image', 'cannot read image'),
    ('detection checkpoint', 'holds a detector or segmenter'),
    ('class map of another class count', 'lists 3 classes, the model has 4'),
    ('checkpoint without EMA weights and --use-ema', 'no EMA weights'),
    ('unknown output format', 'the format comes from the suffix'),
])
def test_bad_input_is_one_clear_error_and_writes_nothing(data, random_checkpoint, tmp_path, problem, message):
    out = tmp_path / 'predictions.csv'
    inputs, extra = [data / 'val' / 'class_00'], []
    if problem == 'empty folder':
        inputs = [tmp_path / 'empty']
        inputs[0].mkdir()
    elif problem == 'glob matching nothing':
        inputs = [f'{data}/val/*/*.webp']
    elif problem == 'missing input':
        inputs = [tmp_path / 'nothing.jpg']
    elif problem == 'unreadable image':
        bad = tmp_path / 'bad.jpg'
        bad.write_bytes(b'\xff\xd8 truncated')
        inputs = [data / 'val' / 'class_00', bad]
    elif problem == 'detection checkpoint':
        weights = timm.create_model(TINY_MODEL).state_dict()
        detector = {**{f'backbone.{k}': v for k, v in weights.items()}, 'rpn_head.rpn_conv.weight': torch.zeros(1)}
        torch.save({'state_dict': detector, 'meta': {}}, tmp_path / 'detector.pth')
        extra = ['--checkpoint', tmp_path / 'detector.pth', '--model', TINY_MODEL]
    elif problem == 'class map of another class count':
        (tmp_path / 'three.txt').write_text('a\nb\nc\n')
        extra = ['--class-map', tmp_path / 'three.txt']
    elif problem == 'checkpoint without EMA weights and --use-ema':
        extra = ['--use-ema']
    elif problem == 'unknown output format':
        out = tmp_path / 'predictions.parquet'
    if not any(str(e) == '--checkpoint' for e in extra):
        extra = ['--checkpoint', random_checkpoint, *extra]
    with pytest.raises(UserInputError, match=message) if problem != 'unreadable image' else \
            pytest.raises(predict.UnreadableImageError, match=message):
        run_predict(*inputs, *extra, '--output', out)
    assert list(tmp_path.glob('predictions*')) == [] and list(tmp_path.glob('.predictions*')) == []


def test_skip_bad_images_leaves_them_out(data, random_checkpoint, tmp_path, capsys):
    bad = tmp_path / 'bad.png'
    bad.write_bytes(b'\x89PNG\r\n\x1a\n damaged')
    run_predict(data / 'val' / 'class_02', bad, '--checkpoint', random_checkpoint, '--skip-bad-images')
    captured = capsys.readouterr()
    rows = list(csv.DictReader(captured.out.splitlines()))
    assert len(rows) == 8 and str(bad) not in captured.out and f'skipped: cannot read image {bad}' in captured.err


@pytest.mark.slow
def test_command_line_exit_status_and_message(data, random_checkpoint, tmp_path):
    empty = tmp_path / 'empty'
    empty.mkdir()
    result = run_command([str(CLASSIFICATION / 'predict.py'), empty, '--checkpoint', random_checkpoint], cwd=tmp_path,
                         check=False)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith(f'error: no images in folder {empty}')
    out = tmp_path / 'out.json'
    run_command([str(CLASSIFICATION / 'predict.py'), data / 'val', '--checkpoint', random_checkpoint, '--output', out,
                 '--workers', '2', '--batch-size', '7'], cwd=tmp_path)
    assert len(json.loads(out.read_text())['predictions']) == 32
