"""Layers shared by the model families."""
import torch

__all__ = ['SMALL_ATTENTION_TOKENS', 'sdpa_is_faster']

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
