"""Swin Transformer with Varied-Size Window Attention (Swin+VSA)

A PyTorch implementation of the Swin+VSA models of:
* `VSA: Learning Varied-Size Window Attention in Vision Transformers` (ECCV 2022)
  - https://arxiv.org/abs/2204.08446
on the Swin Transformer of:
* `Swin Transformer: Hierarchical Vision Transformer using Shifted Windows`
  - https://arxiv.org/abs/2103.14030

Swin with every window attention replaced by VSA (`scalablevit.vsa`), a 7x7 depth-wise conditional position
encoding (CPE) added to the residual stream at the start of every block, and no shifted windows. Parameter
names are those of the released code (`layers.k.blocks.i...`, patch merging as `layers.k.downsample` at the
end of stage k, `relative_position_index` buffers in the state dict), so its checkpoints load `strict=True`.
Beyond the release: any input size (the image is padded to the patch size, odd maps before patch merging,
every map to the window in VSA) and the timm API.

No weights were published for these models; the function matches the release to float32 rounding.
"""
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, Mlp, calculate_drop_path_rates, get_device_dtype, trunc_normal_
from timm.models import build_model_with_cfg, checkpoint, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices

from .checkpoint import filter_for_model, read_pretrained_file
from .family import ModelFamily, register_family
from .vsa import VSAttention

__all__ = ['ARCH_SETTINGS', 'FAMILY', 'TRAIN_RECIPES', 'SwinTransformerVSA', 'checkpoint_filter_fn']

LN_EPS = 1e-5  # every LayerNorm of the release uses PyTorch's default


