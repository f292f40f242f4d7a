"""ScopeViT: Scale-Aware Vision Transformer

A PyTorch implementation of:
* `ScopeViT: Scale-Aware Vision Transformer` (Pattern Recognition 2024)
  - https://doi.org/10.1016/j.patcog.2024.110470

Four stages of "ScopeViT blocks" on BatchNorm-normed BCHW maps; each block is two pre-norm transformer
layers with LayerScale:
* MSSA (multi-scale self-attention): an inverted-residual conditional position encoding, then keys/values
  embedded by depth-wise 7x7 / 5x5 / 3x3 convolutions on consecutive channel groups (one group per set of
  heads, stride 4/2/1/1 per stage), and global attention of every token over those keys;
* GSDA (global-scale dilated attention): the map is cut into ph x pw groups of 8x8 tokens spaced H/8 rows and
  W/8 columns apart (a dilated, image-wide lattice), each group attends within itself with a continuous
  (log-coordinate MLP) relative position bias.

Parameter names are those of the released code (`patch_embed{i}`, `blocks{i}.{j}.mssa|gsda`, `norm{i}`), so
its checkpoints load `strict=True`; the function matches it to float32 rounding where it runs. The release
accepts only sides in (256m - 4, 256m]; here any size of at least `MIN_INPUT_SIZE` runs: GSDA pads each map to
multiples of 8 and masks the padded keys (padded queries are cropped), which changes nothing where no
padding is needed. No weights were published.
"""
import math
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import (
    DropPath,
    LayerScale,
    Mlp,
    RelPosMlp,
    calculate_drop_path_rates,
    get_device_dtype,
    register_notrace_module,
    trunc_normal_,
    use_fused_attn,
)
from timm.models import build_model_with_cfg, checkpoint, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices

from .checkpoint import filter_for_model, read_pretrained_file
from .family import ModelFamily, register_family
from .layers import attend, check_input_size, key_padding_mask

__all__ = ['ARCH_SETTINGS', 'FAMILY', 'MIN_INPUT_SIZE', 'TRAIN_RECIPES', 'ScopeViT', 'checkpoint_filter_fn']

LN_EPS = 1e-5  # every LayerNorm of the release uses PyTorch's default
MAX_STAGES = 4  # the released names: patch_embed1-4, blocks1-4, norm1-4
LATTICE = 8  # GSDA groups tokens on an 8x8 dilated lattice
KERNEL_SIZES = (7, 5, 3)  # MSSA's key/value embedding kernels, one per head group
MIN_INPUT_SIZE = 32  # one token at stride 32


