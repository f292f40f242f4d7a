"""Mixed precision on CPU: every family of `scalablevit.FAMILIES` (classifier and dense backbone, at its default
size and at an odd size that pads every stage) forward and backward under `torch.autocast('cpu')` in bfloat16
and float16, finite and within the stated tolerances of float32; the ops kept in float32 (VSA's sampling grid and
`grid_sample`) and the numerics that half precision breaks otherwise (unscaled float16 scores, all-masked rows);
the OpenMMLab detector and segmentor under autocast, and a short bfloat16 training run of each that learns.
README.md's "Mixed precision" section holds the table these tests bound."""
import math
from typing import Dict, List

import pytest
import timm
import torch
import torch.nn.functional as F

import scalablevit
from scalablevit import layers, vsa
from scalablevit.layers import attend, key_padding_mask

from helpers import ROOT, relative_error

FAMILIES = list(scalablevit.FAMILIES)
HALF_DTYPES = {'bfloat16': torch.bfloat16, 'float16': torch.float16}
ODD_SIZE = (97, 131)  # no stage map is a multiple of a window, lattice or patch: every padding branch runs
SIZES = {'odd': ODD_SIZE, '224': (224, 224)}  # and 'default': the test variant's input size (64x64)
# Bounds on the relative error of logits / features and on the cosine similarity of the parameter gradients to
# float32. Measured extremes (tiny 'test' variants, seed 0; README's table): bfloat16 0.045 / 0.974, float16
# 0.0045 / 0.9999, both in ViTAE+VSA, whose 16-channel stages end on 2x2 maps at 64x64 (bfloat16 keeps 8
# significant bits, 2^-9 = 0.2% per rounding; float16 11).
TOLERANCES = {'bfloat16': (0.08, 0.95), 'float16': (0.01, 0.999)}


def default_size(family) -> tuple:
    return tuple(timm.models.get_pretrained_cfg(family.test_model).input_size[1:])


