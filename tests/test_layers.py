"""The shared attention (`scalablevit.layers.attend`: one entry point, one SDPA dispatch, one explicit path) and
padding-mask builder of every family; the families' goldens run on every path too (ATTENTION_PATHS)."""
import pytest
import torch

from scalablevit import layers
from scalablevit.layers import attend, key_padding_mask, sdpa_equal_widths, sdpa_is_faster

from helpers import ATTENTION_PATHS, select_attention_path


def reference_attention(q, k, v, scale, bias=None, mask=None):
    scores = (q @ k.transpose(-2, -1)) * scale
    if bias is not None:
        scores = scores + bias
    if mask is not None:
        scores = scores.masked_fill(~mask, float('-inf'))
    return scores.softmax(-1) @ v


@pytest.mark.parametrize('path', ATTENTION_PATHS)
@pytest.mark.parametrize('with_bias, with_mask', [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize('qk_dim, v_dim', [(16, 16), (20, 16)])
def test_attend_with_bias_and_mask_on_every_path(monkeypatch, path, with_bias, with_mask, qk_dim, v_dim):
    """Additive bias and boolean key mask, alone or together, with equal or different q/k and v widths."""
    fused = select_attention_path(monkeypatch, path)
    torch.manual_seed(0)
    q, k = torch.randn(6, 2, 49, qk_dim, dtype=torch.float64), torch.randn(6, 2, 49, qk_dim, dtype=torch.float64)
    v = torch.randn(6, 2, 49, v_dim, dtype=torch.float64)
    bias = torch.randn(1, 2, 49, 49, dtype=torch.float64) if with_bias else None
    mask = (torch.rand(6, 1, 1, 49) > 0.3) | (torch.arange(49) == 0) if with_mask else None
    out = attend(q, k, v, qk_dim ** -0.5, bias=bias, mask=mask, fused=fused)
    torch.testing.assert_close(out, reference_attention(q, k, v, qk_dim ** -0.5, bias, mask), rtol=1e-10, atol=1e-10)


def test_select_attention_path_patches_the_one_dispatch(monkeypatch):
    q = torch.randn(1, 1, 4, 8)
    assert not layers.sdpa_is_faster(q, q, q)
    select_attention_path(monkeypatch, 'sdpa')
    assert layers.sdpa_is_faster(q, q, q)


def test_key_padding_mask_for_windows_and_lattices():
    """Windows (rows a·s + i) and dilated lattices (rows a·ph + p) of a 5x3 map padded to 6x4."""
    windows = key_padding_mask(5, 3, torch.arange(3)[:, None] * 2 + torch.arange(2), torch.arange(2)[:, None] * 2
                               + torch.arange(2))
    assert windows.shape == (6, 4)
    assert windows.tolist() == [[True] * 4, [True, False, True, False], [True] * 4, [True, False, True, False],
                                [True, True, False, False], [True, False, False, False]]
    ph = 3  # two lattice cells a, three groups p per column: row a·ph + p
    lattice = key_padding_mask(5, 3, torch.arange(2)[None, :] * ph + torch.arange(ph)[:, None],
                               torch.arange(2)[None, :] * 2 + torch.arange(2)[:, None])
    real = torch.zeros(6, 4, dtype=torch.bool)
    real[:5, :3] = True
    expected = [[bool(real[a * ph + p, b * 2 + q]) for a in range(2) for b in range(2)]
                for p in range(ph) for q in range(2)]
    assert lattice.tolist() == expected


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
