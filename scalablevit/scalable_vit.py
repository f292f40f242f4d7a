"""ScalableViT

A PyTorch implementation of:
* `ScalableViT: Rethinking the Context-oriented Generalization of Vision Transformer`
  - https://arxiv.org/abs/2203.10790

Four stages of conv patch embedding followed by blocks that alternate two attentions:
* Interactive Window Self-Attention (IWSA): attention inside non-overlapping 7x7 windows, plus the
  Local Interactive Module (LIM), a depth-wise 3x3 conv over the value map that lets windows talk.
* Scalable Self-Attention (SSA): global attention whose keys/values are spatially reduced (factor `sr`)
  and whose query/key width is scaled by the channel ratio `r_c`.
A PEG (depth-wise 3x3 conv, residual) follows the first block of each stage.

Parameter names follow the authors' released checkpoints, so those load with `strict=True`.
Unlike the released code, any input size works: IWSA pads to window multiples and masks the padding.
"""
import math
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import (
    DropPath,
    Mlp,
    calculate_drop_path_rates,
    get_device_dtype,
    register_notrace_function,
    trunc_normal_,
    use_fused_attn,
)
from timm.models import build_model_with_cfg, checkpoint, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices

from .checkpoint import filter_for_model, read_pretrained_file
from .family import ModelFamily, register_family
from .layers import attend, check_input_size, key_padding_mask
from .vsa import WindowRegressor, varied_size_window_attention

__all__ = ['ARCH_SETTINGS', 'FAMILY', 'TRAIN_RECIPES', 'ScalableViT', 'checkpoint_filter_fn']

LN_EPS = 1e-6
SSA_NORM_EPS = 1e-5  # the LayerNorm inside SSA's reduction path uses PyTorch's default eps in the release


def window_padding_mask(height: int, width: int, window_size: int, device: torch.device) -> torch.Tensor:
    """Boolean key mask for padded windows: (num_windows, window_size²), True on real tokens; windows in
    `window_attention`'s order."""
    nh, nw = (height + window_size - 1) // window_size, (width + window_size - 1) // window_size
    offsets = torch.arange(window_size, device=device)
    rows = torch.arange(nh, device=device)[:, None] * window_size + offsets  # nh, M: row of window a's row i
    cols = torch.arange(nw, device=device)[:, None] * window_size + offsets  # nw, M
    return key_padding_mask(height, width, rows, cols)


