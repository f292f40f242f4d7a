"""Nothing silently wrong in detection/ and segmentation/: checkpoints written atomically with digests
and read by the checkpoint policy, test.py strict about the checkpoint, class counts and label values checked
before the first step, COCO files validated before pycocotools, one training run per work dir."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip('mmdet')
from mmengine.config import Config  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402
from mmengine.runner import runner as mmengine_runner  # noqa: E402
from PIL import Image  # noqa: E402

import scalablevit.openmmlab  # noqa: E402,F401  (registers the backbones and the hook)
from scalablevit import checkpoint as checkpoint_io  # noqa: E402
from scalablevit.demo_data import make_demo_coco  # noqa: E402
from scalablevit.openmmlab.checks import DataCheckError, DataCheckHook, validate_coco_file  # noqa: E402
from scalablevit.openmmlab.compat import use_checkpoint_policy  # noqa: E402
from scalablevit.openmmlab.runner import test as run_test  # noqa: E402
from scalablevit.openmmlab.runner import train as run_train  # noqa: E402

from helpers import ROOT, create_tiny, run_command  # noqa: E402

DETECTION = ROOT / 'detection'
SEGMENTATION = ROOT / 'segmentation'
RETINANET = DETECTION / 'configs' / 'demo' / 'retinanet_scalablevit-test_fpn_demo-coco.py'
MASK_RCNN = DETECTION / 'configs' / 'demo' / 'mask-rcnn_scalablevit-test_fpn_demo-coco.py'
SEM_FPN = SEGMENTATION / 'configs' / 'demo' / 'fpn_scalablevit-test_demo-ade.py'


def build_model(config: Path, scope: str) -> torch.nn.Module:
    from mmengine.registry import MODELS
    init_default_scope(scope)
    return MODELS.build(Config.fromfile(str(config)).model)


@pytest.fixture
def coco(tmp_path, monkeypatch) -> Path:
    """The demo COCO dataset where the demo configs look for it (data/demo_coco under the working dir)."""
    monkeypatch.chdir(tmp_path)
    return make_demo_coco(tmp_path / 'data' / 'demo_coco', train_images=4, val_images=2)


# --- checkpoints: written atomically with digests, read by the policy ---------------------------------------

def test_mmengine_checkpoints_are_written_atomically_with_digests(tmp_path, monkeypatch):
    """Under the policy, the Runner's save (CheckpointHook's epoch_N.pth) goes through save_checkpoint: a write
    that dies midway leaves the previous file and no partial one."""
    path = tmp_path / 'epoch_1.pth'
    with use_checkpoint_policy():
        mmengine_runner.save_checkpoint({'state_dict': {'w': torch.ones(3)}, 'meta': {'epoch': 1}}, str(path))
        assert checkpoint_io.DIGEST_KEY in torch.load(path, weights_only=True)
        before = path.read_bytes()

        def dies_midway(obj, f, *args, **kwargs):
            f.write(b'PK\x03\x04 partial')
            raise KeyboardInterrupt

        monkeypatch.setattr(torch, 'save', dies_midway)
        with pytest.raises(KeyboardInterrupt):
            mmengine_runner.save_checkpoint({'state_dict': {'w': torch.zeros(3)}}, str(path))
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ['epoch_1.pth']


def test_importing_changes_nothing_in_mmengine_and_the_policy_is_undone(tmp_path):
    """`import scalablevit.openmmlab` (every config's custom_imports) registers and patches nothing: mmengine's
    checkpoint writer, finder and loader stay its own, also after a run of the project's drivers (which install
    the policy for their runs, `use_checkpoint_policy`)."""
    import copyreg

    from mmengine.logging import HistoryBuffer
    from mmengine.runner import checkpoint as mmengine_checkpoint
    mmengine_functions = (mmengine_runner.save_checkpoint, mmengine_runner.find_latest_checkpoint,
                          mmengine_checkpoint.CheckpointLoader._schemes[''])
    assert mmengine_functions == (mmengine_checkpoint.save_checkpoint, mmengine_checkpoint.find_latest_checkpoint,
                                  mmengine_checkpoint.load_from_local)
    assert HistoryBuffer not in copyreg.dispatch_table
    assert HistoryBuffer not in torch.serialization.get_safe_globals()
    with use_checkpoint_policy():
        assert mmengine_runner.save_checkpoint is not mmengine_checkpoint.save_checkpoint
        assert HistoryBuffer in torch.serialization.get_safe_globals()
    with pytest.raises(SystemExit, match='error: config'):
        run_train([str(tmp_path / 'missing.py')])
    assert (mmengine_runner.save_checkpoint, mmengine_runner.find_latest_checkpoint,
            mmengine_checkpoint.CheckpointLoader._schemes['']) == mmengine_functions
    assert HistoryBuffer not in copyreg.dispatch_table
    assert HistoryBuffer not in torch.serialization.get_safe_globals()


@pytest.mark.slow
def test_kill_during_mmengine_saves_leaves_no_truncated_checkpoint(tmp_path):
    """kill -9 at 3 moments while a process saves epoch_N.pth through mmengine's Runner path in a loop (each save
    takes ~0.1 s, so most kills land mid-write): every epoch_N.pth there is complete and loads."""
    import signal
    import time
    writer = ('import sys, torch\n'
              'from mmengine.runner import runner\n'
              'from scalablevit.openmmlab import use_checkpoint_policy\n'
              'weights = {f"w{i}": torch.randn(256, 1024) for i in range(24)}\n'
              'print("ready", flush=True)\n'
              'with use_checkpoint_policy():\n'
              '    for n in range(1000):\n'
              '        path = f"{sys.argv[1]}/epoch_{n % 3}.pth"\n'
              '        runner.save_checkpoint({"state_dict": weights, "meta": {"epoch": n}}, path)\n')
    for kill in range(3):
        process = subprocess.Popen([sys.executable, '-c', writer, str(tmp_path)], stdout=subprocess.PIPE, text=True)
        assert process.stdout.readline().strip() == 'ready'
        time.sleep(0.3 + 0.17 * kill)
        process.send_signal(signal.SIGKILL)
        process.wait()
        saved = sorted(tmp_path.glob('epoch_*.pth'))
        assert saved
        for path in saved:
            assert checkpoint_io.load_checkpoint_file(str(path))['state_dict']['w23'].shape == (256, 1024)


def test_mmengine_reads_through_the_policy(tmp_path):
    from mmengine.runner.checkpoint import CheckpointLoader
    path = tmp_path / 'nan.pth'
    torch.save({'state_dict': {'backbone.w': torch.tensor([1.0, float('nan')])}}, path)
    with use_checkpoint_policy():
        with pytest.raises(checkpoint_io.CheckpointError, match=r'nan.pth: NaN or infinite values .* backbone\.w'):
            CheckpointLoader.load_checkpoint(str(path))


@pytest.fixture(scope='module')
def retinanet_checkpoint(tmp_path_factory) -> Path:
    """A checkpoint that fits the RetinaNet demo config, as mmengine writes them (weights under 'state_dict')."""
    path = tmp_path_factory.mktemp('ckpt') / 'epoch_2.pth'
    model = build_model(RETINANET, 'mmdet')
    with use_checkpoint_policy():
        mmengine_runner.save_checkpoint({'state_dict': model.state_dict(), 'meta': {'epoch': 2}}, str(path))
    return path


def test_truncated_epoch_checkpoint_is_one_clear_error(tmp_path, retinanet_checkpoint):
    """What a kill during mmengine's own (non-atomic) write left: used to end in a traceback."""
    truncated = tmp_path / 'epoch_3.pth'
    truncated.write_bytes(retinanet_checkpoint.read_bytes()[:100000])
    with pytest.raises(SystemExit, match=r'error: cannot read checkpoint .*epoch_3.pth \(truncated'):
        run_test([str(RETINANET), str(truncated), '--work-dir', str(tmp_path / 'test')])


