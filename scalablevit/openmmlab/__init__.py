"""The OpenMMLab layer: this package's models as MMDetection / MMSegmentation backbones, and the drivers
behind `detection/` and `segmentation/`.

Configs bring it in with
    custom_imports = dict(imports=['scalablevit.openmmlab'], allow_failed_imports=False)
    model = dict(backbone=dict(type='ScalableViTBackbone', arch='small', ...))  # one backbone per model family
Importing it registers the backbones in each installed framework's model registry, and the package's hook,
CPU DDP wrapper, training loops and batch sampler in mmengine's registries, and changes nothing else. The
project's drivers (`runner.py`: detection/ and segmentation/ train.py and test.py) route mmengine's checkpoint
reads and writes through the package's checkpoint policy (atomic, with digests, loadable under PyTorch's
`torch.load(weights_only=True)` default) for their runs; a script of one's own gets the same with
`with scalablevit.openmmlab.use_checkpoint_policy(): ...`. `import scalablevit` alone never imports mmengine,
mmdet or mmseg.
"""
try:
    import mmdet  # noqa: F401
    import mmengine  # noqa: F401
except ImportError as error:
    raise ImportError(f'scalablevit.openmmlab needs the OpenMMLab stack ({error}): run `bash setup.sh '
                      '--openmmlab` (or install requirements-openmmlab.txt and mmcv 2.1.0 with its ops)') from error

from .backbone import BACKBONES, DenseBackboneMixin, backbone_class, register_backbone
from .checks import DataCheckHook
from .compat import (
    CPUDistributedDataParallel,
    allow_mmengine_checkpoints,
    prepare_cpu_distributed,
    use_checkpoint_policy,
)
from .loops import PreemptibleEpochBasedTrainLoop, PreemptibleIterBasedTrainLoop, ResumableBatchSampler

__all__ = ['BACKBONES', 'DenseBackboneMixin', 'backbone_class', 'register_backbone',
           'CPUDistributedDataParallel', 'DataCheckHook', 'allow_mmengine_checkpoints', 'prepare_cpu_distributed',
           'use_checkpoint_policy', 'PreemptibleEpochBasedTrainLoop', 'PreemptibleIterBasedTrainLoop',
           'ResumableBatchSampler']


def __getattr__(name: str):
    """The families' backbone classes by name (`ScalableViTBackbone`, `SwinVSABackbone`, ...)."""
    if name in BACKBONES:
        return BACKBONES[name]
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
