"""Any input size: IWSA pads and masks, the padding never reaches real tokens, too-small inputs fail clearly."""
import pytest
import torch

from helpers import ATTENTION_PATHS, fill_padding_with_noise, select_attention_path
from scalablevit.scalable_vit import min_input_size, sdpa_equal_widths, sdpa_is_faster, window_attention


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


def test_attention_paths_agree_on_padded_input(monkeypatch, tiny):
    x = torch.randn(2, 3, 97, 131)
    outputs = {}
    for path in ATTENTION_PATHS:
        with monkeypatch.context() as patch, torch.no_grad():
            tiny.set_fused_attn(select_attention_path(patch, path))
            outputs[path] = tiny(x)
    torch.testing.assert_close(outputs['fast'], outputs['explicit'], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outputs['sdpa'], outputs['explicit'], rtol=1e-5, atol=1e-5)


def test_cpu_kernel_choice():
    """On CPU, short windows and short SSA with r_c != 1 take the explicit ops; long attention SDPA (on
    zero-padded widths where q/k and v widths differ)."""
    def shapes(queries, keys, qk_dim, v_dim):
        return torch.empty(8, 2, queries, qk_dim), torch.empty(8, 2, keys, qk_dim), torch.empty(8, 2, keys, v_dim)

    assert not sdpa_is_faster(*shapes(49, 49, 32, 32))  # IWSA window
    assert not sdpa_is_faster(*shapes(784, 49, 40, 32))  # SSA stage 2 at 224, r_c = 1.25
    assert sdpa_is_faster(*shapes(3136, 49, 40, 32))  # SSA stage 1 at 224, r_c = 1.25
    assert sdpa_is_faster(*shapes(67200, 1050, 40, 32))  # SSA stage 1 at 800x1344
    assert sdpa_is_faster(*shapes(3136, 49, 32, 32))  # SSA, r_c = 1, long query sequence
    assert sdpa_is_faster(*shapes(196, 196, 32, 32))
    meta = [t.to('meta') for t in shapes(49, 49, 32, 32)]
    assert sdpa_is_faster(*meta)  # any accelerator keeps SDPA


@pytest.mark.parametrize('qk_dim, v_dim', [(40, 32), (8, 32), (32, 32)])
def test_sdpa_on_padded_widths_is_exact(qk_dim, v_dim):
    """SSA's q/k and v widths differ (r_c != 1): SDPA on zero-padded widths gives the explicit result and
    the same gradients."""
    torch.manual_seed(0)
    q, k = torch.randn(2, 2, 300, qk_dim, requires_grad=True), torch.randn(2, 2, 70, qk_dim, requires_grad=True)
    v = torch.randn(2, 2, 70, v_dim, requires_grad=True)
    scale = qk_dim ** -0.5
    explicit = ((q @ k.transpose(-2, -1)) * scale).softmax(-1) @ v
    grads = torch.autograd.grad(explicit.square().sum(), (q, k, v))
    fused = sdpa_equal_widths(q, k, v, None, 0., scale)
    torch.testing.assert_close(fused, explicit, rtol=1e-5, atol=1e-5)
    for a, b in zip(torch.autograd.grad(fused.square().sum(), (q, k, v)), grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


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
