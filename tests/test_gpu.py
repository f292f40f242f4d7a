"""The GPU check, in one command on a CUDA node (skipped elsewhere, by the `gpu` marker in conftest.py):

    .venv/bin/python -m pytest -m gpu tests/test_gpu.py && .venv/bin/python benchmarks/gpu.py

Every family on CUDA in float32 / bfloat16 / float16 against the CPU float32 result; the SDPA dispatch on CUDA;
classification/main.py a few steps with --amp and --torchcompile; a detection and a segmentation demo config a few
iterations with mmcv's CUDA ops and --amp; two NCCL processes when two GPUs exist."""
import json
import math
import re
import sys

import pytest
import timm
import torch
import torch.nn.functional as F
from test_amp import SIZES, TOLERANCES, default_size, outputs_and_gradients, perturb_window_regressors

import scalablevit
from scalablevit import layers

from helpers import ROOT, free_port, relative_error, run_command

pytestmark = pytest.mark.gpu

FAMILIES = list(scalablevit.FAMILIES)
DTYPES = {'float32': None, 'bfloat16': torch.bfloat16, 'float16': torch.float16}
# float32 on CUDA: cuDNN convolutions run in TF32 by default (10-bit mantissa), the matmuls in full float32
FLOAT32_TOLERANCE = (5e-3, 0.999)
CUDA = torch.device('cuda')


def cuda_autocast_run(model, x, dense, dtype):
    """`outputs_and_gradients` on CUDA (autocast('cuda') in `dtype`, None: float32), results back on the CPU."""
    model.zero_grad(set_to_none=True)
    with torch.autocast('cuda', dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        out = model.forward_intermediates(x, intermediates_only=True) if dense else [model(x)]
    g = torch.Generator().manual_seed(5)
    loss = sum((o.float() * torch.randn(o.shape, generator=g).to(o.device)).mean() for o in out)
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return [o.detach().float().cpu() for o in out], grads.cpu()


@pytest.mark.parametrize('dtype_name', list(DTYPES))
@pytest.mark.parametrize('size', ['default', 'odd', '224'])
@pytest.mark.parametrize('dense', [False, True], ids=['classifier', 'dense'])
@pytest.mark.parametrize('family', FAMILIES, ids=[f.name for f in FAMILIES])
def test_family_on_cuda_matches_cpu_float32(family, dense, size, dtype_name):
    shape = SIZES[size] if size in SIZES else default_size(family)
    torch.manual_seed(0)
    model = timm.create_model(family.test_model, drop_path_rate=0.).train()
    perturb_window_regressors(model)
    x = torch.randn(2, 3, *shape, generator=torch.Generator().manual_seed(1))
    reference, reference_grads = outputs_and_gradients(model, x, dense, None)
    out, grads = cuda_autocast_run(model.to(CUDA), x.to(CUDA), dense, DTYPES[dtype_name])
    max_error, min_cosine = FLOAT32_TOLERANCE if dtype_name == 'float32' else TOLERANCES[dtype_name]
    assert all(torch.isfinite(o).all() for o in out) and torch.isfinite(grads).all()
    errors = [relative_error(o, r) for o, r in zip(out, reference)]
    cosine = F.cosine_similarity(grads, reference_grads, dim=0).item()
    assert max(errors) < max_error and cosine > min_cosine, (errors, cosine)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16], ids=['float16', 'bfloat16'])
@pytest.mark.parametrize('with_mask', [False, True], ids=['plain', 'masked'])
@pytest.mark.parametrize('qk_dim', [32, 40], ids=['equal_widths', 'unequal_widths'])
def test_sdpa_dispatch_on_cuda(dtype, with_mask, qk_dim):
    """On CUDA `attend` always takes SDPA (a fused kernel: flash without a mask, memory-efficient with one; unequal
    q/k and v widths zero-padded) and agrees with the explicit ops in float64."""
    torch.manual_seed(0)
    q, k = (torch.randn(8, 4, 196, qk_dim, device=CUDA) for _ in range(2))
    v = torch.randn(8, 4, 196, 32, device=CUDA)
    bias = torch.randn(1, 4, 196, 196, device=CUDA)
    mask = ((torch.rand(8, 1, 1, 196, device=CUDA) > 0.3) | (torch.arange(196, device=CUDA) == 0)
            if with_mask else None)
    assert layers.sdpa_is_faster(q, k, v)
    from torch.nn.attention import SDPBackend, sdpa_kernel
    fused = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]
    with sdpa_kernel(fused):  # the math fallback is left out: a fused kernel must take these inputs
        out = layers.attend(q.to(dtype), k.to(dtype), v.to(dtype), qk_dim ** -0.5, mask=mask,
                            bias=bias.to(dtype) if with_mask else None)
    reference = layers.attend(q.double(), k.double(), v.double(), qk_dim ** -0.5, mask=mask,
                              bias=bias.double() if with_mask else None, fused=False)
    assert out.dtype == dtype and relative_error(out.double(), reference) < 0.02