# --- test.py: strict about the checkpoint -----------------------------------------------------------------

@pytest.mark.parametrize('kind', ['mask_rcnn', 'classification', 'segmentation'])
def test_test_refuses_a_checkpoint_that_does_not_fit(tmp_path, kind):
    """Another config's, a classification and another task's checkpoint: used to report metrics with exit 0."""
    if kind == 'mask_rcnn':
        state = {'state_dict': build_model(MASK_RCNN, 'mmdet').state_dict()}
        listed = 'roi_head.bbox_head.'
    elif kind == 'classification':
        state = {'model': create_tiny().state_dict(), 'epoch': 1}
        listed = 'unexpected keys: epoch, model\n'
    else:
        pytest.importorskip('mmseg')
        state = {'state_dict': build_model(SEM_FPN, 'mmseg').state_dict()}
        listed = 'decode_head.'
    path = tmp_path / f'{kind}.pth'
    torch.save(state, path)
    with pytest.raises(SystemExit, match='does not fit the model of') as error:
        run_test([str(RETINANET), str(path), '--work-dir', str(tmp_path / 'test')])
    assert listed in str(error.value) and 'missing keys: none' not in str(error.value)
    assert '--allow-mismatch' in str(error.value)
    assert ('an ImageNet classification checkpoint' in str(error.value)) == (kind == 'classification')


