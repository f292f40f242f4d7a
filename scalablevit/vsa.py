"""Varied-Size Window Attention (VSA)

A PyTorch implementation of the attention of:
* `VSA: Learning Varied-Size Window Attention in Vision Transformers` (ECCV 2022)
  - https://arxiv.org/abs/2204.08446

Queries stay on the regular grid of non-overlapping s x s windows. For every window and head, a regressor
reads the window's mean (average pool, LeakyReLU, 1x1 conv) and predicts an offset and a scale; keys and
values are then resampled bilinearly on the moved and stretched s x s grid, and each query window attends
to its resampled key/value window with Swin's relative position bias.

The function is that of the released Swin+VSA module (QFormer's `VSAAttention`): projection before zero
padding at the bottom/right, offsets divided by the padded window counts, scale = 1 + prediction,
`align_corners=True`, zero padding outside the map, no mask (padded and out-of-map keys are zero vectors
that still take part). Parameter names are the release's, so its checkpoints load with `strict=True`. The
regressor starts at zero: a freshly built module is plain (non-shifted) window attention.
"""
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_function, trunc_normal_, use_fused_attn

from .layers import attend

__all__ = ['VSAttention', 'gather_relative_position_bias', 'pad_to_windows', 'padded_projection',
           'relative_position_index', 'varied_size_window_attention', 'WindowRegressor', 'window_sampling_grid']


def relative_position_index(window_size: int) -> torch.Tensor:
    """Swin's (s², s²) index into the ((2s-1)², heads) bias table: for tokens p = (r_p, c_p), q = (r_q, c_q)
    of an s x s window in row-major order, (r_p - r_q + s - 1)·(2s - 1) + (c_p - c_q + s - 1)."""
    coords = torch.stack(torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing='ij'))
    coords = coords.flatten(1)  # 2, s²
    relative = coords[:, :, None] - coords[:, None, :] + window_size - 1  # 2, s², s²
    return relative[0] * (2 * window_size - 1) + relative[1]


