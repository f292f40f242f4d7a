"""A throw-away fifth model family, registered by the contract alone (`scalablevit.family`): a tiny ConvNeXt-like
network. Importing this module (tests/conftest.py does) adds it to `scalablevit.FAMILIES`, so the shared suite
(tests/test_families.py), the OpenMMLab registration and classification/main.py pick it up with no edits
elsewhere; tests/test_families.py::test_a_fifth_family_is_picked_up_everywhere shows it."""
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, LayerNorm2d, calculate_drop_path_rates, get_device_dtype, trunc_normal_
from timm.models import build_model_with_cfg, checkpoint, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices

from scalablevit.checkpoint import filter_for_model, read_pretrained_file
from scalablevit.family import ModelFamily, register_family

LN_EPS = 1e-6


class ToyBlock(nn.Module):
    """x + drop_path(MLP(LN(dw7x7(x)))) on a (B, C, H, W) map."""

    def __init__(self, dim: int, drop_path: float = 0., proj_drop: float = 0., device=None, dtype=None):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim, **dd)
        self.norm = LayerNorm2d(dim, eps=LN_EPS, **dd)
        self.mlp = nn.Sequential(nn.Conv2d(dim, 2 * dim, 1, **dd), nn.GELU(), nn.Dropout(proj_drop),
                                 nn.Conv2d(2 * dim, dim, 1, **dd))
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.mlp(self.norm(self.conv(x))))


class ToyStage(nn.Module):
    def __init__(self, in_dim: int, dim: int, depth: int, stride: int, drop_path: Sequence[float], proj_drop: float,
                 device=None, dtype=None):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.grad_checkpointing = False
        self.stride = stride
        self.downsample = nn.Sequential(nn.Conv2d(in_dim, dim, stride, stride=stride, **dd),
                                        LayerNorm2d(dim, eps=LN_EPS, **dd))
        self.blocks = nn.ModuleList([ToyBlock(dim, drop_path[i], proj_drop, **dd) for i in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stride
        x = self.downsample(nn.functional.pad(x, (0, (-x.shape[-1]) % s, 0, (-x.shape[-2]) % s)))  # side -> ⌈side/s⌉
        for block in self.blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(block, x)
            else:
                x = block(x)
        return x


class ToyNet(nn.Module):
    """Stages of strided-conv downsampling and depth-wise conv blocks; any input size (each stage pads to its
    stride)."""

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            embed_dims: Sequence[int] = (16, 32, 64, 128),
            depths: Sequence[int] = (1, 1, 1, 1),
            drop_rate: float = 0.,
            pos_drop_rate: float = 0.,
            proj_drop_rate: float = 0.,
            attn_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            device=None,
            dtype=None,
    ):
        """attn_drop_rate: accepted for the contract's uniform arguments; the family has no attention."""
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        assert global_pool in ('', 'avg')
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.embed_dims = tuple(embed_dims)
        self.num_features = self.head_hidden_size = embed_dims[-1]
        self.pos_drop = nn.Dropout(pos_drop_rate)
        dpr = calculate_drop_path_rates(drop_path_rate, list(depths), stagewise=True)
        self.stages = nn.ModuleList()
        self.feature_info = []
        prev = in_chans
        for i, (dim, depth) in enumerate(zip(embed_dims, depths)):
            self.stages.append(ToyStage(prev, dim, depth, 4 if i == 0 else 2, dpr[i], proj_drop_rate, **dd))
            self.feature_info.append(dict(num_chs=dim, reduction=4 * 2 ** i, module=f'stages.{i}'))
            prev = dim
        self.norm = nn.LayerNorm(self.num_features, eps=LN_EPS, **dd)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            trunc_normal_(m.weight, std=.02)
            nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return set()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict:
        return dict(stem=r'^stages\.0\.downsample', blocks=r'^stages\.(\d+)' if coarse else [
            (r'^stages\.(\d+)\.downsample', (0,)), (r'^stages\.(\d+)\.blocks\.(\d+)', None), (r'^norm', (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def set_fused_attn(self, enable: bool = True) -> None:
        """No attention: nothing to switch."""

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        if global_pool is not None:
            self.global_pool = global_pool
        self.num_classes = num_classes
        dd = get_device_dtype(self)
        self.head = nn.Linear(self.num_features, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self._init_weights(self.head)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        assert output_fmt in ('NCHW', 'NHWC')
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        last_index = max_index if stop_early else len(self.stages) - 1
        x = self.pos_drop(x)
        intermediates = []
        for i, stage in enumerate(self.stages):
            if i <= last_index:
                x = stage(x)
                if i in take_indices:
                    feat = x.permute(0, 2, 3, 1)
                    if norm and i == len(self.stages) - 1:
                        feat = self.norm(feat)
                    intermediates.append(feat if output_fmt == 'NHWC' else feat.permute(0, 3, 1, 2))
        if intermediates_only:
            return intermediates
        return self.norm(x.permute(0, 2, 3, 1)), intermediates

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        prune_end = max_index < len(self.stages) - 1
        self.stages = self.stages[:max_index + 1]
        if prune_end:
            self.num_features = self.head_hidden_size = self.embed_dims[max_index]
        if prune_norm or prune_end:
            self.norm = nn.Identity()
        if prune_head or prune_end:
            self.reset_classifier(0, '')
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Normed last-stage map (B, H/32, W/32, C)."""
        x = self.pos_drop(x)
        for stage in self.stages:
            x = stage(x)
        return self.norm(x.permute(0, 2, 3, 1))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == 'avg':
            x = x.mean(dim=(1, 2))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: ToyNet) -> Dict[str, torch.Tensor]:
    return filter_for_model(state_dict, model, model_name='ToyNet')


def _create_toy_net(variant: str, pretrained: bool = False, **kwargs) -> ToyNet:
    out_indices = kwargs.pop('out_indices', 4)
    kwargs = read_pretrained_file(pretrained, kwargs)  # a local file by the checkpoint policy
    return build_model_with_cfg(ToyNet, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
                                feature_cfg=dict(out_indices=out_indices, feature_cls='getter'), **kwargs)


default_cfgs = generate_default_cfgs({
    'toy_net_test.untrained': {
        'url': '', 'num_classes': 1000, 'input_size': (3, 64, 64), 'pool_size': None, 'crop_pct': 0.95,
        'interpolation': 'bilinear', 'fixed_input_size': False, 'mean': IMAGENET_DEFAULT_MEAN,
        'std': IMAGENET_DEFAULT_STD, 'first_conv': 'stages.0.downsample.0', 'classifier': 'head',
        'license': 'apache-2.0'},
})

TRAIN_RECIPES = {'toy_net_test': dict(drop_path=0.05, warmup_epochs=1)}
ARCH_SETTINGS = {'test': dict(embed_dims=(16, 32, 64, 128), depths=(1, 1, 1, 1))}


@register_model
def toy_net_test(pretrained: bool = False, **kwargs) -> ToyNet:
    return _create_toy_net('toy_net_test', pretrained, **dict(ARCH_SETTINGS['test'], **kwargs))


FAMILY = register_family(ModelFamily(
    name='toy_family',
    title='ToyNet',
    model_cls=ToyNet,
    arch_settings=ARCH_SETTINGS,
    model_names={'test': 'toy_net_test'},
    checkpoint_filter=checkpoint_filter_fn,
    backbone_name='ToyNetBackbone',
    default_arch='test',
    norm_eps=LN_EPS,
    train_recipes=TRAIN_RECIPES,
    description='a throw-away test family',
))