def test_segmentation_test_refuses_a_detection_checkpoint(tmp_path, retinanet_checkpoint):
    pytest.importorskip('mmseg')
    with pytest.raises(SystemExit, match='does not fit the model of') as error:
        run_test([str(SEM_FPN), str(retinanet_checkpoint), '--work-dir', str(tmp_path / 'test')])
    assert 'decode_head.' in str(error.value) and 'bbox_head.' in str(error.value)


@pytest.mark.slow
def test_allow_mismatch_evaluates_with_a_warning(coco, tmp_path):
    path = tmp_path / 'classification.pth'
    torch.save({'model': create_tiny().state_dict()}, path)
    metrics = run_test([str(RETINANET), str(path), '--work-dir', str(tmp_path / 'test'), '--allow-mismatch'])
    assert 'coco/bbox_mAP' in metrics
    (log,) = (tmp_path / 'test').glob('*/*.log')
    assert '--allow-mismatch: checkpoint' in log.read_text()


# --- class counts, label values and annotation files before the first step ------------------------------

@pytest.mark.parametrize('config, options, head', [
    (RETINANET, ['model.bbox_head.num_classes=2'], 'model.bbox_head (RetinaHead) predicts num_classes=2'),
    (MASK_RCNN, ['model.roi_head.bbox_head.num_classes=2', 'model.roi_head.mask_head.num_classes=2'],
     'model.roi_head.bbox_head (Shared2FCBBoxHead) predicts num_classes=2'),
])
def test_class_count_is_checked_before_the_first_step(coco, tmp_path, config, options, head):
    """RetinaNet with 2 classes on the 3-class dataset used to train and exit 0 (Mask R-CNN: IndexError)."""
    work = tmp_path / 'work'
    with pytest.raises(SystemExit, match='has 3 classes') as error:
        run_train([str(config), '--work-dir', str(work), '--cfg-options', *options])
    assert head in str(error.value)
    assert not list(work.glob('*.pth'))


def coco_file(tmp_path: Path, **changes) -> Path:
    root = make_demo_coco(tmp_path / 'coco', train_images=2, val_images=1)
    path = root / 'annotations' / 'instances_train2017.json'
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if key == 'polygon':
            data['annotations'][1]['segmentation'][0][2] = value
        else:
            data[key] = value
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize('change, message', [
    (dict(annotations=[]), 'has an empty "annotations" list'),
    (dict(polygon=1e9), r'annotations\[1\] \(id 2\): polygon 0 has coordinates x [\d.]+\.\.1e\+09, y .*, far '
                        r'outside the 160x128 image'),
    (dict(polygon=float('nan')), r'annotations\[1\] \(id 2\): polygon 0 has a coordinate that is not a finite'),
])
def test_bad_coco_files_are_named_with_the_record(tmp_path, change, message):
    """An empty annotation list used to end in 'need at least one array to concatenate', a 1e9 polygon
    in a segfault inside pycocotools."""
    path = coco_file(tmp_path, **change)
    with pytest.raises(DataCheckError, match=f'annotation file {path}.*{message}'):
        validate_coco_file(str(path))


def test_valid_and_image_info_coco_files_pass(tmp_path):
    path = coco_file(tmp_path)
    validate_coco_file(str(path))
    data = json.loads(path.read_text())
    del data['annotations']  # a test-dev image-info file
    path.write_text(json.dumps(data))
    validate_coco_file(str(path))


def test_training_stops_on_a_bad_annotation_file(coco, tmp_path):
    ann = coco / 'annotations' / 'instances_train2017.json'
    data = json.loads(ann.read_text())
    data['annotations'][0]['segmentation'][0][0] = 1e9
    ann.write_text(json.dumps(data))
    with pytest.raises(SystemExit, match=r'error: annotation file .*instances_train2017.json: annotations\[0\]'):
        run_train([str(RETINANET), '--work-dir', str(tmp_path / 'work')])


class FakeSample:
    def __init__(self, labels, path='label.png', reduce_zero_label=True):
        from mmengine.structures import PixelData
        self.gt_sem_seg = PixelData(data=torch.tensor(labels)[None])
        self.metainfo = dict(seg_map_path=path, reduce_zero_label=reduce_zero_label)


class FakeRunner:
    def __init__(self):
        self.model = torch.nn.Module()
        self.model.decode_head = torch.nn.Module()
        self.model.decode_head.ignore_index = 255


def test_label_values_are_checked_and_the_ignore_index_kept():
    hook = DataCheckHook()
    hook._num_classes['train'] = 150
    hook.before_train_iter(FakeRunner(), 0, dict(data_samples=[FakeSample([[0, 149, 255]])]))
    with pytest.raises(DataCheckError, match=r'label map ADE_1.png holds label values \[150, 219\] \(after '
                                             r'reduce_zero_label.*outside the 150 classes \(0..149\) and the ignore '
                                             r'index 255'):
        hook.before_train_iter(FakeRunner(), 0, dict(data_samples=[FakeSample([[0, 219, 150]], 'ADE_1.png')]))


