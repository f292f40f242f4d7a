"""ScopeViT (`scalablevit.scope_vit`): the released function to float32 rounding at the sizes the release
accepts, the released parameter names, any other size through masked lattice padding, and the family's own
rules (the timm API of every family: test_families.py)."""
import math

import numpy as np
import pytest
import timm
import timm.optim
import torch

from scalablevit.scope_vit import DilatedLatticeAttention

from helpers import (
    ATTENTION_PATHS,
    DATA_DIR,
    fill_padding_with_noise,
    relative_error,
    select_attention_path,
)

MAX_RELATIVE_ERROR = 1e-5
VARIANTS = ('xtiny', 'tiny', 'small')
TINY = 'scope_vit_test'
# golden case: (input shape, input seed, q/k/v projection weights x10 for sharp attention)
GOLDEN_CASES = {'': ((2, 3, 256, 256), 1, False), '_sharp': ((2, 3, 256, 256), 1, True),
                '_256x512': ((2, 3, 256, 512), 2, False)}
SHARPENED = ('attn.query.weight', 'attn.key_value.weight', 'attn.qkv.weight')


def state_dict_spec(variant):
    """(key, shape, init) rows of the released parameters: init 'w' is N(0, 0.02²), 'one' is 1 + N(0, 0.02²)."""
    lines = (DATA_DIR / f'scope_vit_{variant}.state_dict.tsv').read_text().splitlines()[1:]
    return [(key, tuple(int(s) for s in shape.split('x')), init)
            for key, shape, init in (line.split('\t') for line in lines)]


def golden_weights(variant, sharp=False):
    g = torch.Generator().manual_seed(0)
    weights = {}
    for key, shape, init in state_dict_spec(variant):
        t = torch.randn(shape, generator=g, dtype=torch.float64) * 0.02 + (1.0 if init == 'one' else 0.0)
        weights[key] = t.float() * (10 if sharp and key.endswith(SHARPENED) else 1)
    return weights


@pytest.fixture(scope='module')
def golden():
    with np.load(DATA_DIR / 'scope_vit.golden.npz') as data:
        return {k: torch.from_numpy(data[k]) for k in data.files}


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return timm.create_model(TINY).eval()


# --- the released function ----------------------------------------------------------------------------------

@pytest.mark.parametrize('variant', VARIANTS)
def test_parameter_names_and_shapes_match_release(variant, golden):
    model = timm.create_model(f'scope_vit_{variant}')
    expected = [(key, shape) for key, shape, _ in state_dict_spec(variant)]
    assert [(key, tuple(p.shape)) for key, p in model.named_parameters()] == expected
    assert sum(p.numel() for p in model.parameters()) == int(golden[f'{variant}/params'])
    buffers = {k for k in model.state_dict() if k not in dict(model.named_parameters())}
    assert all(k.rsplit('.', 1)[1] in ('running_mean', 'running_var', 'num_batches_tracked') for k in buffers)


# ScopeViT-T in the fast tier; XT and S (the same code at other widths and depths) in the slow one
@pytest.mark.parametrize('variant', [v if v == 'tiny' else pytest.param(v, marks=pytest.mark.slow) for v in VARIANTS])
def test_golden_logits_and_features(monkeypatch, variant, golden):
    """Base, sharp-attention and 256x512 cases, on every attention path."""
    model = timm.create_model(f'scope_vit_{variant}').eval()
    for case, (shape, seed, sharp) in GOLDEN_CASES.items():
        model.load_state_dict(golden_weights(variant, sharp), strict=False)  # BN buffers keep their defaults
        x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
        for path in ATTENTION_PATHS:
            with monkeypatch.context() as patch:
                model.set_fused_attn(select_attention_path(patch, path))
                with torch.no_grad():
                    pooled = model.forward_head(model.forward_features(x), pre_logits=True)
                    logits = model.forward_head(model.forward_features(x))
            ref_pooled, ref_logits = golden[f'{variant}/pooled_features{case}'], golden[f'{variant}/logits{case}']
            assert relative_error(pooled, ref_pooled) <= MAX_RELATIVE_ERROR, (case, path)
            assert relative_error(logits, ref_logits) <= MAX_RELATIVE_ERROR, (case, path)