class InvertedResidual(nn.Module):
    """x + BN(1x1(ReLU(BN(dw3x3(ReLU(BN(1x1(x)))))))), expansion 4: MSSA's conditional position encoding.
    Keys `conv_pw`, `bn1.0`, `conv_dw`, `bn2.0`, `conv_pwl`, `bn3` as in the release."""

    def __init__(self, dim: int, expansion: int = 4, device=None, dtype=None):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        hidden = dim * expansion
        self.conv_pw = nn.Conv2d(dim, hidden, 1, bias=False, **dd)
        self.bn1 = nn.Sequential(nn.BatchNorm2d(hidden, **dd), nn.ReLU())
        self.conv_dw = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False, **dd)
        self.bn2 = nn.Sequential(nn.BatchNorm2d(hidden, **dd), nn.ReLU())
        self.conv_pwl = nn.Conv2d(hidden, dim, 1, bias=False, **dd)
        self.bn3 = nn.BatchNorm2d(dim, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bn3(self.conv_pwl(self.bn2(self.conv_dw(self.bn1(self.conv_pw(x))))))


class MultiScaleEmbed(nn.Module):
    """The position-encoded map u = x + IR(x), and the key/value map: depth-wise 7x7 / 5x5 / 3x3 convolutions
    (stride s) on the first c7, next c5 and last c3 channels of u, concatenated. Every branch pads
    ((s - 1) + (k - 1)) // 2, so all give the same size."""

    def __init__(self, dim: int, group_channels: Sequence[int], stride: int, device=None, dtype=None):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        assert sum(group_channels) == dim, f'head groups {group_channels} must cover the {dim} channels'
        assert group_channels[0] > 0 and group_channels[1] > 0, 'the 7x7 and 5x5 groups need channels'
        self.group_channels = [c for c in group_channels if c > 0]
        self.cpe = InvertedResidual(dim, **dd)
        embeds = {}
        for name, kernel, channels in zip(('large_embed', 'medium_embed', 'small_embed'), KERNEL_SIZES,
                                          group_channels):
            if channels > 0:
                embeds[name] = nn.Conv2d(channels, channels, kernel, stride=stride,
                                         padding=((stride - 1) + (kernel - 1)) // 2, groups=channels, bias=False,
                                         **dd)
        # stage 1 has no 3x3 group: its `small_embed` is a parameter-free placeholder (no keys, never called)
        self.large_embed = embeds['large_embed']
        self.medium_embed = embeds['medium_embed']
        self.small_embed = embeds.get('small_embed', nn.Identity())
        self.num_groups = len(self.group_channels)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W) -> u (B, C, H, W), key/value map (B, C, H', W')."""
        u = self.cpe(x)
        parts = torch.split(u, self.group_channels, dim=1)
        kv = [self.large_embed(parts[0]), self.medium_embed(parts[1])]
        if self.num_groups > 2:
            kv.append(self.small_embed(parts[2]))
        return u, torch.cat(kv, dim=1)


class MultiScaleAttention(nn.Module):
    """MSSA: queries from every token of u, keys/values from the multi-scale embedded map, global attention
    without a position bias; on (B, H, W, C) maps."""
    fused_attn: torch.jit.Final[bool]

    def __init__(self, dim: int, num_heads: int, head_split: Sequence[int], kv_stride: int, attn_drop: float = 0.,
                 proj_drop: float = 0., device=None, dtype=None):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        assert sum(head_split) == num_heads, f'head split {head_split} must sum to {num_heads} heads'
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.fused_attn = use_fused_attn()
        self.attn_drop = attn_drop
        self.mspe = MultiScaleEmbed(dim, [n * self.head_dim for n in head_split], kv_stride, **dd)
        self.query = nn.Linear(dim, dim, bias=False, **dd)
        self.key_value = nn.Linear(dim, 2 * dim, bias=False, **dd)
        self.proj = nn.Linear(dim, dim, **dd)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        heads, d = self.num_heads, self.head_dim
        # B, H, W, C -> (view) B, C, H, W: channels-last memory, which the convolutions read directly
        u, kv = self.mspe(x.permute(0, 3, 1, 2))
        # B, C, H, W -> B, N, heads, d -> B, heads, N, d (channel c belongs to head c // d)
        q = self.query(u.permute(0, 2, 3, 1).reshape(B, H * W, C)).view(B, H * W, heads, d).transpose(1, 2)
        # B, C, H', W' -> B, M, 2, heads, d -> 2, B, heads, M, d
        M = kv.shape[-2] * kv.shape[-1]
        kv = self.key_value(kv.flatten(2).transpose(1, 2)).view(B, M, 2, heads, d).permute(2, 0, 3, 1, 4)
        x = attend(q, kv[0], kv[1], self.scale, dropout_p=self.attn_drop if self.training else 0.,
                   fused=self.fused_attn)
        # B, heads, N, d -> B, H, W, C
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(B, H, W, C)))


def lattice_key_mask(H: int, W: int, lattice: int, device: torch.device) -> torch.Tensor:
    """Boolean key mask (ph·pw, 1, 1, lattice²), True on real tokens, of every group of a map padded to
    multiples of the lattice. Group (p, q) holds the tokens (a·ph + p, b·pw + q), a, b = 0..lattice-1."""
    ph, pw = (H + lattice - 1) // lattice, (W + lattice - 1) // lattice
    a = torch.arange(lattice, device=device)
    rows = a[None, :] * ph + torch.arange(ph, device=device)[:, None]  # ph, L: row of lattice cell a in group p
    cols = a[None, :] * pw + torch.arange(pw, device=device)[:, None]  # pw, L
    return key_padding_mask(H, W, rows, cols).view(ph * pw, 1, 1, lattice * lattice)


@register_notrace_module  # reason: whether to pad depends on the map size
class DilatedLatticeAttention(nn.Module):
    """GSDA: attention inside each group of 8x8 tokens spaced ⌈H/8⌉ rows and ⌈W/8⌉ columns apart, with a
    log-coordinate MLP relative position bias (timm's `RelPosMlp`, 'cr' mode); on (B, H, W, C) maps.
    Maps whose sides are not multiples of 8 are zero-padded at the bottom/right; padded keys are masked and
    padded queries cropped, so the padding never reaches a real token. (When traced for export, every map
    takes that path, so the graph serves any size.)"""
    fused_attn: torch.jit.Final[bool]

    def __init__(self, dim: int, num_heads: int, rel_pos_hidden: int = 512, attn_drop: float = 0.,
                 proj_drop: float = 0., device=None, dtype=None):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.lattice = LATTICE
        self.fused_attn = use_fused_attn()
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, 3 * dim, bias=False, **dd)
        self.proj = nn.Linear(dim, dim, **dd)
        self.proj_drop = nn.Dropout(proj_drop)
        self.rel_pos = RelPosMlp((LATTICE, LATTICE), num_heads, hidden_dim=rel_pos_hidden, mode='cr', **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        L, heads, d = self.lattice, self.num_heads, self.head_dim
        ph, pw = (H + L - 1) // L, (W + L - 1) // L
        padded = torch.jit.is_tracing() or ph * L != H or pw * L != W
        if padded:
            x = F.pad(x, (0, 0, 0, pw * L - W, 0, ph * L - H))
        qkv = self.qkv(x)
        # B, L·ph, L·pw, 3C -> B, L (a), ph (p), L (b), pw (q), 3, heads, d -> 3, B·ph·pw, heads, L², d
        qkv = qkv.view(B, L, ph, L, pw, 3, heads, d).permute(5, 0, 2, 4, 6, 1, 3, 7)
        qkv = qkv.reshape(3, B * ph * pw, heads, L * L, d)
        bias = self.rel_pos.get_bias()  # 1, heads, L², L²
        mask: Optional[torch.Tensor] = None
        if padded:
            # ph·pw, 1, 1, L² -> B·ph·pw, 1, 1, L² (groups are ordered batch, p, q)
            mask = lattice_key_mask(H, W, L, x.device).repeat(B, 1, 1, 1)
        x = attend(qkv[0], qkv[1], qkv[2], self.scale, bias=bias, mask=mask,
                   dropout_p=self.attn_drop if self.training else 0., fused=self.fused_attn)
        # B·ph·pw, heads, L², d -> B, ph, pw, heads, L, L, d -> B, L, ph, L, pw, heads, d -> B, H, W, C
        x = x.view(B, ph, pw, heads, L, L, d).permute(0, 4, 1, 5, 2, 3, 6).reshape(B, L * ph, L * pw, C)
        if padded:
            x = x[:, :H, :W, :]
        return self.proj_drop(self.proj(x))


class ScopeLayer(nn.Module):
    """Pre-norm transformer layer with LayerScale: x + γ1·attn(LN(x)), then x + γ2·MLP(LN(x))."""

    def __init__(self, dim: int, attn: nn.Module, mlp_ratio: float, drop_path: float, layer_scale_init: float,
                 proj_drop: float = 0., device=None, dtype=None):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS, **dd)
        self.attn = attn
        self.ls1 = LayerScale(dim, layer_scale_init, **dd)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS, **dd)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=proj_drop, **dd)
        self.ls2 = LayerScale(dim, layer_scale_init, **dd)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


class ScopeBlock(nn.Module):
    """One ScopeViT block: an MSSA layer, then a GSDA layer (same drop-path rate), on (B, H, W, C) maps."""

    def __init__(
            self,
            dim: int,
            num_heads: int,
            head_split: Sequence[int],
            kv_stride: int,
            mlp_ratio: float = 4.,
            drop_path: float = 0.,
            layer_scale_init: float = 1e-6,
            proj_drop: float = 0.,
            attn_drop: float = 0.,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        drops = dict(attn_drop=attn_drop, proj_drop=proj_drop)
        super().__init__()
        self.mssa = ScopeLayer(dim, MultiScaleAttention(dim, num_heads, head_split, kv_stride, **drops, **dd),
                               mlp_ratio, drop_path, layer_scale_init, proj_drop, **dd)
        self.gsda = ScopeLayer(dim, DilatedLatticeAttention(dim, num_heads, **drops, **dd), mlp_ratio, drop_path,
                               layer_scale_init, proj_drop, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gsda(self.mssa(x))


class ScopeStage(nn.Sequential):
    """The blocks of one stage on a (B, C, H, W) map (tokens in between); keys `blocks{i}.{j}`."""

    def __init__(self, blocks: List[ScopeBlock]):
        super().__init__(*blocks)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1).contiguous()  # B, C, H, W -> B, H, W, C
        for block in self:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(block, x)
            else:
                x = block(x)
        return x.permute(0, 3, 1, 2)  # (view) B, C, H, W in channels-last memory


class Stem(nn.Module):
    """Stride-4 embedding: conv 3x3/2, BN, GELU, conv 3x3/2, BN (`projection.{0,1,3,4}`)."""

    def __init__(self, in_chans: int, dim: int, device=None, dtype=None):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.projection = nn.Sequential(
            nn.Conv2d(in_chans, dim // 2, 3, stride=2, padding=1, **dd),
            nn.BatchNorm2d(dim // 2, **dd),
            nn.GELU(),
            nn.Conv2d(dim // 2, dim, 3, stride=2, padding=1, **dd),
            nn.BatchNorm2d(dim, **dd),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(x)


class Downsample(nn.Module):
    """Stride-2 embedding between stages: conv 3x3/2 (bias), BN; a side n becomes ⌈n/2⌉."""

    def __init__(self, in_dim: int, dim: int, device=None, dtype=None):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.projection = nn.Conv2d(in_dim, dim, 3, stride=2, padding=1, **dd)
        self.norm = nn.BatchNorm2d(dim, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.projection(x))


class ScopeViT(nn.Module):
    """ScopeViT: stem, stages of MSSA + GSDA blocks with BatchNorm stage norms, mean pooling, Linear."""

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            embed_dims: Sequence[int] = (32, 64, 128, 256),
            depths: Sequence[int] = (2, 2, 5, 2),
            num_heads: Sequence[int] = (2, 4, 8, 16),
            head_splits: Sequence[Sequence[int]] = ((1, 1, 0), (2, 1, 1), (4, 3, 1), (8, 6, 2)),
            kv_strides: Sequence[int] = (4, 2, 1, 1),
            mlp_ratio: float = 4.,
            layer_scale_init: float = 1e-6,
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
            num_classes: Number of classes; 0 removes the classifier.
            global_pool: 'avg' (spatial mean) or '' (the map).
            embed_dims: Channels of each stage (one to four stages; the release has four).
            depths: ScopeViT blocks (MSSA + GSDA layer pairs) per stage.
            num_heads: Attention heads of each stage.
            head_splits: Heads per MSSA key/value kernel (7, 5, 3) in each stage.
            kv_strides: Stride of MSSA's key/value embedding in each stage.
            mlp_ratio: MLP hidden width relative to the layer width.
            layer_scale_init: Initial LayerScale value.
            drop_rate: Dropout before the classifier (0 in the release, as are the three below).
            pos_drop_rate: Dropout after each patch embedding.
            proj_drop_rate: Dropout after the attention projections and in the MLPs.
            attn_drop_rate: Dropout on attention weights.
            drop_path_rate: Stochastic depth, rising linearly over the blocks; both layers of a block share it.
            device, dtype: Where and in which dtype the parameters are made (e.g. `device='meta'`, then load).
        """
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        assert global_pool in ('', 'avg'), f"global_pool must be 'avg' or '', got {global_pool!r}"
        num_stages = len(depths)
        if not 1 <= num_stages <= MAX_STAGES:
            raise ValueError(f'ScopeViT builds one to {MAX_STAGES} stages (the released names patch_embed1-4, '
                             f'blocks1-4, norm1-4), got depths {tuple(depths)}')
        for name, values in (('embed_dims', embed_dims), ('num_heads', num_heads), ('head_splits', head_splits),
                             ('kv_strides', kv_strides)):
            assert len(values) == num_stages, f'{name} needs one value per stage ({num_stages}), got {values}'
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_stages = num_stages
        self.min_input_size = MIN_INPUT_SIZE
        self.embed_dims = tuple(embed_dims)
        self.num_features = self.head_hidden_size = embed_dims[-1]

        self.pos_drop = nn.Dropout(pos_drop_rate)
        dpr = calculate_drop_path_rates(drop_path_rate, sum(depths))
        self.feature_info = []
        for i in range(MAX_STAGES):
            # the release's names and order: patch_embed{i}, blocks{i}, norm{i}; absent stages are identities
            embed, blocks, stage_norm = nn.Identity(), nn.Identity(), nn.Identity()
            if i < num_stages:
                embed = Stem(in_chans, embed_dims[0], **dd) if i == 0 else \
                    Downsample(embed_dims[i - 1], embed_dims[i], **dd)
                blocks = ScopeStage([
                    ScopeBlock(embed_dims[i], num_heads[i], head_splits[i], kv_strides[i], mlp_ratio=mlp_ratio,
                               drop_path=dpr[sum(depths[:i]) + j], layer_scale_init=layer_scale_init,
                               proj_drop=proj_drop_rate, attn_drop=attn_drop_rate, **dd)
                    for j in range(depths[i])
                ])
                stage_norm = nn.BatchNorm2d(embed_dims[i], **dd)
                self.feature_info.append(dict(num_chs=embed_dims[i], reduction=4 * 2 ** i, module=f'norm{i + 1}'))
            setattr(self, f'patch_embed{i + 1}', embed)
            setattr(self, f'blocks{i + 1}', blocks)
            setattr(self, f'norm{i + 1}', stage_norm)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        """The release's: truncated normal Linear weights (the position MLPs included), zero biases; conv
        weights normal with std sqrt(2 / fan_out); norms and LayerScales keep their constructors' values."""
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def _stage(self, i: int) -> Tuple[nn.Module, nn.Module, nn.Module]:
        return getattr(self, f'patch_embed{i + 1}'), getattr(self, f'blocks{i + 1}'), getattr(self, f'norm{i + 1}')

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        """The LayerScale gammas (1-D, so timm's optimizer factory exempts them anyway); the release's configs
        meant to exempt them but named no existing parameter."""
        return {n for n, _ in self.named_parameters() if n.endswith(('ls1.gamma', 'ls2.gamma'))}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict:
        return dict(
            stem=r'^patch_embed1',
            blocks=[(r'^(?:patch_embed|blocks|norm)(\d+)', None)] if coarse else [
                (r'^patch_embed([234])', None),
                (r'^blocks(\d+)\.(\d+)', None),
                (r'^norm(\d+)', (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for i in range(self.num_stages):
            blocks = self._stage(i)[1]
            if isinstance(blocks, ScopeStage):
                blocks.grad_checkpointing = enable

    @torch.jit.ignore
    def set_fused_attn(self, enable: bool = True) -> None:
        """Switch every attention between `scaled_dot_product_attention` (where faster) and explicit ops."""
        for module in self.modules():
            if isinstance(module, (MultiScaleAttention, DilatedLatticeAttention)):
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

    def _forward_stage(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Stage i: patch embedding, dropout, blocks, stage BatchNorm. Spelled out over the four named slots
        (TorchScript can neither look modules up by name nor call modules held in a tuple); absent stages are
        identities."""
        if i == 0:
            return self.norm1(self.blocks1(self.pos_drop(self.patch_embed1(x))))
        if i == 1:
            return self.norm2(self.blocks2(self.pos_drop(self.patch_embed2(x))))
        if i == 2:
            return self.norm3(self.blocks3(self.pos_drop(self.patch_embed3(x))))
        return self.norm4(self.blocks4(self.pos_drop(self.patch_embed4(x))))

    def _forward_stages(
            self,
            x: torch.Tensor,
            take_indices: List[int],
            last_index: int,
    ) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """Run stages 0..last_index; collect the (already normed) NCHW maps of `take_indices`.

        Returns the map (B, C, H, W) of stage `last_index`.
        """
        x = check_input_size(x, self.min_input_size, 'ScopeViT', 'one token at stride 32')
        intermediates: List[torch.Tensor] = []
        for i in range(last_index + 1):
            x = self._forward_stage(i, x)
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
        """Forward that also returns the BatchNorm-normed stage maps (strides 4, 8, 16, 32).

        Args:
            x: Input images (B, C, H, W).
            indices: Take the last n stages if int, all if None, or the listed stage indices.
            norm: No effect: every stage map is normed by its stage's BatchNorm (timm: "apply the norm layer
                to compatible intermediates"; all of them already are).
            stop_early: Stop after the last requested stage.
            output_fmt: 'NCHW' or 'NHWC'.
            intermediates_only: Return only the list of maps.
        """
        assert output_fmt in ('NCHW', 'NHWC'), 'Output format must be NCHW or NHWC.'
        take_indices, max_index = feature_take_indices(self.num_stages, indices)
        last_index = max_index if stop_early else self.num_stages - 1
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
        """Drop the stages after the last requested one (the stage norms stay: they make the stage maps)."""
        take_indices, max_index = feature_take_indices(self.num_stages, indices)
        prune_end = max_index < self.num_stages - 1
        for i in range(max_index + 1, self.num_stages):
            for name in (f'patch_embed{i + 1}', f'blocks{i + 1}', f'norm{i + 1}'):
                setattr(self, name, nn.Identity())
        if prune_end:
            self.num_features = self.head_hidden_size = self.embed_dims[max_index]
        if prune_head or prune_end:
            self.reset_classifier(0, '')
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The normed last-stage map (B, C, H/32, W/32)."""
        x, _ = self._forward_stages(x, [], self.num_stages - 1)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == 'avg':
            x = x.mean(dim=(2, 3))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: ScopeViT) -> Dict[str, torch.Tensor]:
    """Released-format checkpoints by the package's checkpoint policy (`scalablevit.checkpoint`)."""
    return filter_for_model(state_dict, model, model_name='ScopeViT')


def _create_scope_vit(variant: str, pretrained: bool = False, **kwargs) -> ScopeViT:
    out_indices = kwargs.pop('out_indices', 4)
    kwargs = read_pretrained_file(pretrained, kwargs)  # a local file by the checkpoint policy
    return build_model_with_cfg(
        ScopeViT,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls='getter'),
        **kwargs,
    )


def _cfg(**kwargs) -> Dict:
    return {
        'url': '',
        'num_classes': 1000, 'input_size': (3, 256, 256), 'pool_size': (8, 8),
        'crop_pct': 0.9, 'interpolation': 'bicubic', 'fixed_input_size': False,
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'patch_embed1.projection.0', 'classifier': 'head',
        'paper_ids': 'doi:10.1016/j.patcog.2024.110470', 'paper_name': 'ScopeViT: Scale-Aware Vision Transformer',
        'license': 'apache-2.0',
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    'scope_vit_xtiny.untrained': _cfg(),
    'scope_vit_tiny.untrained': _cfg(),
    'scope_vit_small.untrained': _cfg(),
    'scope_vit_test.untrained': _cfg(input_size=(3, 64, 64), pool_size=(2, 2), test_input_size=(3, 64, 64)),
})


# ScopeViT published no recipe: DeiT's (the paper compares under it) at the release's 256x256 with its eval crop
# of 0.9 (both from the pretrained cfg), and the stochastic depth of the release's dense configs.
TRAIN_RECIPES = {
    'scope_vit_xtiny': dict(drop_path=0.05),
    'scope_vit_tiny': dict(drop_path=0.1),
    'scope_vit_small': dict(drop_path=0.1),
}


# The released variants (README: tiny 7.4 M parameters and 2.0 GFLOPs at 256; the code builds 8.01 M), and a
# tiny one for tests. Heads have width 16 (xtiny, tiny) or 32 (small); the head splits are shared.
ARCH_SETTINGS = {
    'xtiny': dict(embed_dims=(32, 64, 128, 256), depths=(1, 2, 4, 1)),
    'tiny': dict(embed_dims=(32, 64, 128, 256), depths=(2, 2, 5, 2)),
    'small': dict(embed_dims=(64, 128, 256, 512), depths=(1, 2, 3, 1)),
    'test': dict(embed_dims=(16, 32, 64, 128), depths=(1, 1, 1, 1)),
}


@register_model
def scope_vit_xtiny(pretrained: bool = False, **kwargs) -> ScopeViT:
    """ScopeViT-XT (5.29 M parameters, 1.45 GFLOPs at 256)."""
    return _create_scope_vit('scope_vit_xtiny', pretrained, **dict(ARCH_SETTINGS['xtiny'], **kwargs))


@register_model
def scope_vit_tiny(pretrained: bool = False, **kwargs) -> ScopeViT:
    """ScopeViT-T (8.01 M parameters, 1.98 GFLOPs at 256)."""
    return _create_scope_vit('scope_vit_tiny', pretrained, **dict(ARCH_SETTINGS['tiny'], **kwargs))


@register_model
def scope_vit_small(pretrained: bool = False, **kwargs) -> ScopeViT:
    """ScopeViT-S (18.16 M parameters, 4.56 GFLOPs at 256)."""
    return _create_scope_vit('scope_vit_small', pretrained, **dict(ARCH_SETTINGS['small'], **kwargs))


@register_model
def scope_vit_test(pretrained: bool = False, **kwargs) -> ScopeViT:
    """A tiny ScopeViT for tests and CPU demos; not a paper model."""
    return _create_scope_vit('scope_vit_test', pretrained, **dict(ARCH_SETTINGS['test'], **kwargs))


FAMILY = register_family(ModelFamily(
    name='scope_vit',
    title='ScopeViT',
    model_cls=ScopeViT,
    arch_settings=ARCH_SETTINGS,
    model_names={variant: f'scope_vit_{variant}' for variant in ARCH_SETTINGS},
    checkpoint_filter=checkpoint_filter_fn,
    backbone_name='ScopeViTBackbone',
    default_arch='tiny',
    norm_eps=LN_EPS,
    train_recipes=TRAIN_RECIPES,
    description='ScopeViT (Pattern Recognition 2024): multi-scale MSSA and dilated-lattice GSDA',
))