@pytest.fixture
def ade(tmp_path, monkeypatch) -> Path:
    """The demo ADE20K-layout dataset where the demo configs look for it."""
    pytest.importorskip('mmseg')
    from scalablevit.demo_data import make_demo_ade
    monkeypatch.chdir(tmp_path)
    return make_demo_ade(tmp_path / 'data' / 'demo_ade', train_images=2, val_images=1)


def test_segmentation_class_count_is_checked_before_the_first_step(ade, tmp_path):
    with pytest.raises(SystemExit, match=r'model.decode_head \(FPNHead\) predicts num_classes=100, but the train '
                                         r'dataset \(ADE20KDataset.*has 150 classes'):
        run_train([str(SEM_FPN), '--work-dir', str(tmp_path / 'work'), '--cfg-options',
                   'model.decode_head.num_classes=100'])


def test_segmentation_training_stops_on_out_of_range_labels(ade, tmp_path):
    """A label value above the class count used to stop with 'Target 219 is out of bounds' (a traceback)."""
    for label in (ade / 'annotations' / 'training').iterdir():
        Image.fromarray(np.full((96, 128), 220, np.uint8)).save(label)
    with pytest.raises(SystemExit, match=r'error: label map .*annotations/training/ADE_train_\d+.png holds label '
                                         r'values \[219\]'):
        run_train([str(SEM_FPN), '--work-dir', str(tmp_path / 'work')])


@pytest.mark.slow
@pytest.mark.parametrize('options, message', [
    (['model.decode_head.num_classes=100'], 'error: model.decode_head (FPNHead) predicts num_classes=100'),
    (['param_scheduler.0.begin=5', 'param_scheduler.0.end=5'], 'ValueError: end should be larger than begin'),
], ids=['class-count', 'bad-schedule'])
def test_failure_before_the_first_step_exits_with_loader_workers(ade, tmp_path, options, message):
    """A run that fails after the iteration-based loop is built and before it trains (its data check, a
    schedule mmengine refuses, a checkpoint that does not fit) exits at once. mmengine's loop starts the loader's
    workers when it is built; they ignore SIGTERM (so that a signal to the process group reaches the main
    process first), and the interpreter's exit ends daemonic workers with SIGTERM and waits for them: it waited
    forever."""
    result = run_command([str(SEGMENTATION / 'train.py'), str(SEM_FPN), '--work-dir', str(tmp_path / 'work'),
                          '--cfg-options', 'train_dataloader.num_workers=1', 'train_dataloader.persistent_workers=True',
                          *options], cwd=tmp_path, timeout=240, check=False)
    assert result.returncode == 1 and message in result.stderr, result.stderr[-2000:]


# --- one run per work dir ---------------------------------------------------------------------------------

def test_second_training_run_on_a_work_dir_stops_at_once(coco, tmp_path):
    import fcntl
    import os
    work = tmp_path / 'work'
    work.mkdir()
    fd = os.open(work / 'run.lock', os.O_RDWR | os.O_CREAT)  # another run's lock (flock belongs to the open file)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, b'PID 4242 on node7, since 2026-12-01 20:00:00 UTC\n')
    try:
        with pytest.raises(SystemExit, match='error: output folder .*work is in use by another run: PID 4242 on node7'):
            run_train([str(RETINANET), '--work-dir', str(work)])
    finally:
        os.close(fd)


@pytest.mark.slow
def test_train_test_scripts_exit_with_one_message(coco, tmp_path):
    """From the command line: status 1 and an `error:` line, no traceback (train.py with a wrong class count,
    test.py with a classification checkpoint)."""
    result = run_command([str(DETECTION / 'train.py'), str(RETINANET), '--work-dir', str(tmp_path / 'work'),
                          '--cfg-options', 'model.bbox_head.num_classes=2'], cwd=tmp_path, check=False)
    assert result.returncode == 1 and 'error: model.bbox_head (RetinaHead) predicts num_classes=2' in result.stderr
    assert 'Traceback' not in result.stderr
    path = tmp_path / 'classification.pth'
    torch.save({'model': create_tiny().state_dict()}, path)
    result = run_command([str(DETECTION / 'test.py'), str(RETINANET), str(path), '--work-dir',
                          str(tmp_path / 'test')], cwd=tmp_path, check=False)
    assert result.returncode == 1 and 'does not fit the model of' in result.stderr
    assert 'Traceback' not in result.stderr