@pytest.fixture(scope='module')
def classification_data(tmp_path_factory):
    from scalablevit.demo_data import make_demo_image_folder
    return make_demo_image_folder(tmp_path_factory.mktemp('data'), num_classes=4, train_per_class=32, val_per_class=8,
                                  size=64)


@pytest.mark.parametrize('amp_dtype', ['bfloat16', 'float16'])
def test_classification_amp_and_torchcompile(tmp_path, classification_data, amp_dtype):
    """main.py on CUDA: two epochs of the tiny ScalableViT with --amp (float16: with the loss scaler) and
    --torchcompile; finite losses in its log."""
    out = tmp_path / 'out'
    run_command(['main.py', '--model', 'scalable_vit_test', '--input-size', '64', '--batch-size', '16', '--epochs',
                 '2', '--warmup-epochs', '1', '--device', 'cuda', '--amp', '--amp-dtype', amp_dtype,
                 '--torchcompile', '--data-path', str(classification_data), '--output_dir', str(out),
                 '--num_workers', '2'], cwd=ROOT / 'classification', timeout=900)
    stats = [json.loads(line) for line in (out / 'log.txt').read_text().splitlines()]
    assert len(stats) == 2 and all(torch.isfinite(torch.tensor(s['train_loss'])) for s in stats)


def mmcv_has_cuda_ops() -> bool:
    try:
        from mmcv.ops import get_compiling_cuda_version
    except ImportError:
        return False
    return get_compiling_cuda_version() != 'not available'


@pytest.mark.parametrize('task, config', [
    ('detection', 'configs/demo/mask-rcnn_swin-vsa-test_fpn_demo-coco.py'),
    ('segmentation', 'configs/demo/upernet_swin-vsa-test_demo-cityscapes.py'),
])
def test_dense_demo_with_amp_and_mmcv_cuda_ops(tmp_path, task, config):
    """The driver's --amp (mmengine's AmpOptimWrapper, float16 with dynamic loss scaling) a few iterations on the
    demo data, with mmcv's CUDA ops (RoIAlign, NMS)."""
    if not mmcv_has_cuda_ops():
        pytest.skip("mmcv was built without CUDA ops: bash setup.sh --openmmlab --cuda (README's setup)")
    if task == 'detection':
        from scalablevit.demo_data import make_demo_coco
        make_demo_coco(tmp_path / 'data' / 'demo_coco', train_images=8, val_images=4)
        options = ['train_cfg.max_epochs=1']
    else:
        from scalablevit.demo_data import make_demo_cityscapes
        make_demo_cityscapes(tmp_path / 'data' / 'cityscapes_demo')
        options = ['train_cfg.max_iters=4']
    result = run_command([str(ROOT / task / 'train.py'), str(ROOT / task / config), '--amp', '--work-dir',
                          str(tmp_path / 'work'), '--cfg-options', *options], cwd=tmp_path, timeout=900)
    losses = [float(value) for value in re.findall(r'\bloss: (\S+)', result.stdout + result.stderr)]
    assert losses and all(math.isfinite(loss) for loss in losses), losses


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason='needs 2 GPUs for 2 NCCL processes')
def test_two_process_nccl_training(tmp_path, classification_data):
    """torchrun, 2 processes, NCCL (main.py's backend on CUDA): one epoch with --amp and distributed eval."""
    out = tmp_path / 'out'
    result = run_command([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2',
                          f'--master_port={free_port()}',
                          'main.py', '--model', 'scalable_vit_test', '--input-size', '64', '--batch-size', '16',
                          '--epochs', '1', '--warmup-epochs', '1', '--device', 'cuda', '--amp', '--data-path',
                          str(classification_data), '--output_dir', str(out), '--num_workers', '1', '--dist-eval'],
                         cwd=ROOT / 'classification', timeout=900)
    assert 'of 2, nccl)' in result.stdout + result.stderr
    stats = json.loads((out / 'log.txt').read_text().splitlines()[-1])
    assert torch.isfinite(torch.tensor(stats['train_loss']))
