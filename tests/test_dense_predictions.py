"""Predictions of the detectors and segmenters for users: the demos over folders and globs (pictures and
machine-readable results), test.py's --out and --show-dir, and the shared pieces (scalablevit.images,
scalablevit.openmmlab.predictions). Models are randomly initialised: the tests check files, formats and errors."""
import importlib.util
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from scalablevit.images import ImageInputError, find_images, output_names, write_atomically

from helpers import ROOT, run_command

DETECTION, SEGMENTATION = ROOT / 'detection', ROOT / 'segmentation'
DET_CONFIG = DETECTION / 'configs' / 'demo' / 'mask-rcnn_scalablevit-test_fpn_demo-coco.py'
SEG_CONFIG = SEGMENTATION / 'configs' / 'demo' / 'fpn_scalablevit-test_demo-ade.py'


def load_script(path: Path, name: str):
    """A script folder's module under its own name (detection/ and segmentation/ both have demo.py)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_find_images_folders_globs_and_names(tmp_path):
    (tmp_path / 'a' / 'deep').mkdir(parents=True)
    for name in ('a/x.jpg', 'a/deep/y.PNG', 'a/notes.txt', 'b.png'):
        (tmp_path / name).write_bytes(b'')
    found = find_images([str(tmp_path / 'a'), str(tmp_path / '*.png'), str(tmp_path / 'b.png')])
    assert found == [(str(tmp_path / 'a' / 'deep' / 'y.PNG'), 'deep/y.PNG'),
                     (str(tmp_path / 'a' / 'x.jpg'), 'x.jpg'),
                     (str(tmp_path / 'b.png'), 'b.png')]  # notes.txt left out, b.png once
    assert output_names(found, '.json') == ['deep/y.json', 'x.json', 'b.json']
    (tmp_path / 'empty').mkdir()
    for inputs, message in (([str(tmp_path / 'empty')], 'no images in folder'),
                            ([str(tmp_path / '*.webp')], 'no file matches'),
                            ([str(tmp_path / 'missing.jpg')], 'does not exist')):
        with pytest.raises(ImageInputError, match=message):
            find_images(inputs)
    (tmp_path / 'c').mkdir()
    (tmp_path / 'c' / 'x.png').write_bytes(b'')
    with pytest.raises(ImageInputError, match='would both write x.png'):
        output_names(find_images([str(tmp_path / 'a' / 'x.jpg'), str(tmp_path / 'c')]), '.png')


def test_write_atomically_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / 'out.json'
    write_atomically('old\n', target)

    def full_disk(*args):
        raise OSError(28, 'No space left on device')
    monkeypatch.setattr('os.fsync', full_disk)
    with pytest.raises(OSError):
        write_atomically('new\n', target)
    assert target.read_text() == 'old\n' and sorted(p.name for p in tmp_path.iterdir()) == ['out.json']


def test_label_map_png_keeps_indices_and_palette():
    pytest.importorskip('mmseg')
    demo = load_script(SEGMENTATION / 'demo.py', 'segmentation_demo')
    labels = np.arange(12 * 10).reshape(12, 10) % 150
    palette = [[i, 255 - i, 7] for i in range(150)]
    image = Image.open(io.BytesIO(demo.label_map_png(labels, palette)))
    assert image.mode == 'P' and np.array_equal(np.asarray(image), labels)
    assert image.getpalette()[:6] == [0, 255, 7, 1, 254, 7]
    many = Image.open(io.BytesIO(demo.label_map_png(labels + 300, [[0, 0, 0]] * 500)))
    assert np.array_equal(np.asarray(many), labels + 300)


def test_detections_json_has_boxes_names_and_decodable_masks():
    pytest.importorskip('mmdet')
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData
    from pycocotools import mask as mask_util
    demo = load_script(DETECTION / 'demo.py', 'detection_demo')
    masks = torch.zeros(2, 20, 30, dtype=torch.bool)
    masks[0, 2:5, 3:9] = True
    masks[1, 10:, :4] = True
    sample = DetDataSample(pred_instances=InstanceData(
        bboxes=torch.tensor([[3., 2., 9., 5.], [0., 10., 4., 20.]]), scores=torch.tensor([0.9, 0.25]),
        labels=torch.tensor([2, 0]), masks=masks))
    result = json.loads(json.dumps(demo.detections('x.jpg', sample, ('disc', 'square', 'triangle'))))
    assert result['classes'] == ['triangle', 'disc'] and result['scores'] == [0.9, 0.25]
    assert result['bboxes'] == [[3.0, 2.0, 9.0, 5.0], [0.0, 10.0, 4.0, 20.0]]
    decoded = mask_util.decode([dict(size=m['size'], counts=m['counts'].encode()) for m in result['masks']])
    assert np.array_equal(decoded.transpose(2, 0, 1), masks.numpy())


def test_published_outputs_appear_whole(tmp_path):
    pytest.importorskip('mmdet')
    from scalablevit.openmmlab.predictions import PublishOutputsHook, prepare_staging_dir
    out = tmp_path / 'out'
    stale = prepare_staging_dir(str(out))
    (stale / 'half.png').write_bytes(b'\x89PNG partial')  # a killed run's file
    staging = prepare_staging_dir(str(out))
    assert list(staging.iterdir()) == []
    (staging / 'sub').mkdir()
    (staging / 'sub' / 'a.png').write_bytes(b'a')
    (staging / 'results.bbox.json').write_text('[]')
    PublishOutputsHook(out).after_test_epoch(runner=None)
    assert sorted(str(p.relative_to(out)) for p in out.rglob('*')) == ['results.bbox.json', 'sub', 'sub/a.png']
    (tmp_path / 'file').write_text('')
    with pytest.raises(SystemExit, match='is a file'):
        prepare_staging_dir(str(tmp_path / 'file'))


def save_random_model(config: Path, scope: str, path: Path) -> list:
    """A randomly initialised model of `config` saved as train.py would (with the dataset's classes); returns
    the classes."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    import scalablevit.openmmlab  # noqa: F401  (registers the backbones)
    from scalablevit.checkpoint import save_checkpoint
    cfg = Config.fromfile(str(config))
    init_default_scope(scope)
    registry = importlib.import_module(f'{scope}.registry')
    torch.manual_seed(0)
    model = registry.MODELS.build(cfg.model)
    dataset = registry.DATASETS.get(cfg.test_dataloader.dataset.type)
    meta = dict(dataset.METAINFO, **(cfg.test_dataloader.dataset.get('metainfo') or {}))
    save_checkpoint({'state_dict': model.state_dict(), 'meta': {'dataset_meta': meta}}, path)
    return list(meta['classes'])


@pytest.mark.slow
def test_detection_demo_test_out_and_show_dir(tmp_path):
    pytest.importorskip('mmdet')
    from scalablevit.demo_data import make_demo_coco
    root = make_demo_coco(tmp_path / 'data' / 'demo_coco', train_images=2, val_images=3)
    classes = save_random_model(DET_CONFIG, 'mmdet', tmp_path / 'det.pth')
    images = sorted((root / 'val2017').iterdir())

    run_command([str(DETECTION / 'demo.py'), str(root / 'val2017'), str(images[0]), str(DET_CONFIG),
                 str(tmp_path / 'det.pth'), '--out-dir', str(tmp_path / 'demo'), '--score-thr', '0.1'], cwd=tmp_path)
    for image in images:
        with Image.open(image) as original, Image.open(tmp_path / 'demo' / 'vis' / f'{image.stem}.png') as drawn:
            assert drawn.size == original.size
            width, height = original.size
        preds = json.loads((tmp_path / 'demo' / 'preds' / f'{image.stem}.json').read_text())
        n = len(preds['labels'])
        assert n > 0 and len(preds['scores']) == len(preds['bboxes']) == len(preds['masks']) == n
        assert preds['classes'] == [classes[label] for label in preds['labels']]
        assert all(0 <= x0 <= x1 <= width and 0 <= y0 <= y1 <= height for x0, y0, x1, y1 in preds['bboxes'])
        assert all(m['size'] == [height, width] for m in preds['masks'])

    run_command([str(DETECTION / 'test.py'), str(DET_CONFIG), str(tmp_path / 'det.pth'), '--work-dir',
                 str(tmp_path / 'work'), '--out', str(tmp_path / 'coco'), '--show-dir', str(tmp_path / 'show')],
                cwd=tmp_path)
    assert sorted(p.name for p in (tmp_path / 'coco').iterdir()) == ['results.bbox.json', 'results.segm.json']
    boxes = json.loads((tmp_path / 'coco' / 'results.bbox.json').read_text())
    annotations = json.loads((root / 'annotations' / 'instances_val2017.json').read_text())
    assert {b['image_id'] for b in boxes} <= {i['id'] for i in annotations['images']}
    assert {b['category_id'] for b in boxes} <= {c['id'] for c in annotations['categories']}
    assert all(len(b['bbox']) == 4 and 0 <= b['score'] <= 1 for b in boxes)
    for image in images:
        with Image.open(image) as original, Image.open(tmp_path / 'show' / f'{image.stem}.png') as shown:
            assert shown.size == (2 * original.size[0], original.size[1])  # ground truth | prediction

    for inputs, message in (([str(tmp_path / 'empty')], 'no images in folder'),
                            ([str(tmp_path / '*.webp')], 'no file matches')):
        (tmp_path / 'empty').mkdir(exist_ok=True)
        result = run_command([str(DETECTION / 'demo.py'), *inputs, str(DET_CONFIG), str(tmp_path / 'det.pth'),
                              '--out-dir', str(tmp_path / 'bad')], cwd=tmp_path, check=False)
        assert result.returncode == 1 and result.stderr.strip().splitlines()[-1].startswith(f'error: {message}')
        assert not (tmp_path / 'bad').exists()


@pytest.mark.slow
def test_segmentation_demo_test_out_and_show_dir(tmp_path):
    pytest.importorskip('mmseg')
    from scalablevit.demo_data import make_demo_ade
    root = make_demo_ade(tmp_path / 'data' / 'demo_ade', train_images=2, val_images=3)
    classes = save_random_model(SEG_CONFIG, 'mmseg', tmp_path / 'seg.pth')
    images = sorted((root / 'images' / 'validation').iterdir())
    bad = tmp_path / 'broken.jpg'
    bad.write_bytes(b'\xff\xd8 not really')

    run_command([str(SEGMENTATION / 'demo.py'), str(root / 'images' / 'validation'), str(SEG_CONFIG),
                 str(tmp_path / 'seg.pth'), '--out-dir', str(tmp_path / 'demo')], cwd=tmp_path)
    listed = json.loads((tmp_path / 'demo' / 'classes.json').read_text())
    assert [c['name'] for c in listed] == classes and len(listed[0]['color']) == 3
    for image in images:
        with Image.open(image) as original, Image.open(tmp_path / 'demo' / 'pred' / f'{image.stem}.png') as labels:
            assert labels.mode == 'P' and labels.size == original.size
            assert np.asarray(labels).max() < len(classes)
            with Image.open(tmp_path / 'demo' / 'vis' / f'{image.stem}.png') as overlay:
                assert overlay.size == original.size

    run_command([str(SEGMENTATION / 'test.py'), str(SEG_CONFIG), str(tmp_path / 'seg.pth'), '--work-dir',
                 str(tmp_path / 'work'), '--out', str(tmp_path / 'maps'), '--show-dir', str(tmp_path / 'show')],
                cwd=tmp_path)
    assert sorted(p.name for p in (tmp_path / 'maps').iterdir()) == sorted(f'{i.stem}.png' for i in images)
    for image in images:
        with Image.open(image) as original, Image.open(tmp_path / 'maps' / f'{image.stem}.png') as labels, \
                Image.open(tmp_path / 'show' / f'{image.stem}.png') as shown:
            assert labels.size == original.size and 1 <= np.asarray(labels).min()  # reduce_zero_label: + 1
            assert shown.size == (2 * original.size[0], original.size[1])

    result = run_command([str(SEGMENTATION / 'demo.py'), str(images[0]), str(bad), str(SEG_CONFIG),
                          str(tmp_path / 'seg.pth'), '--out-dir', str(tmp_path / 'partial')], cwd=tmp_path,
                         check=False)
    last_line = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 1 and last_line.startswith(f'error: cannot read image {bad}')
    assert not list((tmp_path / 'partial').rglob('.*'))  # no temporary file left

    import timm
    torch.save({'model': timm.create_model('scalable_vit_test').state_dict()}, tmp_path / 'classifier.pth')
    other_task = run_command([str(SEGMENTATION / 'demo.py'), str(images[0]), str(SEG_CONFIG),
                              str(tmp_path / 'classifier.pth'), '--out-dir', str(tmp_path / 'y')], cwd=tmp_path,
                             check=False)
    assert other_task.returncode == 1 and 'does not fit the model of' in other_task.stderr
    assert 'classification checkpoint' in other_task.stderr and not (tmp_path / 'y').exists()
