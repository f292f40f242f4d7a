"""VSA (`scalablevit.vsa`) and Swin+VSA (`scalablevit.swin_vsa`): the released function to float32 rounding,
the released parameter names and what is specific to the family (the timm API of every family:
test_families.py)."""
import math

import pytest
import timm
import timm.optim
import torch
import torch.nn.functional as F

from scalablevit import swin_vsa
from scalablevit.vsa import VSAttention, relative_position_index, window_sampling_grid

from helpers import (
    ATTENTION_PATHS,
    golden_input,
    golden_outputs,
    golden_state_dict,
    read_buffer_keys,
    read_state_dict_spec,
    relative_error,
    select_attention_path,
    vsa_module_golden_errors,
)

MAX_RELATIVE_ERROR = 1e-5
SWIN_VSA = ('swin_tiny_vsa_patch4_window7_224', 'swin_small_vsa_patch4_window7_224')
TINY = 'swin_vsa_test'


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return timm.create_model(TINY).eval()


# --- the module ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('path', ATTENTION_PATHS)
def test_module_reproduces_the_release(monkeypatch, path):
    """All four golden fields (14x14 and 15x20, default and strongly moved/scaled windows); the stored
    reference keeps every third token of each field."""
    module = VSAttention(96, num_heads=3, window_size=7).eval()
    module.fused_attn = select_attention_path(monkeypatch, path)
    errors = vsa_module_golden_errors(module, 'vsa_attention', ('transform.2.weight', 'transform.2.bias'))
    for field, error in errors.items():
        assert error <= MAX_RELATIVE_ERROR, field


def test_zero_regressor_is_plain_window_attention():
    """A new module samples exactly the default windows: the same as attention inside zero-padded windows."""
    torch.manual_seed(0)
    module = VSAttention(32, num_heads=2, window_size=4).eval()
    x = torch.randn(2, 6, 9, 32)
    with torch.no_grad():
        out = module(x)
        qkv = F.pad(module.qkv(x), (0, 0, 0, 3, 0, 2))  # 8 x 12: 2 x 3 windows of 4 x 4
        q, k, v = qkv.view(2, 2, 4, 3, 4, 3, 2, 16).permute(5, 0, 1, 3, 6, 2, 4, 7).reshape(3, 12, 2, 16, 16)
        attn = (q @ k.transpose(-2, -1) * 16 ** -0.5 + module.relative_position_bias()).softmax(-1)
        expected = (attn @ v).view(2, 2, 3, 2, 4, 4, 16).permute(0, 1, 4, 2, 5, 3, 6).reshape(2, 8, 12, 32)
        expected = module.proj(expected[:, :6, :9])
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


def test_sampling_grid_conventions():
    zero = torch.zeros(1, 1, 4, 2, 3)
    grid = window_sampling_grid(zero, 7)  # 14 x 21 padded map: pixel centres at -1 + 2 i / (n - 1)
    torch.testing.assert_close(grid[0, :, :, 0], (-1 + 2 * torch.arange(21.) / 20).expand(14, 21))
    torch.testing.assert_close(grid[0, :, :, 1], (-1 + 2 * torch.arange(14.) / 13)[:, None].expand(14, 21))
    moved = zero.clone()
    moved[:, :, 0] = 3.  # x-offset of 3 window counts = 3 / nW in normalised units
    moved[:, :, 3] = 1.  # y-scale 1 + 1: twice the extent
    grid_moved = window_sampling_grid(moved, 7)
    torch.testing.assert_close(grid_moved[..., 0] - grid[..., 0], torch.full((1, 14, 21), 1.))
    spread = grid[0, :7, 0, 1] - grid[0, :7, 0, 1].mean()
    torch.testing.assert_close(grid_moved[0, :7, 0, 1] - grid_moved[0, :7, 0, 1].mean(), 2 * spread)
    index = relative_position_index(3)
    assert index.shape == (9, 9) and index[0, 0] == 12 and index[0, 8] == 0 and index[8, 0] == 24