def gather_relative_position_bias(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(heads, s², s²) additive attention bias from a ((2s-1)², heads) table and the (s², s²) index."""
    s2 = index.shape[0]
    return table[index.view(-1)].view(s2, s2, -1).permute(2, 0, 1)


@register_notrace_function  # reason: pads only maps that are not window multiples
def pad_to_windows(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """(B, H, W, C) map -> (B, C, nH·s, nW·s), zero-padded at the bottom/right to window multiples (the
    regressors' input); a view when the sides already are multiples."""
    H, W = x.shape[1], x.shape[2]
    s = window_size
    if H % s == 0 and W % s == 0:
        return x.permute(0, 3, 1, 2)
    return F.pad(x.permute(0, 3, 1, 2), (0, (s - W % s) % s, 0, (s - H % s) % s))


@register_notrace_function  # reason: zeroes only the tokens of a padding
def padded_projection(
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: Optional[torch.Tensor],
        window_size: int,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """(B, H, W, C) map -> (the map zero-padded at the bottom/right to window multiples (B, Hp, Wp, C), its
    q/k/v projection (B, Hp, Wp, 3C) with the padded tokens zero).

    The function of projecting first and padding the projection (the release's order: padded keys are zero
    vectors, not the projection's bias), at the cost of padding the C-wide input instead of the 3C-wide
    projection: the padded tokens are zeroed in place after the projection. The padded map also feeds the
    window regressor, which pads its input anyway.
    """
    H, W = x.shape[1], x.shape[2]
    padded = pad_to_windows(x, window_size).permute(0, 2, 3, 1)  # B, Hp, Wp, C
    qkv = F.linear(padded, weight, bias)
    if bias is not None and (padded.shape[1] != H or padded.shape[2] != W):
        qkv[:, H:].zero_()
        qkv[:, :, W:].zero_()
    return padded, qkv


def window_sampling_grid(regression: torch.Tensor, window_size: int) -> torch.Tensor:
    """Sampling points of every varied-size window, normalised for `grid_sample(align_corners=True)`.

    Args:
        regression: (B, heads, 4, nH, nW) raw regressor output per window: x-offset, y-offset, x-scale,
            y-scale. Offsets are in units of one window count (divided by nW / nH), scales add to 1.

    Returns:
        (B·heads, nH·s, nW·s, 2) grid of (x, y); with a zero regression the points are exactly the pixel
        centres of the default windows of the padded map.
    """
    B, heads, _, nH, nW = regression.shape
    s = window_size
    Hp, Wp = nH * s, nW * s
    device, dtype = regression.device, regression.dtype
    offset_x = regression[:, :, 0] / nW  # B, heads, nH, nW
    offset_y = regression[:, :, 1] / nH
    scale_x = 1 + regression[:, :, 2]
    scale_y = 1 + regression[:, :, 3]
    # window centres and in-window spreads in normalised coordinates (-1 / +1: first / last pixel centre)
    centre_x = -1 + (2 * s * torch.arange(nW, device=device, dtype=dtype) + s - 1) / (Wp - 1)  # nW
    centre_y = -1 + (2 * s * torch.arange(nH, device=device, dtype=dtype) + s - 1) / (Hp - 1)  # nH
    spread = torch.arange(s, device=device, dtype=dtype) - (s - 1) / 2  # s
    spread_x, spread_y = spread * (2 / (Wp - 1)), spread * (2 / (Hp - 1))
    # B, heads, nH, nW -> B, heads, nH, 1, nW, 1 (window row a, in-window row i, window column b, column j)
    x = (centre_x[None, None, None, None, :, None] + offset_x[:, :, :, None, :, None]
         + scale_x[:, :, :, None, :, None] * spread_x[None, None, None, None, None, :])
    y = (centre_y[None, None, :, None, None, None] + offset_y[:, :, :, None, :, None]
         + scale_y[:, :, :, None, :, None] * spread_y[None, None, None, :, None, None])
    x = x.expand(B, heads, nH, s, nW, s)
    y = y.expand(B, heads, nH, s, nW, s)
    # B, heads, nH, s, nW, s, 2 -> B·heads, Hp, Wp, 2
    return torch.stack((x, y), dim=-1).reshape(B * heads, Hp, Wp, 2)


@register_notrace_function  # reason: a data-dependent check
def check_finite_regression(regression: torch.Tensor) -> torch.Tensor:
    """Stop with a clear message when the window regressor predicts NaN/inf (then every window would read
    undefined points); on GPUs the check does not synchronise."""
    if not torch.jit.is_scripting() and not torch.compiler.is_compiling() and not torch.jit.is_tracing():
        torch._assert_async(torch.isfinite(regression).all(),
                            'VSA window regressor produced non-finite offsets/scales: the input or the '
                            'weights hold NaN/inf (check the data, lower the learning rate or clip gradients)')
    return regression


class WindowRegressor(nn.Sequential):
    """Window mean -> LeakyReLU -> 1x1 conv to (x-offset, y-offset, x-scale, y-scale) per head and window,
    zero-initialised (every window starts as the default one). Keys `0`, `1`, `2` as in the release
    (`transform.2.*`)."""

    def __init__(self, dim: int, num_heads: int, window_size: int, device=None, dtype=None):
        super().__init__(
            nn.AvgPool2d(kernel_size=window_size, stride=window_size),
            nn.LeakyReLU(),
            nn.Conv2d(dim, num_heads * 4, kernel_size=1, device=device, dtype=dtype),
        )
        self.num_heads = num_heads
        self.window_size = window_size
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Zero the last conv: every window is the default one (plain window attention)."""
        nn.init.zeros_(self[2].weight)
        nn.init.zeros_(self[2].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) map -> (B, heads, 4, nH, nW), the map zero-padded to window multiples first."""
        x = pad_to_windows(x, self.window_size)
        for layer in self:
            x = layer(x)
        B, _, nH, nW = x.shape
        return check_finite_regression(x.view(B, self.num_heads, 4, nH, nW))


@register_notrace_function  # reason: pads only maps that are not window multiples
def varied_size_window_attention(
        qkv: torch.Tensor,
        regression: torch.Tensor,
        num_heads: int,
        window_size: int,
        scale: float,
        bias: Optional[torch.Tensor],
        dropout_p: float,
        fused: bool,
) -> torch.Tensor:
    """The VSA function on maps: queries in default windows, keys/values resampled in regressed windows.

    Args:
        qkv: (B, H, W, 3C) projections, q, k, v as consecutive C-wide chunks (head h: channels h·d..h·d+d-1).
        regression: (B, heads, 4, nH, nW) raw window regression (`WindowRegressor`).
        bias: (heads, s², s²) additive attention bias, or None.

    Returns:
        (B, H, W, C) before the output projection. Maps are zero-padded at the bottom/right to window
        multiples after the projection; padded and out-of-map keys are zero vectors that take part (no mask).
    """
    B, H, W, C3 = qkv.shape
    C = C3 // 3
    s, heads, d = window_size, num_heads, C // num_heads
    nH, nW = (H + s - 1) // s, (W + s - 1) // s
    Hp, Wp = nH * s, nW * s
    if Hp != H or Wp != W:
        qkv = F.pad(qkv, (0, 0, 0, Wp - W, 0, Hp - H))
    # the sampling points and the bilinear interpolation stay float32 under autocast and in half-precision models:
    # computed in bfloat16 they are off by up to 0.2 pixel at 224 and 3.2 pixels on an 800x1344 image's stage-1
    # map (window indices past 256 are not even representable); from a bfloat16 regression, 0.014 pixel
    sample_dtype = torch.promote_types(qkv.dtype, torch.float32)  # float32 (float64 in float64 models)
    grid = window_sampling_grid(regression.to(sample_dtype), s)
    # the map stays channels-last: q is cut into windows directly, k and v are resampled together (one
    # grid_sample over a channels-last view, which the CPU kernel reads faster than a channels-first copy)
    qkv = qkv.reshape(B, Hp, Wp, 3, heads, d)
    # B, Hp, Wp, heads, d -> B, nH, s, nW, s, heads, d -> B·nH·nW, heads, s², d
    q = qkv[:, :, :, 0].reshape(B, nH, s, nW, s, heads, d).permute(0, 1, 3, 5, 2, 4, 6).reshape(-1, heads, s * s, d)
    # B, Hp, Wp, 2, heads, d -> B·heads, Hp, Wp, 2d -> (view) B·heads, 2d, Hp, Wp
    kv = qkv[:, :, :, 1:].permute(0, 4, 1, 2, 3, 5).reshape(B * heads, Hp, Wp, 2 * d).permute(0, 3, 1, 2)
    kv = F.grid_sample(kv.to(sample_dtype), grid, mode='bilinear', padding_mode='zeros', align_corners=True)
    kv = kv.to(qkv.dtype)
    # B·heads, 2d, Hp, Wp -> B, heads, 2, d, nH, s, nW, s -> 2, B·nH·nW, heads, s², d
    kv = kv.reshape(B, heads, 2, d, nH, s, nW, s).permute(2, 0, 4, 6, 1, 5, 7, 3).reshape(2, -1, heads, s * s, d)
    bias = bias.unsqueeze(0).to(q.dtype) if bias is not None else None  # 1, heads, s², s²
    out = attend(q, kv[0], kv[1], scale, bias=bias, dropout_p=dropout_p, fused=fused)
    # B·nH·nW, heads, s², d -> B, nH, s, nW, s, heads·d -> crop to B, H, W, C
    out = out.view(B, nH, nW, heads, s, s, d).permute(0, 1, 4, 2, 5, 3, 6).reshape(B, Hp, Wp, C)
    return out[:, :H, :W, :]


class VSAttention(nn.Module):
    """Varied-size window attention on a (B, H, W, C) map; any H, W (padded to window multiples).

    Args:
        dim: Channels (in and out).
        num_heads: Attention heads; the regressor predicts one window per head.
        window_size: s, the side of the default (query) window.
        qkv_bias: Bias of the q/k/v projection.
        attn_drop: Dropout on attention weights (the release builds it but never applies it: 0 matches).
        proj_drop: Dropout after the output projection (same remark).
    """
    fused_attn: torch.jit.Final[bool]

    def __init__(
            self,
            dim: int,
            num_heads: int,
            window_size: int = 7,
            qkv_bias: bool = True,
            attn_drop: float = 0.,
            proj_drop: float = 0.,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        assert dim % num_heads == 0, f'dim ({dim}) must be divisible by num_heads ({num_heads})'
        self.dim = dim
        self.num_heads = num_heads
        self.window_size = window_size
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.fused_attn = use_fused_attn()
        # registered in the release's order: bias table, qkv, proj, regressor
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads, **dd))
        self.register_buffer('relative_position_index', relative_position_index(window_size).to(device),
                             persistent=True)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias, **dd)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim, **dd)
        self.proj_drop = nn.Dropout(proj_drop)
        self.transform = WindowRegressor(dim, num_heads, window_size, **dd)
        trunc_normal_(self.relative_position_bias_table, std=.02)

    def relative_position_bias(self) -> torch.Tensor:
        """(heads, s², s²) additive attention bias."""
        return gather_relative_position_bias(self.relative_position_bias_table, self.relative_position_index)

    def project(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(B, H, W, C) -> the padded q/k/v projection (B, Hp, Wp, 3C) and the window regression; the padded
        map is freed on return (it is not held through the attention)."""
        padded, qkv = padded_projection(x, self.qkv.weight, self.qkv.bias, self.window_size)
        return qkv, self.transform(padded)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[1], x.shape[2]
        qkv, regression = self.project(x)
        out = varied_size_window_attention(
            qkv, regression, self.num_heads, self.window_size, self.scale,
            self.relative_position_bias(), self.attn_drop if self.training else 0., self.fused_attn)
        # B, Hp, Wp, C: projected before the crop (a view), which spares a copy of the cropped map
        return self.proj_drop(self.proj(out))[:, :H, :W]

    def extra_repr(self) -> str:
        return f'dim={self.dim}, num_heads={self.num_heads}, window_size={self.window_size}'
