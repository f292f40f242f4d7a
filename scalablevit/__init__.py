"""ScalableViT: the model, registered in timm on import (`timm.create_model('scalable_vit_small')`)."""
from .scalable_vit import ScalableViT, checkpoint_filter_fn

__version__ = '0.1.0'
__all__ = ['ScalableViT', 'checkpoint_filter_fn', '__version__']