def test_module_any_size_and_gradients():
    torch.manual_seed(0)
    module = VSAttention(16, num_heads=2, window_size=7)
    with torch.no_grad():
        module.transform[2].weight.normal_(0, 0.5)  # moved windows, so every parameter is in the graph
    for size in ((1, 1), (5, 12), (7, 7), (15, 20)):
        x = torch.randn(2, *size, 16, requires_grad=True)
        out = module(x)
        assert out.shape == x.shape and torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def test_non_finite_regression_is_an_error():
    module = VSAttention(16, num_heads=2)
    x = torch.randn(1, 7, 7, 16)
    x[0, 3, 3, 0] = float('nan')
    with pytest.raises(RuntimeError, match='non-finite offsets/scales'):
        module(x)


# --- Swin-T/S + VSA against the release ---------------------------------------------------------------------

@pytest.mark.parametrize('name', SWIN_VSA)
def test_swin_vsa_parameter_names_and_buffers_match_release(name):
    model = timm.create_model(name)
    expected = [(key, shape) for key, shape, _ in read_state_dict_spec(name)]
    assert [(key, tuple(p.shape)) for key, p in model.named_parameters()] == expected
    buffers = read_buffer_keys(name)
    state_dict = model.state_dict()
    assert sorted(set(state_dict) - {k for k, _ in expected}) == sorted(buffers)
    assert all(torch.equal(state_dict[k], relative_position_index(7)) for k in buffers)
    assert sum(p.numel() for p in model.parameters()) == golden_outputs(name)['params']


@pytest.mark.parametrize('name', [SWIN_VSA[0], pytest.param(SWIN_VSA[1], marks=pytest.mark.slow)])  # S: slow tier
def test_swin_vsa_golden_logits(monkeypatch, name):
    model = timm.create_model(name).eval()
    weights = golden_state_dict(name)
    weights.update({k: v for k, v in model.state_dict().items() if k.endswith('relative_position_index')})
    model.load_state_dict(weights, strict=True)
    ref = golden_outputs(name)
    sizes = [(224, 1, '')] + ([(256, 256, '_256')] if 'logits_256' in ref else [])
    for path in ATTENTION_PATHS:
        with monkeypatch.context() as patch:
            model.set_fused_attn(select_attention_path(patch, path))
            for size, seed, suffix in sizes:
                x = golden_input(size, seed)
                with torch.no_grad():
                    pooled = model.forward_head(model.forward_features(x), pre_logits=True)
                    logits = model.forward_head(model.forward_features(x))
                assert relative_error(pooled, torch.tensor(ref['pooled_features' + suffix])) <= MAX_RELATIVE_ERROR
                assert relative_error(logits, torch.tensor(ref['logits' + suffix])) <= MAX_RELATIVE_ERROR, (path, size)


def test_released_checkpoint_loads_strict(tmp_path):
    source = timm.create_model(TINY)
    path = tmp_path / 'released.pth'
    torch.save({'model': source.state_dict(), 'epoch': 3}, path)
    from scalablevit.checkpoint import pretrained_overlay
    model = timm.create_model(TINY, pretrained=True, pretrained_cfg_overlay=pretrained_overlay(str(path)))
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    without_index = {k: v for k, v in source.state_dict().items() if not k.endswith('relative_position_index')}
    torch.save(without_index, path)
    timm.create_model(TINY, pretrained=True, pretrained_cfg_overlay=pretrained_overlay(str(path)))
    other = timm.create_model(TINY, embed_dim=32)
    torch.save(other.state_dict(), path)
    with pytest.raises(ValueError, match='does not fit this SwinTransformerVSA'):
        timm.create_model(TINY, pretrained=True, pretrained_cfg_overlay=pretrained_overlay(str(path)))


# --- the family's own API rules --------------------------------------------------------------------------

def test_registered_with_swin_cfg_and_recipe():
    assert set(SWIN_VSA) | {TINY} <= set(timm.list_models('swin*vsa*'))
    cfg = timm.models.get_pretrained_cfg(SWIN_VSA[0])
    assert cfg.input_size == (3, 224, 224) and cfg.crop_pct == 0.9 and cfg.interpolation == 'bicubic'
    # Swin's recipe: drop path 0.2 / 0.3 (the class keeps the release's default 0.1), 20 warm-up epochs, EMA
    assert [swin_vsa.TRAIN_RECIPES[name]['drop_path'] for name in SWIN_VSA] == [0.2, 0.3]
    assert all(r['warmup_epochs'] == 20 and r['model_ema'] for r in swin_vsa.TRAIN_RECIPES.values())
    assert timm.create_model(SWIN_VSA[0]).layers[3].blocks[1].drop_path1.drop_prob == pytest.approx(0.1)


