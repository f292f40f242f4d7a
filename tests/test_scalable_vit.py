"""ScalableViT (`scalablevit.scalable_vit`): the released checkpoints' names and shapes load strictly, the released
function is reproduced, any input size through masked window padding, and the family's own rules (the timm API
of every family: test_families.py)."""
import pytest
import timm
import timm.optim
import torch
from timm.layers import set_scriptable

from scalablevit.scalable_vit import min_input_size, window_attention

from helpers import (
    ATTENTION_PATHS,
    VARIANTS,
    create_tiny,
    fill_padding_with_noise,
    golden_input,
    golden_outputs,
    golden_state_dict,
    read_state_dict_spec,
    relative_error,
    select_attention_path,
)

MAX_RELATIVE_ERROR = 1e-5
BATCH = 2


# --- the released function ----------------------------------------------------------------------------------

@pytest.mark.parametrize('variant', VARIANTS)
def test_parameter_names_and_shapes_match_release(variant):
    model = timm.create_model(f'scalable_vit_{variant}')
    expected = [(key, shape) for key, shape, _ in read_state_dict_spec(variant)]
    actual = [(key, tuple(t.shape)) for key, t in model.state_dict().items()]
    assert actual == expected
    assert sum(p.numel() for p in model.parameters()) == golden_outputs(variant)['params']


@pytest.mark.parametrize('variant', [v if v == 'small' else pytest.param(v, marks=pytest.mark.slow) for v in VARIANTS])
def test_golden_logits_and_features(monkeypatch, variant):
    model = timm.create_model(f'scalable_vit_{variant}').eval()
    model.load_state_dict(golden_state_dict(variant), strict=True)
    ref = golden_outputs(variant)
    ref_logits, ref_pooled = torch.tensor(ref['logits']), torch.tensor(ref['pooled_features'])
    x = golden_input()
    for path in ATTENTION_PATHS:
        with monkeypatch.context() as patch:
            model.set_fused_attn(select_attention_path(patch, path))
            with torch.no_grad():
                pooled = model.forward_head(model.forward_features(x), pre_logits=True)
                logits = model(x)
        assert relative_error(pooled, ref_pooled) <= MAX_RELATIVE_ERROR, path
        assert relative_error(logits, ref_logits) <= MAX_RELATIVE_ERROR, path



# --- any input size -----------------------------------------------------------------------------------------

def reference_window_attention(qkv: torch.Tensor, num_heads: int, window_size: int) -> torch.Tensor:
    """Per-window attention over the window's real tokens only, by explicit loops (no padding at all)."""
    B, H, W, C3 = qkv.shape
    C, d = C3 // 3, C3 // 3 // num_heads
    out = torch.zeros(B, H, W, C, dtype=qkv.dtype)
    for top in range(0, H, window_size):
        for left in range(0, W, window_size):
            win = qkv[:, top:top + window_size, left:left + window_size]  # edge windows are smaller
            h, w = win.shape[1:3]
            q, k, v = win.reshape(B, h * w, 3, num_heads, d).permute(2, 0, 3, 1, 4)
            attn = ((q @ k.transpose(-2, -1)) * d ** -0.5).softmax(-1)
            out[:, top:top + h, left:left + w] = (attn @ v).transpose(1, 2).reshape(B, h, w, C)
    return out.reshape(B, H * W, C)


