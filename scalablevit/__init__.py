"""A small model zoo around ScalableViT, registered in timm on import (`timm.create_model('scalable_vit_small')`):

* `scalable_vit`: ScalableViT (ECCV 2022), `scalable_vit_small` / `_base` / `_large`;
* `swin_vsa`: Swin Transformer with varied-size window attention (VSA, ECCV 2022),
  `swin_tiny_vsa_patch4_window7_224` / `swin_small_vsa_patch4_window7_224`;
* `vitae_vsa`: ViTAEv2* with VSA in every cell, `vitaev2_vsa_s` / `vitaev2_vsa_48m`;
* `scope_vit`: ScopeViT (Pattern Recognition 2024), `scope_vit_xtiny` / `_tiny` / `_small`;
* `layers`: the one attention entry point (`attend`) and padding-mask builder of every family; `vsa`: the VSA
  module; `checkpoint`: the one checkpoint-reading policy of every family.

The family contract (`scalablevit.family`): every family module ends with `FAMILY = register_family(...)`, which
declares its model class, `ARCH_SETTINGS` (variant -> architecture, with a tiny 'test' variant), the timm name of
each variant, `checkpoint_filter_fn`, its OpenMMLab backbone name, default variant and output-norm epsilon, and
`TRAIN_RECIPES` (the defaults that differ from DeiT's, next to its `default_cfgs`, which carry input size, crop,
interpolation, mean/std and license). `FAMILIES` lists them in import order; the OpenMMLab backbones, the
classification script, the tools and the shared test suite read it and name no family. Adding one:
docs/adding_a_family.md.
"""
# not sorted: the families register in import order, which scalablevit.FAMILIES, the model zoo and the tools keep
from .family import FAMILIES, ModelFamily, family_of, register_family, train_recipe  # noqa: I001
from .scalable_vit import ScalableViT, checkpoint_filter_fn
from .swin_vsa import SwinTransformerVSA
from .vitae_vsa import ViTAEv2VSA
from .scope_vit import ScopeViT
from .vsa import VSAttention

__version__ = '0.1.0'
__all__ = ['FAMILIES', 'ModelFamily', 'ScalableViT', 'ScopeViT', 'SwinTransformerVSA', 'VSAttention', 'ViTAEv2VSA',
           'checkpoint_filter_fn', 'family_of', 'register_family', 'train_recipe', '__version__']
