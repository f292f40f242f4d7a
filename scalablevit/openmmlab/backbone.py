"""The models of this package as MMDetection / MMSegmentation backbones: one generic mixin, and one backbone class
per registered model family (`scalablevit.FAMILIES`), built from the family contract by `backbone_class`:

    class ScalableViTBackbone(DenseBackboneMixin, ScalableViT)   # family.backbone_name, family.model_cls
        arch_settings = family.arch_settings; default_arch = family.default_arch; norm_eps = family.norm_eps
        checkpoint_filter = family.checkpoint_filter

The registered names (`type=` in a config), their model classes and `arch` variants (the default first):

    ScalableViTBackbone   scalablevit.scalable_vit.ScalableViT      'small', 'base', 'large', 'test'
    SwinVSABackbone       scalablevit.swin_vsa.SwinTransformerVSA   'tiny', 'small', 'test'
    ViTAEv2VSABackbone    scalablevit.vitae_vsa.ViTAEv2VSA          's', '48m', 'test'
    ScopeViTBackbone      scalablevit.scope_vit.ScopeViT            'tiny', 'xtiny', 'small', 'test'

Each is a module attribute, assigned at the end of this file. A family registered later
(`scalablevit.register_family`) gets its backbone made and registered then, and listed in `BACKBONES`. The model
class needs the timm API the mixin relies on: `feature_info`, `forward_intermediates`, `prune_intermediate_layers`,
`set_grad_checkpointing` and a coarse `group_matcher` (stem, then one group per stage). Parameter names stay those
of the classifier (`patch_embeds.*`, `stages.*`, ...), so ImageNet checkpoints load as they are; the mixin adds
only `out_norms.*`.
"""
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Type, Union

import torch
import torch.nn as nn
from mmengine.logging import print_log
from timm.models import group_parameters

from ..checkpoint import load_state_dict
from ..family import ModelFamily, on_family_registered

__all__ = ['BACKBONES', 'DenseBackboneMixin', 'ScalableViTBackbone', 'ScopeViTBackbone', 'SwinVSABackbone',
           'ViTAEv2VSABackbone', 'backbone_class', 'register_backbone']


class DenseBackboneMixin:
    """Multi-scale NCHW features for dense prediction, for any model of this package.

    Args:
        arch: A name in the class's `arch_settings` (default: the family's `default_arch`), or a dict of the
            model's architecture arguments.
        out_indices: Stages whose maps are returned; stages after the last one are not built.
        frozen_stages: The stem and stages 0..frozen_stages are frozen (weights fixed, eval mode); -1
            freezes none.
        norm_outputs: A LayerNorm over channels on each returned map (`out_norms.<stage>`), as in
            MMDetection's Swin; False returns the stage maps as the model makes them.
        with_cp: Gradient checkpointing of every block (less memory, more compute).
        norm_eval: Keep every BatchNorm in eval mode while training (statistics frozen at their loaded
            values, affine parameters still trained), as MMDetection's ResNets do; for families with
            BatchNorm (ScopeViT), where 2 images per GPU give noisy batch statistics.
        init_cfg: `dict(type='Pretrained', checkpoint=PATH[, prefix='backbone.'][, use_ema=None])` loads
            ImageNet (or detector) weights by the package's checkpoint policy (`scalablevit.checkpoint`:
            EMA weights when present unless `use_ema=False`); the classifier, the classification norm and
            pruned stages are left out, and what was missing or unused is logged.
        **kwargs: Further model arguments (e.g. `drop_path_rate`, `window_size`).
    """
    arch_settings: Dict[str, Dict] = {}
    default_arch: str = ''
    norm_eps: float = 1e-6
    checkpoint_filter: Callable = None

    def __init__(
            self,
            arch: Union[str, Dict, None] = None,
            out_indices: Sequence[int] = (0, 1, 2, 3),
            frozen_stages: int = -1,
            norm_outputs: bool = True,
            with_cp: bool = False,
            norm_eval: bool = False,
            init_cfg: Optional[Dict] = None,
            **kwargs,
    ):
        if arch is None:
            arch = self.default_arch
        if isinstance(arch, str):
            if arch not in self.arch_settings:
                raise ValueError(f'arch must be one of {sorted(self.arch_settings)} or a dict, got {arch!r}')
            arch = self.arch_settings[arch]
        super().__init__(num_classes=0, **dict(arch, **kwargs))
        num_stages = len(self.feature_info)
        self.out_indices = tuple(sorted({i % num_stages for i in out_indices}))
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.init_cfg = init_cfg
        # stage widths, read before pruning changes nothing about them
        widths = [info['num_chs'] for info in self.feature_info]
        self.prune_intermediate_layers(list(self.out_indices), prune_norm=True)
        self.out_norms = nn.ModuleList([
            nn.LayerNorm(widths[i], eps=self.norm_eps) if norm_outputs and i in self.out_indices else nn.Identity()
            for i in range(max(self.out_indices) + 1)
        ])
        self.set_grad_checkpointing(with_cp)
        self._frozen_names = self._frozen_parameter_names()
        self._freeze_stages()

    def _frozen_parameter_names(self) -> List[str]:
        """Parameters of the stem and of stages 0..frozen_stages (coarse groups 0..frozen_stages + 1)."""
        if self.frozen_stages < 0:
            return []
        groups = group_parameters(self, self.group_matcher(coarse=True))
        return [name for group_id in range(self.frozen_stages + 2) for name in groups.get(group_id, [])
                if not name.startswith('out_norms.')]

    def _freeze_stages(self) -> None:
        frozen = set(self._frozen_names)
        if not frozen:
            return
        for name, param in self.named_parameters():
            if name in frozen:
                param.requires_grad = False
        # eval mode (dropout, drop path, norm statistics) for every module whose parameters are all frozen
        for _, module in self.named_modules():
            params = list(module.parameters())
            if params and all(not p.requires_grad for p in params):
                module.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def init_weights(self) -> None:
        if not self.init_cfg or self.init_cfg.get('type') != 'Pretrained':
            return  # the model's constructor already applied its own initialisation
        path = self.init_cfg['checkpoint']
        state_dict = load_state_dict(path, use_ema=self.init_cfg.get('use_ema'), prefix=self.init_cfg.get('prefix'))
        state_dict = type(self).checkpoint_filter(state_dict, self)  # raises on tensors of another shape
        own_keys = set(self.state_dict())
        used = {k: v for k, v in state_dict.items() if k in own_keys}
        if not used:
            raise ValueError(f'checkpoint {path} has none of the tensors of {type(self).__name__} (its keys '
                             f'start {sorted(state_dict)[:3]}): is it a checkpoint of this model family?')
        result = self.load_state_dict(used, strict=False)
        print_log(f'{type(self).__name__}: loaded {len(used)} tensors from {path}; missing (newly initialised): '
                  f'{result.missing_keys or "none"}; not used: {len(state_dict) - len(used)} (classifier, '
                  f'classification norm, pruned stages)', logger='current')

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        features = self.forward_intermediates(x, indices=list(self.out_indices), stop_early=True,
                                              intermediates_only=True)
        outs = []
        for i, feat in zip(self.out_indices, features):
            if isinstance(self.out_norms[i], nn.LayerNorm):
                # LayerNorm over channels: B, C, H, W -> B, H, W, C -> B, C, H, W
                feat = self.out_norms[i](feat.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).contiguous()
            outs.append(feat)
        return tuple(outs)