def test_released_checkpoint_loads_strict(tmp_path):
    """A checkpoint in the release's format (its keys, wrapped as `model`) loads through timm strictly."""
    weights = golden_weights('tiny')
    model = timm.create_model('scope_vit_tiny')
    state = {k: v for k, v in model.state_dict().items() if k not in weights}  # BatchNorm buffers
    path = tmp_path / 'scopevit_tiny.pth'
    torch.save({'model': dict(weights, **state)}, path)
    loaded = timm.create_model('scope_vit_tiny', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    torch.testing.assert_close(loaded.state_dict()['blocks3.4.gsda.attn.qkv.weight'],
                               weights['blocks3.4.gsda.attn.qkv.weight'], rtol=0, atol=0)


def test_position_bias_table_and_index():
    """The 'cr' log-coordinate table and the (dy + 7) * 15 + (dx + 7) index, query minus key."""
    rel_pos = DilatedLatticeAttention(32, 2).rel_pos
    d = torch.arange(-7, 8, dtype=torch.float32)
    f = torch.sign(d) * torch.log1p(d.abs())
    torch.testing.assert_close(rel_pos.rel_coords_log[:, 3], torch.stack([f, torch.full_like(f, f[3])], -1))
    cells = torch.stack(torch.meshgrid(torch.arange(8), torch.arange(8), indexing='ij'), -1).reshape(64, 2)
    dy = cells[:, None, 0] - cells[None, :, 0]
    dx = cells[:, None, 1] - cells[None, :, 1]
    assert torch.equal(rel_pos.relative_position_index.view(64, 64), (dy + 7) * 15 + (dx + 7))


# --- any input size -----------------------------------------------------------------------------------------

def lattice_attention_by_loops(attn: DilatedLatticeAttention, x: torch.Tensor) -> torch.Tensor:
    """GSDA over the real tokens only, group by group (no padding anywhere), for a (1, H, W, C) map."""
    _, H, W, C = x.shape
    ph, pw = math.ceil(H / 8), math.ceil(W / 8)
    heads, d = attn.num_heads, attn.head_dim
    bias = attn.rel_pos.get_bias()[0]  # heads, 64, 64
    out = torch.zeros(H, W, C)
    for p in range(ph):
        for q in range(pw):
            cells = [(a, b) for a in range(8) for b in range(8) if a * ph + p < H and b * pw + q < W]
            index = torch.tensor([a * 8 + b for a, b in cells])
            tokens = torch.stack([x[0, a * ph + p, b * pw + q] for a, b in cells])  # n, C
            qkv = attn.qkv(tokens).view(len(cells), 3, heads, d).permute(1, 2, 0, 3)
            scores = qkv[0] @ qkv[1].transpose(-2, -1) * attn.scale + bias[:, index][:, :, index]
            o = (scores.softmax(-1) @ qkv[2]).transpose(0, 1).reshape(len(cells), C)
            for (a, b), value in zip(cells, o):
                out[a * ph + p, b * pw + q] = value
    return attn.proj(out)[None]


# map sizes: 224 input (stages 56, 28, 14, 7), 97x131 (25x33 ... 4x5), 800x1344 (stage 2: 100x168, stage 4 25x42)
@pytest.mark.parametrize('size', [(28, 28), (7, 7), (25, 33), (4, 5), (100, 168), (25, 42), (16, 24)])
def test_lattice_attention_ignores_padding(monkeypatch, size):
    torch.manual_seed(0)
    attn = DilatedLatticeAttention(32, 2).eval()
    for p in attn.parameters():
        p.data.normal_(0, 0.3)  # far from uniform attention
    x = torch.randn(1, *size, 32)
    with torch.no_grad():
        expected = lattice_attention_by_loops(attn, x)
        for path in ATTENTION_PATHS:
            with monkeypatch.context() as patch:
                attn.fused_attn = select_attention_path(patch, path)
                torch.testing.assert_close(attn(x), expected, rtol=1e-5, atol=1e-5, msg=path)


@pytest.mark.parametrize('size', [(224, 224), (97, 131), pytest.param((800, 1344), marks=pytest.mark.slow)])
def test_padding_values_do_not_reach_real_tokens(monkeypatch, tiny, size):
    """Fill GSDA's padding with large random values instead of zeros: the outputs stay the same."""
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        expected = tiny.forward_intermediates(x, intermediates_only=True)
    fill_padding_with_noise(monkeypatch)
    with torch.no_grad():
        noisy = tiny.forward_intermediates(x, intermediates_only=True)
    for a, b in zip(noisy, expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('size', [(32, 32), (97, 131), (224, 224), (256, 200)])
def test_any_input_size(tiny, size):
    with torch.no_grad():
        logits = tiny(torch.randn(2, 3, *size))
        features = timm.create_model(TINY, features_only=True).eval()(torch.randn(1, 3, *size))
    assert logits.shape == (2, 1000) and torch.isfinite(logits).all()
    H, W = math.ceil(size[0] / 4), math.ceil(size[1] / 4)
    for i, feat in enumerate(features):
        assert feat.shape == (1, 16 * 2 ** i, H, W)
        H, W = math.ceil(H / 2), math.ceil(W / 2)


@pytest.mark.parametrize('size', [(31, 64), (64, 16), (8, 8)])
def test_too_small_input_raises_clear_error(tiny, size):
    with pytest.raises(ValueError, match=r'at least 32x32 pixels.*got \d+x\d+'):
        tiny(torch.randn(1, 3, *size))


# --- the family's own API rules --------------------------------------------------------------------------

def test_registered_with_the_release_cfg():
    assert {f'scope_vit_{v}' for v in VARIANTS} | {TINY} <= set(timm.list_models('scope_vit*'))
    cfg = timm.models.get_pretrained_cfg('scope_vit_tiny')
    assert cfg.input_size == (3, 256, 256) and cfg.crop_pct == 0.9 and cfg.interpolation == 'bicubic'
    assert cfg.num_classes == 1000 and timm.create_model('scope_vit_tiny').head.out_features == 1000


def test_drop_path_one_rate_per_block_shared_by_its_layers():
    """linspace(0, rate, blocks): one rate per ScopeViT block, applied to both branches of both its layers."""
    model = timm.create_model('scope_vit_tiny', drop_path_rate=0.1)
    blocks = [b for stage in (model.blocks1, model.blocks2, model.blocks3, model.blocks4) for b in stage]
    expected = np.linspace(0, 0.1, len(blocks))
    for block, rate in zip(blocks, expected):
        for branch in (block.mssa.drop_path1, block.mssa.drop_path2, block.gsda.drop_path1, block.gsda.drop_path2):
            assert getattr(branch, 'drop_prob', 0.) == pytest.approx(rate, abs=1e-7)


def test_no_weight_decay_exempts_layer_scale(tiny):
    names = tiny.no_weight_decay()
    assert names and all(n.endswith(('ls1.gamma', 'ls2.gamma')) for n in names)
    assert len(names) == 4 * 4  # 4 blocks x (MSSA, GSDA) x (ls1, ls2)
    groups = timm.optim.param_groups_weight_decay(tiny, 0.05, no_weight_decay_list=names)
    no_decay = {id(p) for g in groups if g['weight_decay'] == 0 for p in g['params']}
    params = dict(tiny.named_parameters())
    assert id(params['blocks1.0.mssa.ls1.gamma']) in no_decay
    assert id(params['blocks1.0.gsda.attn.rel_pos.mlp.fc1.weight']) not in no_decay




def test_one_to_four_stages():
    """Fewer stages than the release's four leave the later named slots empty; more are refused clearly."""
    model = timm.create_model(TINY, depths=(1, 1, 1), embed_dims=(16, 32, 64), num_heads=(2, 4, 8),
                              head_splits=((1, 1, 0), (2, 1, 1), (4, 3, 1)), kv_strides=(4, 2, 1)).eval()
    assert not any(k.startswith(('blocks4', 'norm4', 'patch_embed4')) for k in model.state_dict())
    assert [info['reduction'] for info in model.feature_info] == [4, 8, 16]
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1000) and model.num_features == 64
    with pytest.raises(ValueError, match='one to 4 stages'):
        timm.create_model(TINY, depths=(1,) * 5, embed_dims=(8,) * 5, num_heads=(1,) * 5,
                          head_splits=((1, 1, 0),) * 5, kv_strides=(1,) * 5)
