"""Layers shared by the model families."""
from typing import Optional

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_function

__all__ = ['SMALL_ATTENTION_TOKENS', 'attend_with_bias', 'sdpa_is_faster']

# Below this many queries and keys, CPU attention is faster as two batched matmuls than through SDPA.
SMALL_ATTENTION_TOKENS = 64


def sdpa_is_faster(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        short: int = SMALL_ATTENTION_TOKENS,
) -> bool:
    """Whether `scaled_dot_product_attention` beats the explicit matmul-softmax-matmul for these inputs.

    On GPUs SDPA is always used (its fused kernels also avoid storing the attention matrix). On CPU (torch
    2.12, measured at batch 8, 224x224) it is not faster when q/k and v widths differ, as in SSA with
    r_c != 1 — SDPA then falls back to a math kernel with extra safe-softmax passes, ~3x slower than the
    explicit ops — nor for IWSA's 49-token windows, where the flash kernel's per-block overhead makes it
    ~1.8x slower at inference and training. Long sequences keep the flash kernel: it is faster there and
    never materialises the attention matrix.
    """
    if q.device.type != 'cpu':
        return True
    if q.shape[-1] != v.shape[-1]:
        return False
    return q.shape[-2] > short or k.shape[-2] > short


@register_notrace_function  # reason: the kernel choice depends on shapes and device
def attend_with_bias(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        bias: Optional[torch.Tensor],
        scale: float,
        dropout_p: float,
        fused: bool,
) -> torch.Tensor:
    """softmax(q·kᵀ·scale + bias)·v over the last two dims: `scaled_dot_product_attention` with the bias as
    an additive mask where that is the faster kernel (`fused` and `sdpa_is_faster`), else explicit ops."""
    if fused and sdpa_is_faster(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p, scale=scale)
    attn = (q * scale) @ k.transpose(-2, -1)
    if bias is not None:
        attn = attn + bias
    attn = attn.softmax(dim=-1)
    if dropout_p > 0.:
        attn = F.dropout(attn, p=dropout_p)
    return attn @ v
