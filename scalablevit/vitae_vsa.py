"""ViTAEv2* with Varied-Size Window Attention (ViTAEv2*+VSA)

A PyTorch implementation of the ViTAEv2*+VSA models of:
* `VSA: Learning Varied-Size Window Attention in Vision Transformers` (ECCV 2022)
  - https://arxiv.org/abs/2204.08446
on the ViTAEv2 of:
* `ViTAEv2: Vision Transformer Advanced by Exploring Inductive Bias for Image Recognition and Beyond` (IJCV 2023)
  - https://arxiv.org/abs/2202.10108

Four stages, each one reduction cell (RC) and a few normal cells (NC); every attention is VSA (window 7), the
"*" of ViTAEv2* meaning window attention in all stages. A reduction cell downsamples with a pyramid reduction
module (PRM: one strided dilated conv per dilation, concatenated) whose tokens go through a CPE, LayerNorm and
a VSA from the PRM width to the stage width, in parallel with a strided conv branch (PCM) of the input; then an
MLP. A normal cell adds VSA (on x + CPE(x)) and a parallel conv branch (PCM) to its input, then an MLP.

Parameter names are those of the released classification code (`layers.k.RC.*`, `layers.k.NC.i.*`; VSA with
1x1-conv projections and separate offset/scale regressors), so its checkpoints load `strict=True`. Kept from
the release because they define the function: the reduction cell's attention scale from the *input* width per
head, no residual around that attention, LayerNorm eps 1e-5 in reduction cells and 1e-6 in normal cells,
window offsets divided by the unpadded window counts ⌊side/7⌋ (at least 1 here), PyTorch's default init of the
regressors (windows start varied, not regular). Fixed, because the release cannot run otherwise: any input
size and aspect ratio on any device (the release asserts one square `img_size` and calls `.cuda()` in
constructors), and the stochastic-depth rates (the release slices its schedule from the wrong offset).

No weights were published for these models; the function matches the release to float32 rounding.
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
    register_notrace_module,
    trunc_normal_,
    use_fused_attn,
)
from timm.models import build_model_with_cfg, checkpoint, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices

from .checkpoint import filter_for_model, read_pretrained_file
from .family import ModelFamily, register_family
from .layers import check_input_size, fuse_conv_bn
from .vsa import (
    check_finite_regression,
    gather_relative_position_bias,
    padded_projection,
    relative_position_index,
    varied_size_window_attention,
)

__all__ = ['ARCH_SETTINGS', 'FAMILY', 'TRAIN_RECIPES', 'ConvVSAttention', 'ViTAEv2VSA', 'checkpoint_filter_fn',
           'vitae_to_vsattention_state_dict']

RC_LN_EPS = 1e-5  # reduction cells: PyTorch's default
NC_LN_EPS = 1e-6  # normal cells
MIN_INPUT_SIZE = 32  # one token at stride 32


@register_notrace_function  # reason: the divisors depend on the map size
def divide_offsets_by_unpadded_counts(regression: torch.Tensor, height: int, width: int,
                                      window_size: int) -> torch.Tensor:
    """The released ViTAE module divides offsets by ⌊W/s⌋, ⌊H/s⌋ of the unpadded map where the canonical VSA
    divides by the padded counts ⌈W/s⌉, ⌈H/s⌉: rescale the raw offsets so that `window_sampling_grid` gives
    the release's windows. Equal on maps that are window multiples (then untouched); sides < s divide by 1 here
    (by 0 in the release)."""
    s = window_size
    nH, nW = (height + s - 1) // s, (width + s - 1) // s
    released_nH, released_nW = max(height // s, 1), max(width // s, 1)
    if nH == released_nH and nW == released_nW:
        return regression
    factors = torch.tensor([nW / released_nW, nH / released_nH, 1., 1.], device=regression.device,
                           dtype=regression.dtype)
    return regression * factors.view(1, 1, 4, 1, 1)


class ConvVSAttention(nn.Module):
    """VSA in the layout of the released ViTAE module, on a (B, H, W, dim) map -> (B, H, W, out_dim).

    The function of `scalablevit.vsa.VSAttention` (padding after the projection, bilinear resampling of keys
    and values, Swin bias, no mask) with the release's parameters: q/k/v and output projections as 1x1 convs,
    offsets and scales from two regressors (`sampling_offsets`, `sampling_scales`; channel 2h: x, 2h+1: y of
    head h), an output width that may differ from the input's (reduction cells) with the attention scale taken
    from the input width per head, as released.
    """
    fused_attn: torch.jit.Final[bool]

    def __init__(
            self,
            dim: int,
            num_heads: int,
            out_dim: Optional[int] = None,
            window_size: int = 7,
            qkv_bias: bool = True,
            attn_drop: float = 0.,
            proj_drop: float = 0.,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        out_dim = out_dim or dim
        assert out_dim % num_heads == 0, f'out_dim ({out_dim}) must be divisible by num_heads ({num_heads})'
        self.dim = dim
        self.out_dim = out_dim
        self.num_heads = num_heads
        self.window_size = window_size
        self.scale = (dim // num_heads) ** -0.5  # the release's: input width per head
        self.fused_attn = use_fused_attn()
        # registered in the release's order: bias table, offsets, scales, qkv, proj
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads, **dd))
        self.register_buffer('relative_position_index', relative_position_index(window_size).to(device),
                             persistent=True)
        self.sampling_offsets = self._regressor(dim, num_heads, window_size, **dd)
        self.sampling_scales = self._regressor(dim, num_heads, window_size, **dd)
        self.qkv = nn.Conv2d(dim, out_dim * 3, kernel_size=1, bias=qkv_bias, **dd)
        self.attn_drop = attn_drop
        self.proj = nn.Conv2d(out_dim, out_dim, kernel_size=1, **dd)
        self.proj_drop = nn.Dropout(proj_drop)
        trunc_normal_(self.relative_position_bias_table, std=.02)

    @staticmethod
    def _regressor(dim: int, num_heads: int, window_size: int, device=None, dtype=None) -> nn.Sequential:
        """Window mean -> LeakyReLU -> 1x1 conv to (x, y) per head; PyTorch's default init, as released."""
        return nn.Sequential(
            nn.AvgPool2d(kernel_size=window_size, stride=window_size),
            nn.LeakyReLU(),
            nn.Conv2d(dim, num_heads * 2, kernel_size=1, device=device, dtype=dtype),
        )

    def relative_position_bias(self) -> torch.Tensor:
        """(heads, s², s²) additive attention bias."""
        return gather_relative_position_bias(self.relative_position_bias_table, self.relative_position_index)

    def regression(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        """(B, Hp, Wp, dim) map zero-padded to window multiples from H x W -> (B, heads, 4, nH, nW): x-offset,
        y-offset, x-scale, y-scale per window."""
        B = x.shape[0]
        # the two regressors share the window means (pool and LeakyReLU hold no parameters)
        pooled = self.sampling_offsets[1](self.sampling_offsets[0](x.permute(0, 3, 1, 2)))
        nH, nW = pooled.shape[-2], pooled.shape[-1]
        offsets = self.sampling_offsets[2](pooled).view(B, self.num_heads, 2, nH, nW)
        scales = self.sampling_scales[2](pooled).view(B, self.num_heads, 2, nH, nW)
        regression = check_finite_regression(torch.cat([offsets, scales], dim=2))
        return divide_offsets_by_unpadded_counts(regression, H, W, self.window_size)

    def project(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(B, H, W, dim) -> the padded q/k/v projection (B, Hp, Wp, 3·out_dim) and the window regression; the
        padded map is freed on return (it is not held through the attention)."""
        padded, qkv = padded_projection(x, self.qkv.weight.flatten(1), self.qkv.bias, self.window_size)
        return qkv, self.regression(padded, x.shape[1], x.shape[2])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[1], x.shape[2]
        qkv, regression = self.project(x)
        out = varied_size_window_attention(
            qkv, regression, self.num_heads, self.window_size, self.scale, self.relative_position_bias(),
            self.attn_drop if self.training else 0., self.fused_attn)
        # B, Hp, Wp, out_dim: projected before the crop (a view), which spares a copy of the cropped map
        return self.proj_drop(F.linear(out, self.proj.weight.flatten(1), self.proj.bias))[:, :H, :W]

    def extra_repr(self) -> str:
        return f'dim={self.dim}, out_dim={self.out_dim}, num_heads={self.num_heads}, window_size={self.window_size}'


def vitae_to_vsattention_state_dict(state_dict: Dict[str, torch.Tensor], num_heads: int) -> Dict[str, torch.Tensor]:
    """Keys of a ViTAE VSA module (`ConvVSAttention`, in = out width) as those of `scalablevit.vsa.VSAttention`
    (the Swin+VSA layout): 1x1-conv weights lose their trailing dims, and the offset (x, y) and scale (x, y)
    regressors interleave into one per head (channels 4h..4h+3). The two modules then compute the same function
    on maps whose sides are window multiples (elsewhere they divide the offsets by different window counts)."""
    converted = {}
    for key, value in state_dict.items():
        if key.startswith(('sampling_offsets.', 'sampling_scales.')):
            continue
        converted[key] = value.flatten(1) if key in ('qkv.weight', 'proj.weight') else value
    for suffix in ('weight', 'bias'):
        offsets = state_dict[f'sampling_offsets.2.{suffix}']
        scales = state_dict[f'sampling_scales.2.{suffix}']
        # (2·heads, ...) each -> (heads, 2, ...) -> (heads, 4, ...) -> (4·heads, ...)
        per_head = torch.cat([offsets.unflatten(0, (num_heads, 2)), scales.unflatten(0, (num_heads, 2))], dim=1)
        converted[f'transform.2.{suffix}'] = per_head.flatten(0, 1)
    return converted


def conv_branch(widths: Sequence[int], strides: Sequence[int], groups: int, device=None, dtype=None) -> nn.Sequential:
    """The parallel convolution module (PCM): three grouped 3x3 convs through `widths` (4 values), BatchNorm
    and SiLU after the first two (keys 0, 1, 3, 4, 6 as released)."""
    dd = {'device': device, 'dtype': dtype}
    layers: List[nn.Module] = []
    for i in range(3):
        layers.append(nn.Conv2d(widths[i], widths[i + 1], 3, stride=strides[i], padding=1, groups=groups, **dd))
        if i < 2:
            layers += [nn.BatchNorm2d(widths[i + 1], **dd), nn.SiLU(inplace=True)]
    return nn.Sequential(*layers)


@register_notrace_function  # reason: the layout depends on the device
def pcm_input(x: torch.Tensor, groups: int) -> torch.Tensor:
    """The PCM's (B, C, H, W) input in the layout its convolutions run fastest on. On CPU, oneDNN's grouped
    3x3 convolutions with few channels per group (stages 2-4) run up to 3x faster on contiguous NCHW than on
    the channels-last view of the token map (a (B, H, W, C) map permuted); ViTAEv2*-S+VSA at 800x1344 takes
    0.87x the inference time and 0.95x the training step with it. Dense ones (groups 1) keep the view."""
    if groups > 1 and x.device.type == 'cpu':
        return x.contiguous()
    return x


@register_notrace_module  # reason: the padding depends on the input size
class PyramidReduction(nn.Module):
    """The pyramid reduction module (PRM): one strided, dilated conv + GELU per dilation, concatenated
    dilation-major: (B, C, H, W) -> (B, ⌈H/r⌉, ⌈W/r⌉, len(dilations)·embed_dim).

    Padding per dilation d as released, ⌈((k-1)·d + 1 - r)/2⌉, one more on a side that is not a multiple of
    the stride r when that keeps the output at ⌈side/r⌉ (the release's rule for its one `img_size`, applied
    per side and per call so any size runs and every branch lands on the PCM's grid).
    """

    def __init__(self, in_chans: int, embed_dim: int, kernel_size: int, stride: int, dilations: Sequence[int],
                 device=None, dtype=None):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride
        self.dilations: List[int] = list(dilations)
        self.convs = nn.ModuleList([
            nn.Sequential(
                nn.Conv2d(in_chans, embed_dim, kernel_size, stride=stride, padding=self._base_padding(d), dilation=d,
                          device=device, dtype=dtype),
                nn.GELU(),
            )
            for d in dilations
        ])

    def _base_padding(self, dilation: int) -> int:
        return math.ceil(((self.kernel_size - 1) * dilation + 1 - self.stride) / 2)

    def padding(self, size: int, dilation: int) -> int:
        """Zero padding on both ends of a side of `size` pixels, for output ⌈size/stride⌉."""
        k, r = self.kernel_size, self.stride
        base = self._base_padding(dilation)
        target = (size + r - 1) // r
        if size % r != 0 and (size + 2 * base + 2 - (k - 1) * dilation - 1) // r + 1 == target:
            return base + 1
        return base

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[-2], x.shape[-1]
        outs: List[torch.Tensor] = []
        for i, branch in enumerate(self.convs):
            d = self.dilations[i]
            conv = branch[0]
            y = F.conv2d(x, conv.weight, conv.bias, self.stride, (self.padding(H, d), self.padding(W, d)), d)
            outs.append(branch[1](y))
        # B, n·C, h, w (dilation-major) -> B, h, w, n·C
        return torch.cat(outs, dim=1).permute(0, 2, 3, 1)


def _pcm_strides(downsample: int) -> Tuple[int, int, int]:
    """Strides of the PCM's three convs for a reduction cell's downsampling ratio (1, 2 or 4)."""
    strides = {1: (1, 1, 1), 2: (2, 1, 1), 4: (2, 2, 1)}
    assert downsample in strides, f'downsample ratio must be 1, 2 or 4, got {downsample}'
    return strides[downsample]


class ReductionCell(nn.Module):
    """(B, C, H, W) -> (B, H/r, W/r, token_dim): VSA(LN(PRM + CPE(PRM))) + PCM(x), then x + MLP(LN(x)).

    As released: no residual around the attention (its input is wider than its output), the attention scale
    from the PRM width per head, LayerNorm eps 1e-5, no stochastic depth. The PCM runs through
    in -> embed_dim -> embed_dim -> token_dim, or with the release's `wide_pcm` (its 48M model) through
    in -> 2·token_dim -> 2·token_dim -> token_dim.
    """

    def __init__(
            self,
            in_chans: int,
            embed_dim: int,
            token_dim: int,
            downsample: int,
            kernel_size: int,
            dilations: Sequence[int],
            num_heads: int,
            groups: int,
            mlp_ratio: float = 1.,
            window_size: int = 7,
            qkv_bias: bool = True,
            proj_drop: float = 0.,
            attn_drop: float = 0.,
            wide_pcm: bool = False,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        prm_dim = embed_dim * len(dilations)
        pcm_dim = 2 * token_dim if wide_pcm else embed_dim
        # registered in the release's order: PCM, PRM, norm1, pos, attn, norm2, mlp
        self.PCM = conv_branch((in_chans, pcm_dim, pcm_dim, token_dim), _pcm_strides(downsample), groups, **dd)
        self.PRM = PyramidReduction(in_chans, embed_dim, kernel_size, downsample, dilations, **dd)
        self.norm1 = nn.LayerNorm(prm_dim, eps=RC_LN_EPS, **dd)
        self.pos = nn.Conv2d(prm_dim, prm_dim, kernel_size=7, padding=3, groups=prm_dim, **dd)
        self.attn = ConvVSAttention(prm_dim, num_heads, token_dim, window_size=window_size, qkv_bias=qkv_bias,
                                    attn_drop=attn_drop, proj_drop=proj_drop, **dd)
        self.norm2 = nn.LayerNorm(token_dim, eps=RC_LN_EPS, **dd)
        self.mlp = Mlp(token_dim, int(token_dim * mlp_ratio), act_layer=nn.GELU, drop=proj_drop, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.PRM(x)  # B, h, w, prm_dim
        tokens = tokens + self.pos(tokens.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        x = self.attn(self.norm1(tokens)) + self.PCM(pcm_input(x, self.PCM[0].groups)).permute(0, 2, 3, 1)
        return x + self.mlp(self.norm2(x))


class NormalCell(nn.Module):
    """x + VSA(LN(x + CPE(x))) + PCM(x), then x + MLP(LN(x)), on a (B, H, W, C) map (LayerNorm eps 1e-6).
    The CPE feeds only the attention branch."""

    def __init__(
            self,
            dim: int,
            num_heads: int,
            groups: int,
            mlp_ratio: float = 4.,
            window_size: int = 7,
            qkv_bias: bool = True,
            proj_drop: float = 0.,
            attn_drop: float = 0.,
            drop_path: float = 0.,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        hidden = int(dim * mlp_ratio)
        # registered in the release's order: norm1, pos, attn, norm2, mlp, PCM
        self.norm1 = nn.LayerNorm(dim, eps=NC_LN_EPS, **dd)
        self.pos = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim, **dd)
        self.attn = ConvVSAttention(dim, num_heads, window_size=window_size, qkv_bias=qkv_bias, attn_drop=attn_drop,
                                    proj_drop=proj_drop, **dd)
        self.norm2 = nn.LayerNorm(dim, eps=NC_LN_EPS, **dd)
        self.mlp = Mlp(dim, hidden, act_layer=nn.GELU, drop=proj_drop, **dd)
        self.PCM = conv_branch((dim, hidden, dim, dim), (1, 1, 1), groups, **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x.permute(0, 3, 1, 2)  # B, C, H, W view
        attn_in = x + self.pos(shortcut).permute(0, 2, 3, 1)
        pcm = self.PCM(pcm_input(shortcut, self.PCM[0].groups))
        x = x + self.drop_path(self.attn(self.norm1(attn_in))) + self.drop_path(pcm.permute(0, 2, 3, 1))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class ViTAEStage(nn.Module):
    """One reduction cell then the normal cells: (B, C, H, W) -> (B, H/r, W/r, token_dim); `pos_drop` between
    them (the reduction cell is the stage's patch embedding)."""

    def __init__(self, reduction: ReductionCell, cells: Sequence[NormalCell], pos_drop: float = 0.):
        super().__init__()
        self.grad_checkpointing = False
        self.RC = reduction
        self.pos_drop = nn.Dropout(pos_drop)
        self.NC = nn.ModuleList(cells)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint(self.RC, x)
        else:
            x = self.RC(x)
        x = self.pos_drop(x)
        for cell in self.NC:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(cell, x)
            else:
                x = cell(x)
        return x


class ViTAEv2VSA(nn.Module):
    """ViTAEv2* with VSA in every reduction and normal cell."""

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            embed_dims: Sequence[int] = (64, 64, 128, 256),
            token_dims: Sequence[int] = (64, 128, 256, 512),
            downsample_ratios: Sequence[int] = (4, 2, 2, 2),
            kernel_sizes: Sequence[int] = (7, 3, 3, 3),
            dilations: Sequence[Sequence[int]] = ((1, 2, 3, 4), (1, 2, 3), (1, 2), (1, 2)),
            rc_heads: Sequence[int] = (2, 2, 4, 8),
            nc_heads: Sequence[int] = (2, 4, 8, 16),
            depths: Sequence[int] = (2, 2, 8, 2),
            rc_groups: Sequence[int] = (1, 16, 32, 64),
            nc_groups: Sequence[int] = (1, 32, 64, 128),
            mlp_ratio: float = 4.,
            rc_mlp_ratio: float = 1.,
            window_size: int = 7,
            qkv_bias: bool = True,
            drop_rate: float = 0.,
            pos_drop_rate: float = 0.,
            proj_drop_rate: float = 0.,
            attn_drop_rate: float = 0.,
            drop_path_rate: float = 0.1,
            wide_pcm: bool = False,
            device=None,
            dtype=None,
    ):
        """
        Args:
            in_chans: Number of input image channels.
            num_classes: Number of classes; 0 removes the classifier.
            global_pool: 'avg' (token mean) or '' (the map).
            embed_dims: Width of each PRM branch (and of the reduction cell's PCM) per stage.
            token_dims: Output width of each stage.
            downsample_ratios: Stride of each reduction cell (1, 2 or 4).
            kernel_sizes: PRM kernel of each stage.
            dilations: PRM dilations of each stage (one branch each).
            rc_heads: Attention heads of each reduction cell.
            nc_heads: Attention heads of each stage's normal cells.
            depths: Normal cells per stage.
            rc_groups: Groups of the reduction cells' PCM convs.
            nc_groups: Groups of the normal cells' PCM convs.
            mlp_ratio: MLP (and normal-cell PCM) hidden width relative to the cell width.
            rc_mlp_ratio: The same for reduction cells.
            window_size: VSA's default window.
            qkv_bias: Bias of the q/k/v projections.
            drop_rate: Dropout before the classifier.
            pos_drop_rate: Dropout after each reduction cell (0 in the release, as are the two below).
            proj_drop_rate: Dropout after the attention projections and in the MLPs (0 in the release).
            attn_drop_rate: Dropout on attention weights (0 in the release).
            drop_path_rate: Stochastic depth of the normal cells, rising linearly to this rate over all of them.
            wide_pcm: The release's option for its 48M model: the reduction cells' PCM runs through
                2·token_dims (in -> 2·token_dim -> 2·token_dim -> token_dim) instead of embed_dims.
            device, dtype: Where and in which dtype the parameters are made (e.g. `device='meta'`, then load).
        """
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        assert global_pool in ('', 'avg'), f"global_pool must be 'avg' or '', got {global_pool!r}"
        num_stages = len(depths)
        for name, values in dict(embed_dims=embed_dims, token_dims=token_dims, downsample_ratios=downsample_ratios,
                                 kernel_sizes=kernel_sizes, dilations=dilations, rc_heads=rc_heads, nc_heads=nc_heads,
                                 rc_groups=rc_groups, nc_groups=nc_groups).items():
            assert len(values) == num_stages, f'{name} needs one value per stage ({num_stages}), got {values}'
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.min_input_size = MIN_INPUT_SIZE
        self.token_dims = tuple(token_dims)
        self.num_features = self.head_hidden_size = token_dims[-1]

        dpr = calculate_drop_path_rates(drop_path_rate, sum(depths))
        self.layers = nn.ModuleList()
        self.feature_info = []
        reduction = 1
        common = dict(window_size=window_size, qkv_bias=qkv_bias, proj_drop=proj_drop_rate, attn_drop=attn_drop_rate,
                      **dd)
        for i in range(num_stages):
            in_chans_i = in_chans if i == 0 else token_dims[i - 1]
            self.layers.append(ViTAEStage(
                ReductionCell(in_chans_i, embed_dims[i], token_dims[i], downsample_ratios[i], kernel_sizes[i],
                              dilations[i], rc_heads[i], rc_groups[i], mlp_ratio=rc_mlp_ratio, wide_pcm=wide_pcm,
                              **common),
                [NormalCell(token_dims[i], nc_heads[i], nc_groups[i], mlp_ratio=mlp_ratio,
                            drop_path=dpr[sum(depths[:i]) + j], **common) for j in range(depths[i])],
                pos_drop=pos_drop_rate,
            ))
            reduction *= downsample_ratios[i]
            self.feature_info.append(dict(num_chs=token_dims[i], reduction=reduction, module=f'layers.{i}'))
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)
        self.convs_fused = False  # set by `fuse()`

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        """The release's: truncated normal Linear weights, zero biases, unit LayerNorms; convolutions
        (the VSA projections and regressors included) keep PyTorch's default."""
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        """As released: nothing beyond timm's rule (1-D parameters and biases); the bias tables decay."""
        return set()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict:
        return dict(
            stem=r'^layers\.0\.RC',
            blocks=r'^layers\.(\d+)' if coarse else [
                (r'^layers\.(\d+)\.RC', (0,)),  # (stage, 0) before (stage, cell, 1)
                (r'^layers\.(\d+)\.NC\.(\d+)', (1,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for layer in self.layers:
            layer.grad_checkpointing = enable

    @torch.jit.ignore
    def fuse(self) -> 'ViTAEv2VSA':
        """Fold every PCM BatchNorm into the convolution before it, for inference (`fuse_conv_bn`); returns the
        model in eval mode, with the same outputs to float32 rounding.

        One-way and for inference only: the fused model refuses `train()` (a folded BatchNorm has no batch
        statistics left to train), and its state dict is not the released format (no `PCM.1.*` / `PCM.4.*`
        BatchNorm keys; the folded values under `PCM.0.*` / `PCM.3.*`), so save and load the unfused model and
        fuse after loading.
        """
        fuse_conv_bn(self)
        self.convs_fused = True
        return self

    def train(self, mode: bool = True) -> 'ViTAEv2VSA':
        if mode and self.convs_fused:
            raise RuntimeError(f'{type(self).__name__} was fused for inference (`fuse()`, BatchNorms folded into '
                               'the convolutions) and cannot train; build or load the unfused model to train it')
        return super().train(mode)

    @torch.jit.ignore
    def set_fused_attn(self, enable: bool = True) -> None:
        """Switch every VSA between `scaled_dot_product_attention` (where faster) and the explicit path."""
        for module in self.modules():
            if isinstance(module, ConvVSAttention):
                module.fused_attn = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        if global_pool is not None:
            assert global_pool in ('', 'avg'), f"global_pool must be 'avg' or '', got {global_pool!r}"
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes, **get_device_dtype(self)) if num_classes > 0 \
            else nn.Identity()
        self._init_weights(self.head)
        self.head.train(self.training)

    def _forward_stages(
            self,
            x: torch.Tensor,
            take_indices: List[int],
            last_index: int,
    ) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """Run stages 0..last_index; collect NCHW maps of `take_indices` (no final norm: the model has none).

        Returns the map (B, H, W, C) of stage `last_index`.
        """
        x = check_input_size(x, self.min_input_size, 'ViTAEv2VSA', 'one token at stride 32')
        intermediates: List[torch.Tensor] = []
        for i, layer in enumerate(self.layers):
            if i <= last_index:  # TorchScript unrolls this loop: no `break`
                # a stage takes NCHW and gives NHWC
                x = layer(x if i == 0 else x.permute(0, 3, 1, 2))
                if i in take_indices:
                    intermediates.append(x.permute(0, 3, 1, 2))
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
        """Forward that also returns per-stage maps (strides 4, 8, 16, 32).

        Args:
            x: Input images (B, C, H, W).
            indices: Take the last n stages if int, all if None, or the listed stage indices.
            norm: No effect: the model has no final norm (timm: "apply the norm layer to compatible
                intermediates"; none is).
            stop_early: Stop after the last requested stage.
            output_fmt: 'NCHW' or 'NHWC'.
            intermediates_only: Return only the list of maps.
        """
        assert output_fmt in ('NCHW', 'NHWC'), 'Output format must be NCHW or NHWC.'
        take_indices, max_index = feature_take_indices(len(self.layers), indices)
        last_index = max_index if stop_early else len(self.layers) - 1
        x, intermediates = self._forward_stages(x, take_indices, last_index)
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
        """Drop the stages (and head) not needed for the requested intermediates."""
        take_indices, max_index = feature_take_indices(len(self.layers), indices)
        prune_end = max_index < len(self.layers) - 1
        self.layers = self.layers[:max_index + 1]
        if prune_end:
            self.num_features = self.head_hidden_size = self.token_dims[max_index]
        if prune_head or prune_end:
            self.reset_classifier(0, '')
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last-stage map (B, H/32, W/32, C)."""
        x, _ = self._forward_stages(x, [], len(self.layers) - 1)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == 'avg':
            x = x.mean(dim=(1, 2))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: ViTAEv2VSA) -> Dict[str, torch.Tensor]:
    """Released-format checkpoints by the package's checkpoint policy (`scalablevit.checkpoint`); the fixed
    `relative_position_index` buffers are filled in when a checkpoint was saved without them."""
    return filter_for_model(state_dict, model, model_name='ViTAEv2VSA',
                            fixed_buffer_suffixes=('relative_position_index',))


def _create_vitae_vsa(variant: str, pretrained: bool = False, **kwargs) -> ViTAEv2VSA:
    out_indices = kwargs.pop('out_indices', 4)
    kwargs = read_pretrained_file(pretrained, kwargs)  # a local file by the checkpoint policy
    return build_model_with_cfg(
        ViTAEv2VSA,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls='getter'),
        **kwargs,
    )


def _cfg(**kwargs) -> Dict:
    return {
        'url': '',
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': 0.875, 'interpolation': 'bicubic', 'fixed_input_size': False,
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'layers.0.RC.PRM.convs.0.0', 'classifier': 'head',
        'paper_ids': 'arXiv:2204.08446', 'paper_name': 'VSA: Learning Varied-Size Window Attention in Vision '
                                                      'Transformers', 'license': 'apache-2.0',
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    'vitaev2_vsa_s.untrained': _cfg(),
    'vitaev2_vsa_48m.untrained': _cfg(),
    'vitaev2_vsa_test.untrained': _cfg(input_size=(3, 64, 64), pool_size=(2, 2), test_input_size=(3, 64, 64)),
})


# The ViTAE-VSA release's ImageNet recipe (the reference, "ViTAEv2*-48M+VSA": its Image-Classification/main.py
# defaults and training_scripts/): DeiT's AdamW at lr 5e-4 per 512 images for 300 epochs, but 10 warm-up epochs;
# S: drop path 0.1, weight decay 0.05; 48M: drop path 0.25, weight decay 0.055. Keys are classification/main.py's
# argparse dest names.
TRAIN_RECIPES = {
    'vitaev2_vsa_s': dict(drop_path=0.1, warmup_epochs=10, weight_decay=0.05),
    'vitaev2_vsa_48m': dict(drop_path=0.25, warmup_epochs=10, weight_decay=0.055),
}


# The released S (the class defaults), the released 48M (`ViTAEv2_VSA_widePCM_48M`: RC heads equal to the NC
# heads, the wide reduction-cell PCM; 51,089,119 parameters, 15.09 GFLOPs), and a tiny one for tests.
ARCH_SETTINGS = {
    's': dict(),
    '48m': dict(embed_dims=(96, 96, 192, 384), token_dims=(96, 192, 384, 768), depths=(2, 2, 11, 2),
                rc_heads=(3, 6, 12, 24), nc_heads=(3, 6, 12, 24), wide_pcm=True),
    'test': dict(embed_dims=(16, 16, 32, 64), token_dims=(16, 32, 64, 128), rc_heads=(1, 1, 2, 4),
                 nc_heads=(1, 2, 4, 8), depths=(1, 1, 1, 1), rc_groups=(1, 4, 8, 16), nc_groups=(1, 8, 16, 32)),
}


@register_model
def vitaev2_vsa_s(pretrained: bool = False, **kwargs) -> ViTAEv2VSA:
    """ViTAEv2*-S+VSA (19.77 M parameters, 5.76 GFLOPs)."""
    return _create_vitae_vsa('vitaev2_vsa_s', pretrained, **dict(ARCH_SETTINGS['s'], **kwargs))


@register_model
def vitaev2_vsa_48m(pretrained: bool = False, **kwargs) -> ViTAEv2VSA:
    """ViTAEv2*-48M+VSA, the release's `ViTAEv2_VSA_widePCM_48M` (51.09 M parameters, not 48 M; 15.09 GFLOPs)."""
    return _create_vitae_vsa('vitaev2_vsa_48m', pretrained, **dict(ARCH_SETTINGS['48m'], **kwargs))


@register_model
def vitaev2_vsa_test(pretrained: bool = False, **kwargs) -> ViTAEv2VSA:
    """A tiny ViTAEv2*+VSA for tests and CPU demos; not a paper model."""
    return _create_vitae_vsa('vitaev2_vsa_test', pretrained, **dict(ARCH_SETTINGS['test'], **kwargs))


FAMILY = register_family(ModelFamily(
    name='vitae_vsa',
    title='ViTAEv2*+VSA',
    model_cls=ViTAEv2VSA,
    arch_settings=ARCH_SETTINGS,
    model_names={'s': 'vitaev2_vsa_s', '48m': 'vitaev2_vsa_48m', 'test': 'vitaev2_vsa_test'},
    checkpoint_filter=checkpoint_filter_fn,
    backbone_name='ViTAEv2VSABackbone',
    default_arch='s',
    norm_eps=NC_LN_EPS,
    train_recipes=TRAIN_RECIPES,
    onnx_dynamic_sizes=False,  # the PRM's per-side padding depends on the input size; tracing fixes it
    description='ViTAEv2* with varied-size window attention in every cell (VSA, ECCV 2022)',
))