@pytest.mark.parametrize('size', [(64, 64), (97, 131), (30, 45)])  # odd maps before merging, maps < window
def test_any_input_size(tiny, size):
    with torch.no_grad():
        logits = tiny(torch.randn(2, 3, *size))
        features = timm.create_model(TINY, features_only=True).eval()(torch.randn(1, 3, *size))
    assert logits.shape == (2, 1000) and torch.isfinite(logits).all()
    H, W = math.ceil(size[0] / 4), math.ceil(size[1] / 4)
    for i, feat in enumerate(features):
        assert feat.shape == (1, 16 * 2 ** i, H, W)
        H, W = math.ceil(H / 2), math.ceil(W / 2)


def test_no_weight_decay_follows_the_release(tiny):
    """No decay on 1-D parameters, biases and the relative position bias tables; regressor and CPE
    weights decay."""
    tables = tiny.no_weight_decay()
    assert tables == {n for n, _ in tiny.named_parameters() if n.endswith('relative_position_bias_table')}
    groups = timm.optim.param_groups_weight_decay(tiny, 0.05, no_weight_decay_list=tables)
    no_decay = {id(p) for g in groups if g['weight_decay'] == 0 for p in g['params']}
    for name, param in tiny.named_parameters():
        assert (id(param) in no_decay) == (param.ndim <= 1 or name in tables), name
    params = dict(tiny.named_parameters())
    assert id(params['layers.0.blocks.0.attn.transform.2.weight']) not in no_decay
    assert id(params['layers.0.blocks.0.pos.weight']) not in no_decay


# --- ScalableViT with VSA windows (this package's extension) -----------------------------------------------

def test_scalable_vit_vsa_starts_as_scalable_vit(tmp_path):
    """With zero regressors (a new model, or ScalableViT weights loaded), IWSA with VSA windows is IWSA wherever
    no window padding is needed (224: stage maps 56, 28, 14, 7)."""
    from scalablevit.checkpoint import pretrained_overlay
    torch.manual_seed(0)
    plain = timm.create_model('scalable_vit_test').eval()
    path = tmp_path / 'scalable_vit_test.pth'
    torch.save({'model': plain.state_dict()}, path)
    varied = timm.create_model('scalable_vit_test', window_attention='vsa', pretrained=True,
                               pretrained_cfg_overlay=pretrained_overlay(str(path))).eval()
    new_keys = set(varied.state_dict()) - set(plain.state_dict())
    assert new_keys and all('.attn.transform.2.' in k for k in new_keys)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert relative_error(varied(x), plain(x)) < 1e-5
        for name in new_keys:
            varied.state_dict()[name].normal_(0, 0.5)
        assert relative_error(varied(x), plain(x)) > 1e-3  # moved windows change the function


def test_scalable_vit_vsa_variants_and_training():
    assert {'scalable_vit_small_vsa', 'scalable_vit_base_vsa', 'scalable_vit_large_vsa'} <= set(
        timm.list_models('scalable_vit*'))
    counts = [sum(p.numel() for p in timm.create_model(name).parameters())
              for name in ('scalable_vit_small', 'scalable_vit_small_vsa')]
    assert counts[1] - counts[0] == 117_656  # a 1x1 conv C -> 4·heads per IWSA block (13 blocks)
    model = timm.create_model('scalable_vit_test', window_attention='vsa', num_classes=4)
    with torch.no_grad():
        for module in model.modules():
            if module.__class__.__name__ == 'WindowRegressor':
                module[2].weight.normal_(0, 0.1)
    out = model(torch.randn(2, 3, 97, 131))
    out.sum().backward()
    assert out.shape == (2, 4) and all(p.grad is not None for p in model.parameters())
    with pytest.raises(ValueError, match="window_attention must be 'iwsa' or 'vsa'"):
        timm.create_model('scalable_vit_test', window_attention='shifted')