def perturb_window_regressors(model: torch.nn.Module) -> None:
    """Give the VSA regressors (zero at construction) small random weights, so windows move and the sampling grid
    runs off the default points."""
    g = torch.Generator().manual_seed(3)
    for module in model.modules():
        if isinstance(module, vsa.WindowRegressor):
            with torch.no_grad():
                for p in module[2].parameters():
                    p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def outputs_and_gradients(model: torch.nn.Module, x: torch.Tensor, dense: bool, dtype) -> tuple:
    """Outputs (logits, or the four feature maps) and the flat parameter gradient of a fixed random linear loss,
    under CPU autocast in `dtype` (None: float32)."""
    model.zero_grad(set_to_none=True)
    with torch.autocast('cpu', dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        out = model.forward_intermediates(x, intermediates_only=True) if dense else [model(x)]
    g = torch.Generator().manual_seed(5)
    loss = sum((o.float() * torch.randn(o.shape, generator=g)).mean() for o in out)
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return [o.detach() for o in out], grads


_float32_cache: Dict[tuple, tuple] = {}


@pytest.mark.parametrize('dtype_name', list(HALF_DTYPES))
@pytest.mark.parametrize('size', ['default', 'odd', pytest.param('224', marks=pytest.mark.slow)])
@pytest.mark.parametrize('dense', [False, True], ids=['classifier', 'dense'])
@pytest.mark.parametrize('family', FAMILIES, ids=[f.name for f in FAMILIES])
def test_autocast_matches_float32(family, dense, size, dtype_name):
    """Forward and backward in half precision: finite outputs and gradients, close to float32 (train mode:
    BatchNorm on batch statistics; no stochastic depth, so the runs compare)."""
    shape = SIZES[size] if size in SIZES else default_size(family)
    torch.manual_seed(0)
    model = timm.create_model(family.test_model, drop_path_rate=0.).train()
    perturb_window_regressors(model)
    x = torch.randn(2, 3, *shape, generator=torch.Generator().manual_seed(1))
    key = (family.name, dense, shape)
    if key not in _float32_cache:
        _float32_cache[key] = outputs_and_gradients(model, x, dense, None)
    reference, reference_grads = _float32_cache[key]
    out, grads = outputs_and_gradients(model, x, dense, HALF_DTYPES[dtype_name])
    max_error, min_cosine = TOLERANCES[dtype_name]
    assert all(torch.isfinite(o).all() for o in out) and torch.isfinite(grads).all()
    errors = [relative_error(o.float(), r) for o, r in zip(out, reference)]
    cosine = F.cosine_similarity(grads, reference_grads, dim=0).item()
    assert max(errors) < max_error and cosine > min_cosine, (errors, cosine)


@pytest.mark.parametrize('path', ['explicit', 'sdpa'])
def test_float16_scores_do_not_overflow(monkeypatch, path):
    """|q·kᵀ| ~ 1.6e5 exceeds float16's 65504 before the 1/√d scale; the explicit path scales q first (as SDPA
    does), so the softmax sees finite scores and the result matches float64."""
    if path == 'sdpa':
        monkeypatch.setattr(layers, 'sdpa_is_faster', lambda q, k, v: True)
    torch.manual_seed(0)
    q = torch.randn(2, 2, 49, 64) * 40
    k, v = q + torch.randn_like(q), torch.randn(2, 2, 49, 64)
    assert (q @ k.transpose(-2, -1)).abs().max() > torch.finfo(torch.float16).max
    reference = attend(q.double(), k.double(), v.double(), 64 ** -0.5, fused=False)
    out = attend(q.half(), k.half(), v.half(), 64 ** -0.5, fused=path != 'explicit')
    assert torch.isfinite(out).all() and relative_error(out.double(), reference) < 0.02


@pytest.mark.parametrize('side', range(1, 40))
def test_no_padded_group_is_all_masked(side):
    """Windows of 7 (a·7 + i) and dilated 8x8 lattices (a·⌈side/8⌉ + p) of any map side keep a real first token
    in every group: no softmax row is all -inf (NaN in any dtype)."""
    window_rows = torch.arange(math.ceil(side / 7))[:, None] * 7 + torch.arange(7)
    groups = math.ceil(side / 8)
    lattice_rows = torch.arange(8)[None, :] * groups + torch.arange(groups)[:, None]
    for rows in (window_rows, lattice_rows):
        mask = key_padding_mask(side, side + 3, rows, rows)
        assert mask.any(dim=1).all()


@pytest.mark.parametrize('dtype_name', list(HALF_DTYPES))
def test_masked_attention_in_half_precision(dtype_name):
    """Padding masks fill -inf into half-precision scores (with a bias, on both paths): finite, and real
    keys only."""
    torch.manual_seed(0)
    dtype = HALF_DTYPES[dtype_name]
    q, k, v = (torch.randn(4, 2, 49, 16) for _ in range(3))
    bias = torch.randn(1, 2, 49, 49)
    mask = (torch.rand(4, 1, 1, 49) > 0.7) | (torch.arange(49) == 0)  # mostly padding, one real key at least
    reference = attend(q.double(), k.double(), v.double(), 0.25, bias=bias.double(), mask=mask, fused=False)
    for fused in (False, True):
        out = attend(q.to(dtype), k.to(dtype), v.to(dtype), 0.25, bias=bias.to(dtype), mask=mask, fused=fused)
        assert torch.isfinite(out).all() and relative_error(out.double(), reference) < 0.03


def test_vsa_samples_in_float32_under_autocast(monkeypatch):
    """`grid_sample` gets a float32 grid and map under bfloat16 autocast, and a wide map (49 windows, where
    bfloat16 coordinates would be off by pixels) stays within bfloat16 rounding of float32."""
    seen: List[tuple] = []
    grid_sample = F.grid_sample

    def recording_grid_sample(x, grid, *args, **kwargs):
        seen.append((x.dtype, grid.dtype))
        return grid_sample(x, grid, *args, **kwargs)

    torch.manual_seed(0)
    module = vsa.VSAttention(16, 2, window_size=7)
    perturb_window_regressors(module)
    x = torch.randn(1, 14, 343, 16)
    with torch.no_grad():
        reference = module(x)
        monkeypatch.setattr(F, 'grid_sample', recording_grid_sample)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            out = module(x)
    assert seen == [(torch.float32, torch.float32)]
    assert relative_error(out.float(), reference) < 0.02


# --- the OpenMMLab models under autocast --------------------------------------------------------------------

def build_model_and_loader(config, data_root):
    """The model (train mode) and the training dataloader of a demo config, data read from `data_root`."""
    from mmengine.config import Config
    from mmengine.registry import MODELS, init_default_scope
    from mmengine.runner import Runner
    cfg = Config.fromfile(str(config))
    init_default_scope(cfg.default_scope)
    cfg.train_dataloader.dataset.data_root = str(data_root)
    torch.manual_seed(0)
    return MODELS.build(cfg.model).train(), Runner.build_dataloader(cfg.train_dataloader, seed=0)


def bfloat16_losses(model, loader, steps: int, lr: float) -> List[float]:
    """`steps` AdamW steps on the first batch under bfloat16 autocast (what a CPU --amp would run); the total
    loss of each."""
    batch = next(iter(loader))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        with torch.autocast('cpu', dtype=torch.bfloat16):
            data = model.data_preprocessor(batch, training=True)
            parsed, _ = model.parse_losses(model(**data, mode='loss'))
        assert torch.isfinite(parsed)
        optimizer.zero_grad()
        parsed.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        optimizer.step()
        losses.append(parsed.item())
    return losses


def test_mmengine_amp_optim_wrapper_refuses_cpu():
    """Why the dense tasks are tested under torch.autocast instead of through their drivers' --amp: mmengine's
    AmpOptimWrapper asserts a GPU/NPU/MLU/MUSA (0.10.x)."""
    pytest.importorskip('mmengine')
    from mmengine.optim import AmpOptimWrapper
    if torch.cuda.is_available():
        pytest.skip('a GPU is present: the drivers run --amp (tests/test_gpu.py)')
    with pytest.raises(AssertionError, match='gpu'):
        AmpOptimWrapper(optimizer=torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1))



