"""Layers shared by the model families."""
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_function
from torch.nn.utils.fusion import fuse_conv_bn_weights

__all__ = ['LARGE_ATTENTION_SCORES', 'SMALL_ATTENTION_TOKENS', 'attend', 'check_input_size', 'fuse_conv_bn',
           'key_padding_mask', 'sdpa_equal_widths', 'sdpa_is_faster']

# Below this many queries and keys, CPU attention is faster as two batched matmuls than through SDPA.
SMALL_ATTENTION_TOKENS = 64
# From this many scores per head on, SDPA on zero-padded widths beats the explicit ops (q/k and v widths differ).
LARGE_ATTENTION_SCORES = 2 ** 17


def sdpa_is_faster(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        short: int = SMALL_ATTENTION_TOKENS,
        large: int = LARGE_ATTENTION_SCORES,
) -> bool:
    """Whether `scaled_dot_product_attention` beats the explicit matmul-softmax-matmul for these inputs.

    On GPUs SDPA is always used (its fused kernels also avoid storing the attention matrix). On CPU (torch
    2.12, 2 threads): for IWSA's 49-token windows and GSDA's 64-token groups the flash kernel's per-block
    overhead makes it ~1.8x slower than the explicit ops; long sequences keep the flash kernel, which is
    faster and never materialises the attention matrix. When q/k and v widths differ (SSA with r_c != 1)
    SDPA runs on widths padded to equal (`sdpa_equal_widths`, exact); that pays from about `large` scores
    per head on (ScalableViT-S stage 1: 2x faster at 224, 4.5x at 800x1344),
    below it the explicit ops are as fast or faster (stages 2-4 at 224).
    """
    if q.device.type != 'cpu':
        return True
    if q.shape[-1] != v.shape[-1]:
        return q.shape[-2] * k.shape[-2] >= large
    return q.shape[-2] > short or k.shape[-2] > short


def sdpa_equal_widths(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        attn_mask: Optional[torch.Tensor],
        dropout_p: float,
        scale: float,
) -> torch.Tensor:
    """`scaled_dot_product_attention` for q/k and v of different widths (its fused kernels need one width):
    the narrower side is zero-padded, which is exact (zero q/k columns add nothing to q·kᵀ, zero value
    columns are sliced off the output); `scale` stays that of the real width."""
    dqk, dv = q.shape[-1], v.shape[-1]
    if dv < dqk:
        out = F.scaled_dot_product_attention(q, k, F.pad(v, (0, dqk - dv)), attn_mask=attn_mask,
                                             dropout_p=dropout_p, scale=scale)
        return out[..., :dv]
    if dqk < dv:
        q, k = F.pad(q, (0, dv - dqk)), F.pad(k, (0, dv - dqk))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, scale=scale)


@register_notrace_function  # reason: the kernel choice depends on shapes and device
def attend(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        scale: float,
        bias: Optional[torch.Tensor] = None,
        mask: Optional[torch.Tensor] = None,
        dropout_p: float = 0.,
        fused: bool = True,
) -> torch.Tensor:
    """softmax(q·kᵀ·scale + bias)·v over the last two dims, with keys hidden where `mask` is False: the one
    attention of every family.

    Args:
        q, k, v: (..., Nq, D), (..., Nk, D), (..., Nk, Dv); q/k and v widths may differ.
        bias: Additive scores (a relative position bias), broadcast to (..., Nq, Nk), or None.
        mask: Boolean, True where a key takes part (padding masks from `key_padding_mask`), or None.
        fused: The fast path: `scaled_dot_product_attention` where it is the faster kernel (`sdpa_is_faster`),
            the explicit ops otherwise. False always spells the operations out (export, debugging, counting
            FLOPs). All agree to float32 rounding.
    """
    if fused and sdpa_is_faster(q, k, v):
        attn_mask = bias
        if mask is not None:
            attn_mask = mask if bias is None else bias.masked_fill(~mask, float('-inf'))
        return sdpa_equal_widths(q, k, v, attn_mask, dropout_p, scale)
    # the scale goes into q before the product, as in SDPA: unscaled float16 scores overflow (|q·k| > 65504, e.g.
    # |q|, |k| ~ 40 at d = 64) into inf - inf = NaN rows. The score tensor is biased and masked in place: at dense
    # sizes it is the largest temporary (e.g. 40 MB per Swin+VSA stage-1 layer), and every fresh copy of it costs a
    # pass and its page faults. Masked keys take -inf in any dtype; no row is all masked (`key_padding_mask`).
    attn = (q * scale) @ k.transpose(-2, -1)
    if bias is not None:
        attn = attn.add_(bias)
    if mask is not None:
        attn = attn.masked_fill_(~mask, float('-inf'))
    attn = attn.softmax(dim=-1)
    if dropout_p > 0.:
        attn = F.dropout(attn, p=dropout_p)
    return attn @ v


def key_padding_mask(height: int, width: int, group_rows: torch.Tensor, group_cols: torch.Tensor) -> torch.Tensor:
    """Boolean key mask of token groups cut from a map padded beyond `height` x `width`: True on real tokens.

    Args:
        group_rows: (nR, L) padded-map row of the L rows of each of the nR group rows (windows: a·s + i;
            dilated lattices: a·ph + p).
        group_cols: (nC, L') the same for columns.

    Returns:
        (nR·nC, L·L') in group order (row-major over groups, then over tokens). Maps padded by less than a window
        (a lattice's group count) keep each group's first token real, so no softmax row is all masked (NaN).
    """
    real = (group_rows < height)[:, None, :, None] & (group_cols < width)[None, :, None, :]  # nR, nC, L, L'
    return real.reshape(group_rows.shape[0] * group_cols.shape[0], -1)


@register_notrace_function  # reason: data-dependent check on the input size
def check_input_size(x: torch.Tensor, min_size: int, model_name: str, reason: str) -> torch.Tensor:
    """Raise a ValueError naming the smallest usable input (and why) when `x` (B, C, H, W) is too small."""
    H, W = x.shape[-2], x.shape[-1]
    if H < min_size or W < min_size:
        raise ValueError(
            f'{model_name} needs an input of at least {min_size}x{min_size} pixels ({reason}), got {H}x{W}. '
            f'Resize or pad the image.'
        )
    return x


@torch.no_grad()
def fuse_conv_bn(model: nn.Module) -> nn.Module:
    """Fold each BatchNorm that directly follows a convolution inside an `nn.Sequential` into that convolution,
    for inference (as timm's and MMDetection's deploy paths do); returns `model`, in eval mode.

    The BatchNorm's running statistics and affine map become the convolution's weight and bias (a bias is added
    where the convolution had none) and the BatchNorm is replaced by `nn.Identity`, so the convolution keeps its
    state-dict keys and the BatchNorm's disappear. Only `nn.Sequential` children are fused: there registration
    order is execution order. BatchNorms without running statistics are refused.
    """
    model.eval()
    for seq in model.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        for i in range(len(seq) - 1):
            conv, bn = seq[i], seq[i + 1]
            if not isinstance(conv, nn.modules.conv._ConvNd) or not isinstance(bn, nn.modules.batchnorm._BatchNorm):
                continue
            if bn.running_mean is None or bn.running_var is None:
                raise ValueError(f'{type(bn).__name__} after {conv} has no running statistics '
                                 '(track_running_stats=False): it normalises by batch statistics and cannot fold')
            conv.weight, conv.bias = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var,
                                                          bn.eps, bn.weight, bn.bias,
                                                          transpose=isinstance(conv, nn.modules.conv._ConvTransposeNd))
            seq[i + 1] = nn.Identity()
    return model
