"""figures/vsa_windows.py: the windows VSA's regressors choose, read from the model's own computation."""
import math
import time

import pytest
import timm
import torch
from PIL import Image

import scalablevit  # noqa: F401  (registers the models in timm)

import vsa_windows
from helpers import ROOT, run_command


@pytest.mark.parametrize('size', [(224, 224), (97, 131)])
def test_zero_regressors_give_exactly_the_default_windows(size):
    """A new Swin+VSA model's regressors are zero: every window drawn is the default one, at every stage."""
    model = timm.create_model('swin_vsa_test').eval()
    stages = vsa_windows.stage_windows(model, torch.randn(1, 3, *size), block=0)
    assert [s['stride'] for s in stages] == [4, 8, 16, 32]
    for stage in stages:
        s, stride = stage['window_size'], stage['stride']
        rows, columns = math.ceil(math.ceil(size[0] / stride) / s), math.ceil(math.ceil(size[1] / stride) / s)
        assert stage['default'].shape[:2] == (rows, columns)
        assert stage['default'][-1, -1].tolist() == [(columns - 1) * s * stride, (rows - 1) * s * stride,
                                                      columns * s * stride, rows * s * stride]
        torch.testing.assert_close(stage['windows'], stage['default'].expand_as(stage['windows']), rtol=0,
                                   atol=1e-9)


def test_window_boxes_follow_the_sampling_grid():
    """A scale of 2 doubles a window around its centre; an offset moves it by offset / windows x (map - 1) / 2
    (the normalised units of `window_sampling_grid`); a negative scale flips the window, the box stays ordered."""
    regression = torch.zeros(1, 1, 4, 2, 3)  # one head, 2 x 3 windows of 7 x 7 on a 14 x 21 map
    regression[0, 0, 2, 1, 2] = 1.0  # window (1, 2): x-scale 2
    regression[0, 0, 1, 0, 0] = 0.5  # window (0, 0): y-offset
    regression[0, 0, 3, 0, 1] = -2.0  # window (0, 1): y-scale -1
    boxes = vsa_windows.window_boxes(regression, 7)[0, 0]
    torch.testing.assert_close(boxes[1, 2], torch.tensor([17.5 - 7, 7, 17.5 + 7, 14], dtype=torch.float64))
    shift = 0.5 / 2 * (14 - 1) / 2
    torch.testing.assert_close(boxes[0, 0], torch.tensor([0, shift, 7, 7 + shift], dtype=torch.float64))
    torch.testing.assert_close(boxes[0, 1], torch.tensor([7, 0, 14, 7], dtype=torch.float64))
    torch.testing.assert_close(boxes[1, 0], torch.tensor([0, 7, 7, 14], dtype=torch.float64))


def test_random_regressors_move_the_windows_reproducibly():
    image = torch.randn(1, 3, 64, 64)
    windows = []
    for seed in (0, 0, 1):
        torch.manual_seed(0)
        model = timm.create_model('swin_vsa_test').eval()
        assert vsa_windows.randomize_regressors(model, seed) == sum(1 for n, _ in model.named_modules()
                                                                      if n.endswith('attn.transform'))
        windows.append(vsa_windows.stage_windows(model, image, block=-1)[0])
    assert not torch.allclose(windows[0]['windows'], windows[0]['default'].expand_as(windows[0]['windows']))
    assert torch.equal(windows[0]['windows'], windows[1]['windows'])
    assert not torch.equal(windows[0]['windows'], windows[2]['windows'])


def test_vitae_windows_are_drawn_from_its_release_layout():
    """ViTAEv2*+VSA computes its regression with two regressors of its own; the recorded windows are the ones
    its attention samples (PyTorch's default init: already moved)."""
    model = timm.create_model('vitaev2_vsa_test').eval()
    stages = vsa_windows.stage_windows(model, torch.randn(1, 3, 64, 64), block=0)
    assert stages and all(s['windows'].shape[1:3] == s['default'].shape[:2] for s in stages)
    assert not torch.allclose(stages[0]['windows'], stages[0]['default'].expand_as(stages[0]['windows']))


def test_script_writes_a_png_and_refuses_a_model_without_vsa(tmp_path, capsys):
    out = tmp_path / 'windows.png'
    vsa_windows.main(['--model', 'swin_vsa_test', '--random-regressors', '3', '--size', '64', '--out', str(out)])
    assert f'wrote {out}' in capsys.readouterr().out
    with Image.open(out) as png:
        assert png.format == 'PNG' and png.size[0] > 300 and png.size[1] > 300
    refused = tmp_path / 'none.png'
    with pytest.raises(SystemExit, match='computes no VSA windows'):
        vsa_windows.main(['--model', 'scalable_vit_test', '--size', '64', '--out', str(refused)])
    assert not refused.exists() and list(tmp_path.iterdir()) == [out]


def test_script_refuses_a_checkpoint_of_another_model(tmp_path):
    checkpoint = tmp_path / 'other.pth'
    torch.save({'model': timm.create_model('scalable_vit_test').state_dict()}, checkpoint)
    with pytest.raises(SystemExit, match=f'error: checkpoint {checkpoint} does not fit swin_vsa_test'):
        vsa_windows.main(['--model', 'swin_vsa_test', '--checkpoint', str(checkpoint), '--out',
                          str(tmp_path / 'w.png')])
    assert not (tmp_path / 'w.png').exists()


@pytest.mark.slow
def test_swin_tiny_figure_under_a_minute(tmp_path):
    out = tmp_path / 'swin_t.png'
    start = time.perf_counter()
    run_command([str(ROOT / 'figures' / 'vsa_windows.py'), '--random-regressors', '0', '--out', str(out)],
                cwd=ROOT)
    assert time.perf_counter() - start < 60 and out.stat().st_size > 10_000