@pytest.mark.parametrize('task, config', [('detection', 'retinanet_scalablevit-test_fpn_demo-coco.py'),
                                          ('segmentation', 'upernet_swin-vsa-test_demo-cityscapes.py')])
@pytest.mark.parametrize('request_amp', [['--amp'], ['--cfg-options', 'optim_wrapper.type=AmpOptimWrapper']])
def test_dense_drivers_refuse_amp_without_a_gpu_in_one_line(tmp_path, task, config, request_amp):
    """train.py --amp (or a config naming AmpOptimWrapper) where mmengine cannot run it: one `error:` line that
    says what to do, before any work (no work dir), instead of mmengine's assertion after the model is built."""
    pytest.importorskip('mmdet')
    pytest.importorskip('mmseg')
    if torch.cuda.is_available():
        pytest.skip('a GPU is present: the drivers run --amp (tests/test_gpu.py)')
    from scalablevit.openmmlab.runner import train
    work = tmp_path / 'work'
    with pytest.raises(SystemExit, match=r"^error: --amp \(mmengine's AmpOptimWrapper\) needs a CUDA device .*"
                                         r"train without --amp"):
        train([str(ROOT / task / 'configs' / 'demo' / config), '--work-dir', str(work), *request_amp])
    assert not work.exists()

@pytest.mark.slow
@pytest.mark.parametrize('config', ['detection/configs/demo/retinanet_scalablevit-test_fpn_demo-coco.py',
                                    'segmentation/configs/demo/upernet_swin-vsa-test_demo-cityscapes.py'])
def test_dense_task_trains_under_bfloat16_autocast(tmp_path, config):
    """A demo detector (RetinaNet + ScalableViT) and segmentor (UperNet + Swin+VSA: grid_sample) on their
    generated datasets: ten AdamW steps on one batch under bfloat16 autocast, every loss and gradient finite, and
    the loss falls. (Two-stage detectors stop on CPU under autocast in mmcv's CPU NMS / RoIAlign kernels, which
    take one dtype for boxes and scores / features and RoIs; their CUDA kernels, what AmpOptimWrapper runs, do
    not: tests/test_gpu.py trains Mask R-CNN with --amp.)"""
    pytest.importorskip('mmdet')
    pytest.importorskip('mmseg')
    import scalablevit.openmmlab  # noqa: F401  (registers the backbones)
    if 'detection' in config:
        from scalablevit.demo_data import make_demo_coco
        data_root = tmp_path / 'data' / 'demo_coco'
        make_demo_coco(data_root, train_images=4, val_images=2)
    else:
        from scalablevit.demo_data import make_demo_cityscapes
        data_root = tmp_path / 'data' / 'demo_cityscapes'
        make_demo_cityscapes(data_root)
    model, loader = build_model_and_loader(ROOT / config, data_root)
    losses = bfloat16_losses(model, loader, steps=10, lr=1e-3)
    assert min(losses[-3:]) < 0.8 * losses[0], losses