def register_backbone(cls: Type[nn.Module]) -> Type[nn.Module]:
    """Register a backbone class in the model registry of each installed framework (MMDetection,
    MMSegmentation), so configs reach it by `type=` name after `custom_imports`."""
    for registry_module in ('mmdet.registry', 'mmseg.registry'):
        try:
            registry = __import__(registry_module, fromlist=['MODELS']).MODELS
        except ImportError:
            continue
        registry.register_module(module=cls, force=True)
    return cls


def backbone_class(family: ModelFamily) -> Type[nn.Module]:
    """The dense backbone of a family: `DenseBackboneMixin` over its model class, configured by its contract."""
    variants = ', '.join(repr(v) for v in family.arch_settings)
    return type(family.backbone_name, (DenseBackboneMixin, family.model_cls), dict(
        __module__=__name__,
        __doc__=f'{family.description or family.title} at strides 4, 8, 16, 32 (`feature_info`); `arch` is one of '
                f'{variants} (default {family.default_arch!r}). See `DenseBackboneMixin` for the arguments.',
        arch_settings=dict(family.arch_settings),
        default_arch=family.default_arch,
        norm_eps=family.norm_eps,
        checkpoint_filter=staticmethod(family.checkpoint_filter),
    ))


BACKBONES: Dict[str, Type[nn.Module]] = {}  # backbone name -> class, one per registered family


def _register_family_backbone(family: ModelFamily) -> None:
    BACKBONES[family.backbone_name] = register_backbone(backbone_class(family))


on_family_registered(_register_family_backbone)

# The backbones of the package's own families (registered when `scalablevit` was imported, so made just above),
# by the names configs use; tests/test_openmmlab.py checks that every package family is listed here.
ScalableViTBackbone = BACKBONES['ScalableViTBackbone']  # scalablevit.scalable_vit.FAMILY
SwinVSABackbone = BACKBONES['SwinVSABackbone']  # scalablevit.swin_vsa.FAMILY
ViTAEv2VSABackbone = BACKBONES['ViTAEv2VSABackbone']  # scalablevit.vitae_vsa.FAMILY
ScopeViTBackbone = BACKBONES['ScopeViTBackbone']  # scalablevit.scope_vit.FAMILY