@register_notrace_function  # reason: padding depends on the feature map size
def window_attention(
        qkv: torch.Tensor,
        num_heads: int,
        window_size: int,
        scale: float,
        dropout_p: float,
        fused: bool,
) -> torch.Tensor:
    """Multi-head attention inside non-overlapping windows.

    Args:
        qkv: (B, H, W, 3C) map holding q, k, v as three consecutive C-wide chunks.

    Returns:
        (B, H·W, C) tokens in row-major image order, heads concatenated.

    Maps whose sides are not multiples of the window are zero-padded at the bottom/right; padded keys are
    masked out of the softmax and padded queries cropped, so real tokens never see the padding.
    """
    B, H, W, C3 = qkv.shape
    C = C3 // 3
    M = window_size
    nh, nw = (H + M - 1) // M, (W + M - 1) // M  # windows per column / row
    pad_b, pad_r = nh * M - H, nw * M - W  # written so that symbolic shapes see Hp = nh * M
    # torch.export (ONNX) traces one graph for every size: pad and mask unconditionally there (a zero pad and
    # an all-true mask change nothing); eager runs skip both when the map fits the windows.
    exporting = False
    if not torch.jit.is_scripting():
        exporting = torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export()
    padded = exporting or pad_b > 0 or pad_r > 0
    attn_mask: Optional[torch.Tensor] = None
    if padded:
        qkv = F.pad(qkv, (0, 0, 0, pad_r, 0, pad_b))
        attn_mask = window_padding_mask(H, W, M, qkv.device)
    Hp, Wp = nh * M, nw * M
    # B, Hp, Wp, 3C -> B, nh, M, nw, M, 3, heads, d -> 3, B * nh * nw, heads, M * M, d
    qkv = qkv.view(B, nh, M, nw, M, 3, num_heads, C // num_heads)
    qkv = qkv.permute(5, 0, 1, 3, 6, 2, 4, 7).reshape(3, B * nh * nw, num_heads, M * M, C // num_heads)
    q, k, v = qkv.unbind(0)
    if attn_mask is not None:
        # nh * nw, M * M -> B * nh * nw, 1, 1, M * M (broadcast over heads and queries)
        attn_mask = attn_mask.unsqueeze(0).expand(B, -1, -1).reshape(B * nh * nw, 1, 1, M * M)
    x = attend(q, k, v, scale, mask=attn_mask, dropout_p=dropout_p, fused=fused)
    # B * nh * nw, heads, M * M, d -> B, nh, M, nw, M, heads, d -> B, Hp, Wp, C
    x = x.view(B, nh, nw, num_heads, M, M, C // num_heads).permute(0, 1, 4, 2, 5, 3, 6).reshape(B, Hp, Wp, C)
    if padded:
        x = x[:, :H, :W, :]
    return x.reshape(B, H * W, C)


def tokens_to_map(x: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """(B, H·W, C) tokens -> (B, C, H, W) map."""
    B, _, C = x.shape
    return x.transpose(1, 2).reshape(B, C, H, W)


class InteractiveWindowAttention(nn.Module):
    """IWSA: window self-attention plus the Local Interactive Module on the value map."""
    fused_attn: torch.jit.Final[bool]

    def __init__(
            self,
            dim: int,
            num_heads: int,
            window_size: int = 7,
            attn_drop: float = 0.,
            proj_drop: float = 0.,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        assert dim % num_heads == 0, f'dim {dim} must be divisible by num_heads {num_heads}'
        self.num_heads = num_heads
        self.window_size = window_size
        self.scale = (dim // num_heads) ** -0.5
        self.fused_attn = use_fused_attn()

        self.qkv = nn.Linear(dim, dim * 3, **dd)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim, **dd)
        self.proj_drop = nn.Dropout(proj_drop)
        self.lim_func = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim, **dd)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x)  # B, N, 3C
        # LIM runs on the unpadded value map, so it mixes neighbouring windows.
        local = self.lim_func(tokens_to_map(qkv[:, :, 2 * C:], H, W)).flatten(2).transpose(1, 2)
        x = window_attention(
            qkv.view(B, H, W, 3 * C),
            self.num_heads,
            self.window_size,
            self.scale,
            self.attn_drop if self.training else 0.,
            self.fused_attn,
        )
        x = self.proj(x + local)
        return self.proj_drop(x)


class InteractiveVaryingWindowAttention(InteractiveWindowAttention):
    """IWSA with VSA windows: this package's extension, with no released counterpart.

    As IWSA (same q/k/v projection, LIM on the value map, no relative position bias), but each head's key/value
    window is moved and stretched by VSA's regressor (`transform.*`, the only new parameters) and resampled
    bilinearly (`scalablevit.vsa`). The regressor starts at zero, so a new module (or one loaded from
    ScalableViT weights) computes IWSA exactly wherever no window padding is needed; where the map is padded,
    padded keys take part as zero vectors, as in VSA, instead of being masked as in IWSA.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int = 7, attn_drop: float = 0., proj_drop: float = 0.,
                 device=None, dtype=None):
        super().__init__(dim, num_heads, window_size, attn_drop, proj_drop, device=device, dtype=dtype)
        self.transform = WindowRegressor(dim, num_heads, window_size, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x)  # B, N, 3C
        local = self.lim_func(tokens_to_map(qkv[:, :, 2 * C:], H, W)).flatten(2).transpose(1, 2)
        x = varied_size_window_attention(
            qkv.view(B, H, W, 3 * C),
            self.transform(x.view(B, H, W, C)),
            self.num_heads,
            self.window_size,
            self.scale,
            None,
            self.attn_drop if self.training else 0.,
            self.fused_attn,
        )
        x = self.proj(x.reshape(B, N, C) + local)
        return self.proj_drop(x)


class ScalableSelfAttention(nn.Module):
    """SSA: global attention with spatially reduced keys/values and scaled query/key width.

    With reduction `sr` > 1 the key/value tokens come from a depth-wise `sr`x`sr` stride-`sr` conv and a 1x1
    conv to C' = int(C·r_c) channels; queries and keys are C' wide, values C wide. With `sr` = 1 it is
    plain global attention.
    """
    fused_attn: torch.jit.Final[bool]

    def __init__(
            self,
            dim: int,
            num_heads: int,
            sr_ratio: int,
            channel_ratio: float,
            attn_drop: float = 0.,
            proj_drop: float = 0.,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        assert dim % num_heads == 0, f'dim {dim} must be divisible by num_heads {num_heads}'
        scaled_dim = int(dim * channel_ratio)
        self.num_heads = num_heads
        self.scale = (dim // num_heads * channel_ratio) ** -0.5
        self.fused_attn = use_fused_attn()
        self.attn_drop = attn_drop

        if sr_ratio > 1:
            assert scaled_dim % num_heads == 0, \
                f'int(dim * channel_ratio) = {scaled_dim} must be divisible by num_heads {num_heads}'
            self.q = nn.Linear(dim, scaled_dim, **dd)
            self.reduction = nn.Sequential(
                nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio, groups=dim, **dd),
                nn.Conv2d(dim, scaled_dim, kernel_size=1, **dd),
            )
            self.norm_act = nn.Sequential(nn.LayerNorm(scaled_dim, eps=SSA_NORM_EPS, **dd), nn.GELU())
            self.k = nn.Linear(scaled_dim, scaled_dim, **dd)
            self.v = nn.Linear(scaled_dim, dim, **dd)
            self.kv = None
        else:
            self.q = nn.Linear(dim, dim, **dd)
            self.kv = nn.Linear(dim, dim * 2, **dd)
            self.reduction = None
            self.norm_act = None
            self.k = None
            self.v = None
        self.proj = nn.Linear(dim, dim, **dd)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        B, N, C = x.shape
        q = self.q(x)
        q = q.reshape(B, N, self.num_heads, q.shape[-1] // self.num_heads).transpose(1, 2)  # B, heads, N, C'/heads
        if self.reduction is not None:
            kv = self.reduction(tokens_to_map(x, H, W)).flatten(2).transpose(1, 2)  # B, N', C'
            kv = self.norm_act(kv)
            Nr = kv.shape[1]
            k = self.k(kv).reshape(B, Nr, self.num_heads, q.shape[-1]).transpose(1, 2)  # B, heads, N', C'/heads
            v = self.v(kv).reshape(B, Nr, self.num_heads, C // self.num_heads).transpose(1, 2)  # B, heads, N', d
        else:
            # B, N, 2C -> 2, B, heads, N, d
            kv = self.kv(x).reshape(B, N, 2, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
            k, v = kv.unbind(0)
        x = attend(q, k, v, self.scale, dropout_p=self.attn_drop if self.training else 0., fused=self.fused_attn)
        x = x.transpose(1, 2).reshape(B, N, C)
        x = self.proj(x)
        return self.proj_drop(x)


class Block(nn.Module):
    """Pre-norm transformer block; IWSA when `window_size` is given (with VSA windows when `varied_windows`),
    SSA otherwise."""

    def __init__(
            self,
            dim: int,
            num_heads: int,
            window_size: Optional[int],
            sr_ratio: int,
            channel_ratio: float,
            mlp_ratio: float = 4.,
            proj_drop: float = 0.,
            attn_drop: float = 0.,
            drop_path: float = 0.,
            varied_windows: bool = False,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS, **dd)
        if window_size is not None:
            window_cls = InteractiveVaryingWindowAttention if varied_windows else InteractiveWindowAttention
            self.attn = window_cls(dim, num_heads, window_size, attn_drop, proj_drop, **dd)
        else:
            self.attn = ScalableSelfAttention(dim, num_heads, sr_ratio, channel_ratio, attn_drop, proj_drop, **dd)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS, **dd)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=proj_drop, **dd)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x), H, W))
        x = x + self.drop_path2(self.mlp(self.norm2(x)))
        return x


class PositionalEncodingGenerator(nn.Module):
    """PEG: depth-wise 3x3 conv on the token map, added back (conditional positional encoding)."""

    def __init__(self, dim: int, device=None, dtype=None):
        super().__init__()
        self.proj = nn.Sequential(nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        feat = tokens_to_map(x, H, W)
        return (self.proj(feat) + feat).flatten(2).transpose(1, 2)


class ConvPatchEmbed(nn.Module):
    """Overlapping conv patch embedding: 7x7/4 for the stem, 3x3/2 between stages, then LayerNorm."""

    def __init__(self, in_chans: int, dim: int, stem: bool, device=None, dtype=None):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        if stem:
            self.proj = nn.Conv2d(in_chans, dim, kernel_size=7, stride=4, padding=3, **dd)
        else:
            self.proj = nn.Conv2d(in_chans, dim, kernel_size=3, stride=2, padding=1, **dd)
        self.norm = nn.LayerNorm(dim, eps=LN_EPS, **dd)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        H, W = x.shape[-2], x.shape[-1]
        x = self.norm(x.flatten(2).transpose(1, 2))  # B, H*W, C
        return x, H, W


def _conv_out(size: int, stem: bool) -> int:
    return (size - 1) // 4 + 1 if stem else (size - 1) // 2 + 1


def min_input_size(sr_ratios: Sequence[int]) -> int:
    """Smallest image side for which every stage's map is at least as large as its SSA reduction."""
    size = 1
    while True:
        side, fits = size, True
        for i, sr in enumerate(sr_ratios):
            side = _conv_out(side, stem=i == 0)
            fits = fits and side >= sr
        if fits:
            return size
        size += 1


class ScalableViT(nn.Module):
    """ScalableViT: four stages of conv patch embedding and alternating IWSA/SSA blocks.

    The classifier is the released two-layer MLP: Linear(C, 4096) -> LayerNorm -> GELU -> Linear(4096,
    classes). `num_classes=0` removes the whole MLP, so the pooled C-wide features are what `forward`,
    `forward_head(pre_logits=True)` and `reset_classifier(0)` give (`num_features == head_hidden_size`).
    """

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            embed_dims: Sequence[int] = (64, 128, 256, 512),
            num_heads: Sequence[int] = (2, 4, 8, 16),
            depths: Sequence[int] = (2, 2, 20, 2),
            channel_ratios: Sequence[float] = (1.25, 1.25, 1.25, 1.),
            sr_ratios: Sequence[int] = (8, 4, 2, 1),
            window_size: int = 7,
            window_attention: str = 'iwsa',
            mlp_ratio: float = 4.,
            classifier_hidden_dim: int = 4096,
            drop_rate: float = 0.,
            pos_drop_rate: float = 0.,
            proj_drop_rate: float = 0.,
            attn_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            device=None,
            dtype=None,
    ):
        """
        Args:
            in_chans: Number of input image channels.
            num_classes: Number of classes; 0 removes the classifier MLP.
            global_pool: 'avg' (token mean) or '' (per-token output).
            embed_dims: Channels of each stage.
            num_heads: Attention heads of each stage.
            depths: Blocks per stage; even blocks are IWSA, odd blocks SSA.
            channel_ratios: SSA channel scaling r_c of each stage.
            sr_ratios: SSA spatial reduction of each stage (the paper's r_n = 1 / sr²).
            window_size: IWSA window size.
            window_attention: 'iwsa' (the paper's fixed windows) or 'vsa' (this package's extension: IWSA with
                VSA's varied-size windows, `InteractiveVaryingWindowAttention`).
            mlp_ratio: MLP hidden width relative to the block width.
            classifier_hidden_dim: Width of the classifier MLP's hidden layer.
            drop_rate: Dropout on the pooled features before the classifier.
            pos_drop_rate: Dropout after each patch embedding.
            proj_drop_rate: Dropout after attention projections and in the MLPs.
            attn_drop_rate: Dropout on attention weights.
            drop_path_rate: Stochastic depth, rising linearly to this rate over all blocks.
            device, dtype: Where and in which dtype the parameters are made (e.g. `device='meta'`, then load).
        """
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        assert global_pool in ('', 'avg'), f"global_pool must be 'avg' or '', got {global_pool!r}"
        if window_attention not in ('iwsa', 'vsa'):
            raise ValueError(f"window_attention must be 'iwsa' or 'vsa', got {window_attention!r}")
        num_stages = len(depths)
        for name, values in (('embed_dims', embed_dims), ('num_heads', num_heads),
                             ('channel_ratios', channel_ratios), ('sr_ratios', sr_ratios)):
            assert len(values) == num_stages, f'{name} needs one value per stage ({num_stages}), got {values}'
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.depths = tuple(depths)
        self.embed_dims = tuple(embed_dims)
        self.num_features = self.head_hidden_size = embed_dims[-1]
        self.classifier_hidden_dim = classifier_hidden_dim
        self.min_input_size = min_input_size(sr_ratios)
        self.grad_checkpointing = False

        self.patch_embeds = nn.ModuleList()
        self.pos_drops = nn.ModuleList()
        self.pos_block = nn.ModuleList()  # registered before `stages`: the released state dict's order
        self.stages = nn.ModuleList()
        self.feature_info = []
        dpr = calculate_drop_path_rates(drop_path_rate, sum(depths))
        prev_dim = in_chans
        for i in range(num_stages):
            self.patch_embeds.append(ConvPatchEmbed(prev_dim, embed_dims[i], stem=i == 0, **dd))
            self.pos_drops.append(nn.Dropout(pos_drop_rate))
            self.stages.append(nn.ModuleList([
                Block(
                    dim=embed_dims[i],
                    num_heads=num_heads[i],
                    window_size=window_size if j % 2 == 0 else None,
                    sr_ratio=sr_ratios[i],
                    channel_ratio=channel_ratios[i],
                    mlp_ratio=mlp_ratio,
                    proj_drop=proj_drop_rate,
                    attn_drop=attn_drop_rate,
                    drop_path=dpr[sum(depths[:i]) + j],
                    varied_windows=window_attention == 'vsa',
                    **dd,
                )
                for j in range(depths[i])
            ]))
            self.pos_block.append(PositionalEncodingGenerator(embed_dims[i], **dd))
            self.feature_info.append(dict(num_chs=embed_dims[i], reduction=4 * 2 ** i, module=f'stages.{i}'))
            prev_dim = embed_dims[i]
        self.norm = nn.LayerNorm(self.num_features, eps=LN_EPS, **dd)

        self.head_drop = nn.Dropout(drop_rate)
        self.head = self._make_head(num_classes, **dd)
        self.apply(self._init_weights)
        for module in self.modules():
            if isinstance(module, WindowRegressor):
                module.reset_parameters()  # VSA windows start as the default ones

    def _make_head(self, num_classes: int, device=None, dtype=None) -> nn.Module:
        if num_classes <= 0:
            return nn.Identity()
        dd = {'device': device, 'dtype': dtype}
        return nn.Sequential(
            nn.Linear(self.num_features, self.classifier_hidden_dim, **dd),
            nn.LayerNorm(self.classifier_hidden_dim, eps=LN_EPS, **dd),
            nn.GELU(),
            nn.Linear(self.classifier_hidden_dim, num_classes, **dd),
        )

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0., math.sqrt(2. / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return {'pos_block.' + n for n, _ in self.pos_block.named_parameters()}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict:
        return dict(
            stem=r'^patch_embeds\.0',
            blocks=[
                (r'^(?:stages|patch_embeds|pos_block)\.(\d+)', None),
                (r'^norm', (99999,)),
            ] if coarse else [
                (r'^stages\.(\d+)\.(\d+)', None),
                (r'^(?:patch_embeds|pos_block)\.(\d+)', (0,)),
                (r'^norm', (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def set_fused_attn(self, enable: bool = True) -> None:
        """Switch every attention between `scaled_dot_product_attention` and the explicit-math path."""
        for module in self.modules():
            if isinstance(module, (InteractiveWindowAttention, ScalableSelfAttention)):
                module.fused_attn = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """Replace the final classifier layer; `num_classes=0` removes the classifier MLP entirely.

        An existing MLP keeps its (possibly pretrained) hidden layer; only its last Linear is replaced.
        """
        if global_pool is not None:
            assert global_pool in ('', 'avg'), f"global_pool must be 'avg' or '', got {global_pool!r}"
            self.global_pool = global_pool
        self.num_classes = num_classes
        dd = get_device_dtype(self)
        if num_classes > 0 and isinstance(self.head, nn.Sequential):
            new_layer = nn.Linear(self.classifier_hidden_dim, num_classes, **dd)
            self.head[3] = new_layer
        else:
            new_layer = self.head = self._make_head(num_classes, **dd)
        new_layer.apply(self._init_weights)
        self.head.train(self.training)

    def _forward_stages(
            self,
            x: torch.Tensor,
            take_indices: List[int],
            last_index: int,
            norm: bool,
    ) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """Run stages 0..last_index; collect NCHW maps of `take_indices` (the final one normed if `norm`).

        Returns the normed tokens (B, N, C) of the last stage, or the map of stage `last_index` if earlier.
        """
        x = check_input_size(x, self.min_input_size, 'ScalableViT', 'the spatial reduction of SSA needs every '
                             'stage to be at least as large as its reduction factor')
        final_stage = len(self.stages) - 1
        intermediates: List[torch.Tensor] = []
        for i, (embed, drop, blocks, peg) in enumerate(
                zip(self.patch_embeds, self.pos_drops, self.stages, self.pos_block)):
            if i <= last_index:  # TorchScript unrolls this loop: no `break`/`continue`
                x, H, W = embed(x)
                x = drop(x)
                for j, blk in enumerate(blocks):
                    if self.grad_checkpointing and not torch.jit.is_scripting():
                        x = checkpoint(blk, x, H, W)
                    else:
                        x = blk(x, H, W)
                    if j == 0:
                        x = peg(x, H, W)
                if i == final_stage:
                    x_normed = self.norm(x)
                    if i in take_indices:
                        intermediates.append(tokens_to_map(x_normed if norm else x, H, W))
                    x = x_normed
                else:
                    x = tokens_to_map(x, H, W)
                    if i in take_indices:
                        intermediates.append(x)
        return x, intermediates

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Forward that also returns per-stage feature maps.

        Args:
            x: Input images (B, C, H, W).
            indices: Take the last n stages if int, all if None, or the listed stage indices.
            norm: Apply the final norm to the last stage's map (only that stage has a norm).
            stop_early: Stop after the last requested stage.
            output_fmt: 'NCHW' or 'NHWC'.
            intermediates_only: Return only the list of maps.
        """
        assert output_fmt in ('NCHW', 'NHWC'), 'Output format must be NCHW or NHWC.'
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        last_index = max_index if stop_early else len(self.stages) - 1
        x, intermediates = self._forward_stages(x, take_indices, last_index, norm)
        if output_fmt == 'NHWC':
            intermediates = [feat.permute(0, 2, 3, 1) for feat in intermediates]
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the stages (and norm/head) not needed for the requested intermediates."""
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        prune_end = max_index < len(self.stages) - 1
        self.patch_embeds = self.patch_embeds[:max_index + 1]
        self.pos_drops = self.pos_drops[:max_index + 1]
        self.stages = self.stages[:max_index + 1]
        self.pos_block = self.pos_block[:max_index + 1]
        if prune_norm or prune_end:
            self.norm = nn.Identity()
        if prune_end:
            self.num_features = self.head_hidden_size = self.embed_dims[max_index]
        if prune_head or prune_end:
            self.reset_classifier(0, '')
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Normed last-stage tokens (B, N, C)."""
        x, _ = self._forward_stages(x, [], len(self.stages) - 1, False)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == 'avg':
            x = x.mean(dim=1)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        return self.forward_head(x)


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: ScalableViT) -> Dict[str, torch.Tensor]:
    """Accept the released format ({'model': ...}), plain/EMA state dicts and DDP/compile prefixes (the
    package's checkpoint policy, `scalablevit.checkpoint`).

    Raises a ValueError naming the mismatched tensors when the checkpoint is for another architecture
    (classifier tensors excepted: timm drops those itself when `num_classes` differs).
    """
    state_dict = filter_for_model(state_dict, model, model_name='ScalableViT')
    # ScalableViT weights into the VSA-window variant: the regressors start at zero (default windows)
    for key, value in model.state_dict().items():
        if '.attn.transform.' in key and key not in state_dict:
            state_dict[key] = torch.zeros_like(value)
    return state_dict


def _create_scalable_vit(variant: str, pretrained: bool = False, **kwargs) -> ScalableViT:
    out_indices = kwargs.pop('out_indices', 4)
    kwargs = read_pretrained_file(pretrained, kwargs)  # a local file by the checkpoint policy
    return build_model_with_cfg(
        ScalableViT,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls='getter'),
        **kwargs,
    )


def _cfg(**kwargs) -> Dict:
    return {
        'url': '',
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': None,
        'crop_pct': 0.875, 'interpolation': 'bicubic', 'fixed_input_size': False,
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'patch_embeds.0.proj', 'classifier': 'head.3',
        'paper_ids': 'arXiv:2203.10790', 'paper_name': 'ScalableViT', 'license': 'apache-2.0',
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    'scalable_vit_small.in1k': _cfg(),
    'scalable_vit_base.in1k': _cfg(),
    'scalable_vit_large.in1k': _cfg(),
    'scalable_vit_test.untrained': _cfg(input_size=(3, 64, 64), test_input_size=(3, 64, 64)),
    'scalable_vit_small_vsa.untrained': _cfg(),
    'scalable_vit_base_vsa.untrained': _cfg(),
    'scalable_vit_large_vsa.untrained': _cfg(),
})


# The paper's recipe (Appendix C): DeiT's, with stochastic depth 0.2 for S and 0.5 for B and L; the VSA-window
# extensions train as their ScalableViT counterparts.
TRAIN_RECIPES = {
    'scalable_vit_small': dict(drop_path=0.2),
    'scalable_vit_base': dict(drop_path=0.5),
    'scalable_vit_large': dict(drop_path=0.5),
    'scalable_vit_small_vsa': dict(drop_path=0.2),
    'scalable_vit_base_vsa': dict(drop_path=0.5),
    'scalable_vit_large_vsa': dict(drop_path=0.5),
}


# The released variants; `ScalableViT`'s defaults are the small model.
ARCH_SETTINGS = {
    'small': dict(embed_dims=(64, 128, 256, 512), num_heads=(2, 4, 8, 16), depths=(2, 2, 20, 2),
                  channel_ratios=(1.25, 1.25, 1.25, 1.)),
    'base': dict(embed_dims=(96, 192, 384, 768), num_heads=(3, 6, 12, 24), depths=(2, 2, 14, 6),
                 channel_ratios=(2., 1.25, 1.25, 1.)),
    'large': dict(embed_dims=(128, 256, 512, 1024), num_heads=(4, 8, 16, 32), depths=(2, 6, 12, 4),
                  channel_ratios=(0.25, 0.5, 1., 1.)),
    # Not in the paper: every structural feature of the released models (SSA with sr > 1 and sr = 1, r_c above
    # and below 1, IWSA + LIM, PEG, the MLP classifier) at a width that runs in milliseconds, for tests,
    # demos and CPU smoke configs (like timm's `test_vit`).
    'test': dict(embed_dims=(16, 32, 64, 128), num_heads=(1, 2, 4, 8), depths=(2, 2, 2, 2),
                 channel_ratios=(2., 1.25, 0.5, 1.), classifier_hidden_dim=64),
}


@register_model
def scalable_vit_small(pretrained: bool = False, **kwargs) -> ScalableViT:
    return _create_scalable_vit('scalable_vit_small', pretrained, **dict(ARCH_SETTINGS['small'], **kwargs))


@register_model
def scalable_vit_base(pretrained: bool = False, **kwargs) -> ScalableViT:
    return _create_scalable_vit('scalable_vit_base', pretrained, **dict(ARCH_SETTINGS['base'], **kwargs))


@register_model
def scalable_vit_large(pretrained: bool = False, **kwargs) -> ScalableViT:
    return _create_scalable_vit('scalable_vit_large', pretrained, **dict(ARCH_SETTINGS['large'], **kwargs))


@register_model
def scalable_vit_test(pretrained: bool = False, **kwargs) -> ScalableViT:
    """A tiny ScalableViT (0.64 M parameters) for tests and CPU demos; not a paper model."""
    return _create_scalable_vit('scalable_vit_test', pretrained, **dict(ARCH_SETTINGS['test'], **kwargs))


# This package's extension: IWSA with VSA windows (`window_attention='vsa'`); no released weights or results.
@register_model
def scalable_vit_small_vsa(pretrained: bool = False, **kwargs) -> ScalableViT:
    args = dict(ARCH_SETTINGS['small'], window_attention='vsa')
    return _create_scalable_vit('scalable_vit_small_vsa', pretrained, **dict(args, **kwargs))


@register_model
def scalable_vit_base_vsa(pretrained: bool = False, **kwargs) -> ScalableViT:
    args = dict(ARCH_SETTINGS['base'], window_attention='vsa')
    return _create_scalable_vit('scalable_vit_base_vsa', pretrained, **dict(args, **kwargs))


@register_model
def scalable_vit_large_vsa(pretrained: bool = False, **kwargs) -> ScalableViT:
    args = dict(ARCH_SETTINGS['large'], window_attention='vsa')
    return _create_scalable_vit('scalable_vit_large_vsa', pretrained, **dict(args, **kwargs))


FAMILY = register_family(ModelFamily(
    name='scalable_vit',
    title='ScalableViT',
    model_cls=ScalableViT,
    arch_settings=ARCH_SETTINGS,
    model_names={variant: f'scalable_vit_{variant}' for variant in ARCH_SETTINGS},
    checkpoint_filter=checkpoint_filter_fn,
    backbone_name='ScalableViTBackbone',
    default_arch='small',
    norm_eps=LN_EPS,
    train_recipes=TRAIN_RECIPES,
    description='ScalableViT (ECCV 2022): alternating IWSA and SSA',
))