class PatchEmbed(nn.Module):
    """Non-overlapping patch_size x patch_size conv embedding and LayerNorm; (B, 3, H, W) -> (B, H/p, W/p, C).
    Images whose sides are not multiples of the patch size are zero-padded at the bottom/right."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int = 4, device=None, dtype=None):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size, **dd)
        self.norm = nn.LayerNorm(embed_dim, eps=LN_EPS, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[-2], x.shape[-1]
        p = self.patch_size
        x = F.pad(x, (0, (p - W % p) % p, 0, (p - H % p) % p))
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class VSABlock(nn.Module):
    """x + CPE(x), then VSA and MLP residual branches, on a (B, H, W, C) map."""

    def __init__(
            self,
            dim: int,
            num_heads: int,
            window_size: int = 7,
            mlp_ratio: float = 4.,
            qkv_bias: bool = True,
            proj_drop: float = 0.,
            attn_drop: float = 0.,
            drop_path: float = 0.,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS, **dd)
        self.pos = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim, **dd)
        self.attn = VSAttention(dim, num_heads, window_size=window_size, qkv_bias=qkv_bias, attn_drop=attn_drop,
                                proj_drop=proj_drop, **dd)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS, **dd)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=proj_drop, **dd)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the CPE sits in the residual stream: the attention's shortcut is x + CPE(x)
        x = x + self.pos(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        x = x + self.drop_path1(self.attn(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """2x2 neighbours concatenated, LayerNorm, Linear 4C -> 2C: (B, H, W, C) -> (B, ⌈H/2⌉, ⌈W/2⌉, 2C).
    Odd maps are zero-padded at the bottom/right first."""

    def __init__(self, dim: int, device=None, dtype=None):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False, **dd)  # before `norm`: the release's key order
        self.norm = nn.LayerNorm(4 * dim, eps=LN_EPS, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
        # B, H, W, C -> B, H/2, 2 (row parity), W/2, 2 (column parity), C -> B, H/2, W/2, 4C in the release's
        # order: (even row, even col), (odd row, even col), (even row, odd col), (odd row, odd col)
        x = x.reshape(B, x.shape[1] // 2, 2, x.shape[2] // 2, 2, C).permute(0, 1, 3, 4, 2, 5).flatten(3)
        return self.reduction(self.norm(x))


class SwinVSAStage(nn.Module):
    """The blocks of one stage, then (except for the last stage) patch merging."""

    def __init__(self, dim: int, depth: int, num_heads: int, downsample: bool, drop_path: Sequence[float],
                 device=None, dtype=None, **block_kwargs):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.grad_checkpointing = False
        self.blocks = nn.ModuleList([
            VSABlock(dim, num_heads, drop_path=drop_path[i], **block_kwargs, **dd) for i in range(depth)
        ])
        self.downsample = PatchMerging(dim, **dd) if downsample else nn.Identity()

    def forward_blocks(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(blk, x)
            else:
                x = blk(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(self.forward_blocks(x))


class SwinTransformerVSA(nn.Module):
    """Swin Transformer with VSA windows and CPEs, without shifted windows."""

    def __init__(
            self,
            patch_size: int = 4,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            embed_dim: int = 96,
            depths: Sequence[int] = (2, 2, 6, 2),
            num_heads: Sequence[int] = (3, 6, 12, 24),
            window_size: int = 7,
            mlp_ratio: float = 4.,
            qkv_bias: bool = True,
            drop_rate: float = 0.,
            pos_drop_rate: float = 0.,
            proj_drop_rate: float = 0.,
            attn_drop_rate: float = 0.,
            drop_path_rate: float = 0.1,
            device=None,
            dtype=None,
    ):
        """
        Args:
            patch_size: Side of the patch embedding (stride 4 in the paper's models).
            in_chans: Number of input image channels.
            num_classes: Number of classes; 0 removes the classifier.
            global_pool: 'avg' (token mean) or '' (per-token output).
            embed_dim: Channels of stage 0; each later stage doubles them.
            depths: Blocks per stage.
            num_heads: Attention heads of each stage.
            window_size: VSA's default window.
            mlp_ratio: MLP hidden width relative to the block width.
            qkv_bias: Bias of the q/k/v projections.
            drop_rate: Dropout before the classifier.
            pos_drop_rate: Dropout after the patch embedding.
            proj_drop_rate: Dropout after the attention projection and in the MLPs (0 in the release).
            attn_drop_rate: Dropout on attention weights (0 in the release).
            drop_path_rate: Stochastic depth, rising linearly to this rate over all blocks.
            device, dtype: Where and in which dtype the parameters are made (e.g. `device='meta'`, then load).
        """
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        assert global_pool in ('', 'avg'), f"global_pool must be 'avg' or '', got {global_pool!r}"
        assert len(num_heads) == len(depths), f'num_heads needs one value per stage ({len(depths)}), got {num_heads}'
        num_stages = len(depths)
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.embed_dims = tuple(embed_dim * 2 ** i for i in range(num_stages))
        self.num_features = self.head_hidden_size = self.embed_dims[-1]

        self.patch_embed = PatchEmbed(in_chans, embed_dim, patch_size, **dd)
        self.pos_drop = nn.Dropout(pos_drop_rate)
        dpr = calculate_drop_path_rates(drop_path_rate, sum(depths))
        self.layers = nn.ModuleList()
        self.feature_info = []
        for i in range(num_stages):
            self.layers.append(SwinVSAStage(
                self.embed_dims[i],
                depth=depths[i],
                num_heads=num_heads[i],
                downsample=i < num_stages - 1,
                drop_path=dpr[sum(depths[:i]):sum(depths[:i + 1])],
                window_size=window_size,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                proj_drop=proj_drop_rate,
                attn_drop=attn_drop_rate,
                **dd,
            ))
            self.feature_info.append(dict(num_chs=self.embed_dims[i], reduction=patch_size * 2 ** i,
                                          module=f'layers.{i}'))
        self.norm = nn.LayerNorm(self.num_features, eps=LN_EPS, **dd)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        """The release's: truncated normal Linear weights, zero biases, unit LayerNorms; convolutions keep
        PyTorch's default and the VSA regressors stay zero (default windows)."""
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        """The release's rule beyond timm's (1-D parameters and biases): the relative position bias tables."""
        return {n for n, _ in self.named_parameters() if 'relative_position_bias_table' in n}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict:
        return dict(
            stem=r'^patch_embed',
            blocks=r'^layers\.(\d+)' if coarse else [
                (r'^layers\.(\d+)\.downsample', (99998,)),  # merging ends its stage in the release's layout
                (r'^layers\.(\d+)\.blocks\.(\d+)', None),
                (r'^norm', (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for layer in self.layers:
            layer.grad_checkpointing = enable

    @torch.jit.ignore
    def set_fused_attn(self, enable: bool = True) -> None:
        """Switch every VSA between `scaled_dot_product_attention` (where faster) and the explicit path."""
        for module in self.modules():
            if isinstance(module, VSAttention):
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
            norm: bool,
    ) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """Run stages 0..last_index; collect NCHW maps of `take_indices` before patch merging (the final one
        normed if `norm`).

        Returns the normed last-stage map (B, H, W, C), or the merged map after stage `last_index` if earlier.
        """
        final_stage = len(self.layers) - 1
        x = self.pos_drop(self.patch_embed(x))
        intermediates: List[torch.Tensor] = []
        for i, layer in enumerate(self.layers):
            if i <= last_index:  # TorchScript unrolls this loop: no `break`
                x = layer.forward_blocks(x)
                if i == final_stage:
                    x_normed = self.norm(x)
                    if i in take_indices:
                        intermediates.append((x_normed if norm else x).permute(0, 3, 1, 2))
                    x = x_normed
                else:
                    if i in take_indices:
                        intermediates.append(x.permute(0, 3, 1, 2))
                    x = layer.downsample(x)
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
        """Forward that also returns per-stage maps (before patch merging; strides 4, 8, 16, 32).

        Args:
            x: Input images (B, C, H, W).
            indices: Take the last n stages if int, all if None, or the listed stage indices.
            norm: Apply the final norm to the last stage's map (only that stage has a norm).
            stop_early: Stop after the last requested stage.
            output_fmt: 'NCHW' or 'NHWC'.
            intermediates_only: Return only the list of maps.
        """
        assert output_fmt in ('NCHW', 'NHWC'), 'Output format must be NCHW or NHWC.'
        take_indices, max_index = feature_take_indices(len(self.layers), indices)
        last_index = max_index if stop_early else len(self.layers) - 1
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
        take_indices, max_index = feature_take_indices(len(self.layers), indices)
        prune_end = max_index < len(self.layers) - 1
        self.layers = self.layers[:max_index + 1]
        if prune_end:
            self.layers[-1].downsample = nn.Identity()
            self.num_features = self.head_hidden_size = self.embed_dims[max_index]
        if prune_norm or prune_end:
            self.norm = nn.Identity()
        if prune_head or prune_end:
            self.reset_classifier(0, '')
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Normed last-stage map (B, H/32, W/32, C)."""
        x, _ = self._forward_stages(x, [], len(self.layers) - 1, False)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == 'avg':
            x = x.mean(dim=(1, 2))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: SwinTransformerVSA) -> Dict[str, torch.Tensor]:
    """Released-format checkpoints by the package's checkpoint policy (`scalablevit.checkpoint`); the fixed
    `relative_position_index` buffers are filled in when a checkpoint was saved without them."""
    return filter_for_model(state_dict, model, model_name='SwinTransformerVSA',
                            fixed_buffer_suffixes=('relative_position_index',))


def _create_swin_vsa(variant: str, pretrained: bool = False, **kwargs) -> SwinTransformerVSA:
    out_indices = kwargs.pop('out_indices', 4)
    kwargs = read_pretrained_file(pretrained, kwargs)  # a local file by the checkpoint policy
    return build_model_with_cfg(
        SwinTransformerVSA,
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
        'crop_pct': 0.9, 'interpolation': 'bicubic', 'fixed_input_size': False,
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'patch_embed.proj', 'classifier': 'head',
        'paper_ids': 'arXiv:2204.08446', 'paper_name': 'VSA: Learning Varied-Size Window Attention in Vision '
                                                      'Transformers', 'license': 'apache-2.0',
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    'swin_tiny_vsa_patch4_window7_224.untrained': _cfg(),
    'swin_small_vsa_patch4_window7_224.untrained': _cfg(),
    'swin_vsa_test.untrained': _cfg(input_size=(3, 64, 64), test_input_size=(3, 64, 64)),
})


# Swin's recipe, which the VSA paper trains with: 20 warm-up epochs, EMA, stochastic depth 0.2 (T) / 0.3 (S);
# AdamW, lr, weight decay, clipping and label smoothing as DeiT's.
TRAIN_RECIPES = {
    'swin_tiny_vsa_patch4_window7_224': dict(drop_path=0.2, warmup_epochs=20, model_ema=True),
    'swin_small_vsa_patch4_window7_224': dict(drop_path=0.3, warmup_epochs=20, model_ema=True),
}


# The released variants, and a tiny one for tests.
ARCH_SETTINGS = {
    'tiny': dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24)),
    'small': dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24)),
    'test': dict(embed_dim=16, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8)),
}


@register_model
def swin_tiny_vsa_patch4_window7_224(pretrained: bool = False, **kwargs) -> SwinTransformerVSA:
    """Swin-T+VSA (28.78 M parameters)."""
    return _create_swin_vsa('swin_tiny_vsa_patch4_window7_224', pretrained, **dict(ARCH_SETTINGS['tiny'], **kwargs))


@register_model
def swin_small_vsa_patch4_window7_224(pretrained: bool = False, **kwargs) -> SwinTransformerVSA:
    """Swin-S+VSA (50.55 M parameters)."""
    return _create_swin_vsa('swin_small_vsa_patch4_window7_224', pretrained, **dict(ARCH_SETTINGS['small'], **kwargs))


@register_model
def swin_vsa_test(pretrained: bool = False, **kwargs) -> SwinTransformerVSA:
    """A tiny Swin+VSA for tests and CPU demos; not a paper model."""
    return _create_swin_vsa('swin_vsa_test', pretrained, **dict(ARCH_SETTINGS['test'], **kwargs))


FAMILY = register_family(ModelFamily(
    name='swin_vsa',
    title='Swin+VSA',
    model_cls=SwinTransformerVSA,
    arch_settings=ARCH_SETTINGS,
    model_names={'tiny': 'swin_tiny_vsa_patch4_window7_224', 'small': 'swin_small_vsa_patch4_window7_224',
                 'test': 'swin_vsa_test'},
    checkpoint_filter=checkpoint_filter_fn,
    backbone_name='SwinVSABackbone',
    default_arch='tiny',
    norm_eps=LN_EPS,
    train_recipes=TRAIN_RECIPES,
    description='Swin Transformer with varied-size window attention (VSA, ECCV 2022)',
))
