"""A small model zoo around ScalableViT, registered in timm on import (`timm.create_model('scalable_vit_small')`):

* `scalable_vit`: ScalableViT (ECCV 2022), `scalable_vit_small` / `_base` / `_large`;
* `swin_vsa`: Swin Transformer with varied-size window attention (VSA, ECCV 2022),
  `swin_tiny_vsa_patch4_window7_224` / `swin_small_vsa_patch4_window7_224`;
* `vitae_vsa`: ViTAEv2* with VSA in every cell, `vitaev2_vsa_s` / `vitaev2_vsa_48m`;
* `scope_vit`: ScopeViT (Pattern Recognition 2024), `scope_vit_xtiny` / `_tiny` / `_small`;
* `vsa`: the VSA module itself; `checkpoint`: the one checkpoint-reading policy of every family.
"""
from .scalable_vit import ScalableViT, checkpoint_filter_fn
from .scope_vit import ScopeViT
from .swin_vsa import SwinTransformerVSA
from .vitae_vsa import ViTAEv2VSA
from .vsa import VSAttention

__version__ = '0.1.0'
__all__ = ['ScalableViT', 'ScopeViT', 'SwinTransformerVSA', 'VSAttention', 'ViTAEv2VSA', 'checkpoint_filter_fn',
           '__version__']
