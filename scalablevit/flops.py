"""Parameters and FLOPs of a classifier (a timm model name), detector or segmenter (an OpenMMLab config), in the
paper's conventions: `count`. `tools/get_flops.py` is its command line (and writes the model zoo table); the
benchmarks and tests call it here.

FLOPs are counted by `mmengine.analysis` (fvcore's counter: one multiply-add counts as one FLOP, as in the
paper) with attention on its explicit path, so its matrix products are counted too; the count without them,
the convention of the paper's detection and segmentation tables, is given beside it.
"""
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn

__all__ = ['DEFAULT_SHAPE', 'build', 'count', 'default_shape', 'task_of']

DEFAULT_SHAPE = {'classification': (224, 224), 'detection': (800, 1280), 'segmentation': (512, 2048)}


class TensorForward(nn.Module):
    """Wrap an OpenMMLab model so that tracing sees `model._forward(images, data_samples)`."""

    def __init__(self, model: nn.Module, data_samples: list):
        super().__init__()
        self.model = model
        self.data_samples = data_samples

    def forward(self, images: torch.Tensor):
        return self.model._forward(images, self.data_samples)


def task_of(target: str) -> str:
    if not target.endswith('.py'):
        return 'classification'
    from mmengine.config import Config
    scope = Config.fromfile(target).get('default_scope', 'mmdet')
    return 'detection' if scope == 'mmdet' else 'segmentation'


def build(target: str, shape: Tuple[int, int]) -> Tuple[nn.Module, nn.Module, torch.Tensor]:
    """(model whose parameters are counted, module to trace, input)."""
    images = torch.randn(1, 3, *shape)
    task = task_of(target)
    if task == 'classification':
        import timm

        import scalablevit  # noqa: F401  (registers the models)
        model = timm.create_model(target).eval()
        return model, model, images

    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    cfg = Config.fromfile(target)
    cfg.model.backbone.init_cfg = None  # counting needs no weights
    init_default_scope(cfg.get('default_scope'))
    if task == 'detection':
        from mmdet.registry import MODELS
        from mmdet.structures import DetDataSample
    else:
        from mmseg.registry import MODELS
        from mmseg.structures import SegDataSample as DetDataSample
    model = MODELS.build(cfg.model).eval()
    meta = dict(img_shape=shape, ori_shape=shape, pad_shape=shape, batch_input_shape=shape, scale_factor=(1., 1.))
    return model, TensorForward(model, [DetDataSample(metainfo=meta)]), images


def default_shape(target: str) -> Tuple[int, int]:
    """Classifiers: their pretrained config's input size (224 or 256); dense models: the paper's sizes."""
    task = task_of(target)
    if task != 'classification':
        return DEFAULT_SHAPE[task]
    import timm

    import scalablevit  # noqa: F401  (registers the models)
    return tuple(timm.models.get_pretrained_cfg(target).input_size[1:])


def count(target: str, shape: Optional[Tuple[int, int]] = None) -> Dict[str, float]:
    """Millions of parameters and GFLOPs (multiply-adds) of one model: `flops` counts everything,
    `flops_no_attn` leaves out attention's two matrix products (q·kᵀ and attn·v), as the paper's numbers do.

    Attention runs its explicit path, where those products are the model's only `aten::matmul` calls (every
    Linear is `aten::linear`), so leaving them out is switching off the matmul handle."""
    from mmengine.analysis import FlopAnalyzer
    shape = tuple(shape or default_shape(target))
    model, traced, images = build(target, shape)
    result = dict(params=sum(p.numel() for p in model.parameters()) / 1e6, shape=shape)
    for module in model.modules():
        if hasattr(module, 'set_fused_attn'):
            module.set_fused_attn(False)
    for key, count_attention in (('flops', True), ('flops_no_attn', False)):
        analyzer = FlopAnalyzer(traced, (images,))
        if not count_attention:
            analyzer.set_op_handle('aten::matmul', lambda inputs, outputs: 0)  # a None handle is not honoured
        analyzer.unsupported_ops_warnings(False)
        analyzer.uncalled_modules_warnings(False)
        with torch.no_grad():
            result[key] = analyzer.total() / 1e9
    return result
