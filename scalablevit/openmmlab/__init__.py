"""The OpenMMLab layer: this package's models as MMDetection / MMSegmentation backbones, and the drivers
behind `detection/` and `segmentation/`.

Configs bring it in with
    custom_imports = dict(imports=['scalablevit.openmmlab'], allow_failed_imports=False)
    model = dict(backbone=dict(type='ScalableViTBackbone', arch='small', ...))  # or 'SwinVSABackbone', 'tiny'
Importing it registers the backbones in each installed framework's model registry, lets mmengine read its own
checkpoints under PyTorch's `torch.load(weights_only=True)` default and lets `--launcher pytorch` run on CPU.
`import scalablevit` alone never imports mmengine, mmdet or mmseg.
"""
try:
    import mmdet  # noqa: F401
    import mmengine  # noqa: F401
except ImportError as error:
    raise ImportError(f'scalablevit.openmmlab needs the OpenMMLab stack ({error}): run `bash setup.sh '
                      '--openmmlab` (or install requirements-openmmlab.txt and mmcv 2.1.0 with its ops)') from error

from .backbone import (
    DenseBackboneMixin, ScalableViTBackbone, ScopeViTBackbone, SwinVSABackbone, ViTAEv2VSABackbone, register_backbone,
)
from .compat import CPUDistributedDataParallel, allow_mmengine_checkpoints, prepare_cpu_distributed

__all__ = ['DenseBackboneMixin', 'ScalableViTBackbone', 'ScopeViTBackbone', 'SwinVSABackbone', 'ViTAEv2VSABackbone',
           'register_backbone',
           'CPUDistributedDataParallel', 'allow_mmengine_checkpoints', 'prepare_cpu_distributed']

allow_mmengine_checkpoints()