@pytest.mark.parametrize('path', ATTENTION_PATHS)
@pytest.mark.parametrize('size', [(7, 14), (9, 11), (3, 5), (15, 8)])
def test_window_attention_ignores_padding(monkeypatch, size, path):
    fused = select_attention_path(monkeypatch, path)
    torch.manual_seed(0)
    H, W = size
    qkv = torch.randn(2, H, W, 3 * 12, dtype=torch.float64)
    out = window_attention(qkv, num_heads=3, window_size=7, scale=4 ** -0.5, dropout_p=0., fused=fused)
    torch.testing.assert_close(out, reference_window_attention(qkv, 3, 7), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize('path', ATTENTION_PATHS)
def test_padding_values_do_not_reach_real_tokens(monkeypatch, path):
    """Fill the padded q/k/v with large random values instead of zeros: real-token outputs stay the same."""
    fused = select_attention_path(monkeypatch, path)
    torch.manual_seed(0)
    qkv = torch.randn(2, 9, 11, 3 * 12)
    expected = window_attention(qkv, num_heads=3, window_size=7, scale=0.5, dropout_p=0., fused=fused)

    fill_padding_with_noise(monkeypatch)
    out = window_attention(qkv, num_heads=3, window_size=7, scale=0.5, dropout_p=0., fused=fused)
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('size', [(97, 131), (512, 683), (29, 29), (224, 35)])
def test_runs_on_odd_sizes(tiny, size):
    with torch.no_grad():
        features = tiny.forward_intermediates(torch.randn(1, 3, *size), intermediates_only=True)
    side_h, side_w = size
    for i, feat in enumerate(features):
        side_h, side_w = (side_h - 1) // (4 if i == 0 else 2) + 1, (side_w - 1) // (4 if i == 0 else 2) + 1
        assert feat.shape == (1, tiny.embed_dims[i], side_h, side_w)
        assert torch.isfinite(feat).all()


def test_small_model_at_detection_size():
    """The real S backbone on a COCO-sized 800x1333 image: strides 4/8/16/32, finite features."""
    import timm
    model = timm.create_model('scalable_vit_small', features_only=True).eval()
    with torch.no_grad():
        features = model(torch.randn(1, 3, 800, 1333))
    assert [tuple(f.shape[1:]) for f in features] == [
        (64, 200, 334), (128, 100, 167), (256, 50, 84), (512, 25, 42)]
    assert all(torch.isfinite(f).all() for f in features)


def test_minimum_input_size():
    assert min_input_size((8, 4, 2, 1)) == 29
    assert min_input_size((1, 1, 1, 1)) == 1


@pytest.mark.parametrize('size', [(28, 28), (28, 224), (224, 20), (1, 1)])
def test_too_small_input_raises_clear_error(tiny, size):
    with pytest.raises(ValueError, match='at least 29x29 pixels'):
        tiny(torch.randn(1, 3, *size))



# --- the family's own API rules ------------------------------------------------------------------------------

def test_models_registered():
    assert timm.list_models('scalable_vit*') == sorted(
        [f'scalable_vit_{v}' for v in ('base', 'large', 'small', 'test')] + [f'scalable_vit_{v}_vsa' for v in VARIANTS])
    for variant in VARIANTS:
        cfg = timm.models.get_pretrained_cfg(f'scalable_vit_{variant}')
        assert cfg.input_size == (3, 224, 224) and cfg.crop_pct == 0.875 and cfg.interpolation == 'bicubic'


def test_forward_at_cfg_size_and_head_widths():
    """timm's default-cfg check for non-standard (token-output) models, on ScalableViT-S at 224."""
    model = timm.create_model('scalable_vit_small').eval()
    x = torch.randn(BATCH, *model.pretrained_cfg['input_size'])
    with torch.no_grad():
        features = model.forward_features(x)
        pre_logits = model.forward_head(features, pre_logits=True)
        logits = model(x)
        assert features.shape == (BATCH, 49, model.num_features)
        assert pre_logits.shape == (BATCH, model.head_hidden_size)
        assert logits.shape == (BATCH, 1000)

        model.reset_classifier(0)
        assert model.num_classes == 0
        pooled = model(x)
        assert pooled.shape == pre_logits.shape
        torch.testing.assert_close(pooled, pre_logits)

        headless = timm.create_model('scalable_vit_small', num_classes=0).eval()
        assert headless(x).shape == (BATCH, headless.num_features)

    state_dict = model.state_dict()
    cfg = timm.create_model('scalable_vit_small').pretrained_cfg
    assert cfg['first_conv'] + '.weight' in state_dict
    assert cfg['classifier'] + '.weight' in timm.create_model('scalable_vit_small').state_dict()


@pytest.mark.filterwarnings('ignore:`torch.jit.script` is deprecated')
def test_torchscript():
    with set_scriptable(True):
        model = timm.create_model('scalable_vit_small').eval()
    scripted = torch.jit.script(model)
    x = torch.randn(BATCH, 3, 160, 160)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x))
    with pytest.raises(Exception, match='at least 29x29'):
        scripted(torch.randn(1, 3, 16, 16))


def test_reset_classifier(tiny):
    hidden = tiny.head[0].weight.clone()
    tiny.reset_classifier(10)
    assert tiny.num_classes == 10 and tiny.head[3].out_features == 10
    torch.testing.assert_close(tiny.head[0].weight, hidden)  # hidden layer kept
    tiny.reset_classifier(0)
    assert isinstance(tiny.head, torch.nn.Identity)
    tiny.reset_classifier(7, global_pool='')
    with torch.no_grad():
        per_token = tiny(torch.randn(1, 3, 64, 64))
    assert per_token.shape == (1, 4, 7)  # 64 px -> 2x2 tokens at stride 32
    assert tiny.get_classifier() is tiny.head


def test_no_weight_decay_is_peg():
    model = create_tiny()
    expected = {n for n, _ in model.named_parameters() if n.startswith('pos_block.')}
    assert model.no_weight_decay() == expected and len(expected) == 8
    groups = timm.optim.param_groups_weight_decay(model, 0.05, no_weight_decay_list=model.no_weight_decay())
    no_decay = {id(p) for g in groups if g['weight_decay'] == 0 for p in g['params']}
    for name, param in model.named_parameters():
        assert (id(param) in no_decay) == (param.ndim <= 1 or name in expected), name


def test_drop_rates_are_applied():
    model = create_tiny(drop_rate=0.1, pos_drop_rate=0.2, proj_drop_rate=0.3, attn_drop_rate=0.4,
                        drop_path_rate=0.35)
    rates = [blk.drop_path1.drop_prob if hasattr(blk.drop_path1, 'drop_prob') else 0.
             for stage in model.stages for blk in stage]
    assert rates == pytest.approx([0.35 * i / 7 for i in range(8)])
    assert model.head_drop.p == 0.1 and model.pos_drops[0].p == 0.2
    assert model.stages[0][0].attn.proj_drop.p == 0.3 and model.stages[0][0].mlp.drop1.p == 0.3
    assert model.stages[0][1].attn.attn_drop == 0.4
    model.train()
    x = torch.randn(1, 3, 64, 64)
    assert not torch.equal(model(x), model(x))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def test_explicit_attention_selectable():
    model = create_tiny()
    model.set_fused_attn(False)
    flags = [m.fused_attn for m in model.modules() if hasattr(m, 'fused_attn')]
    assert len(flags) == 8 and not any(flags)
    timm.layers.set_fused_attn(False)
    try:
        assert not any(m.fused_attn for m in create_tiny().modules() if hasattr(m, 'fused_attn'))
    finally:
        timm.layers.set_fused_attn(True)
