"""ScalableViT as an MMDetection / MMSegmentation backbone.

Configs bring it in with
    custom_imports = dict(imports=['scalablevit.openmmlab'], allow_failed_imports=False)
    model = dict(backbone=dict(type='ScalableViTBackbone', arch='small', ...))
Importing this module registers the backbone in the model registry of each installed framework and lets
mmengine read its own checkpoints under PyTorch's `torch.load(weights_only=True)` default.
"""
import argparse
import codecs
import copyreg
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
from mmengine.logging import HistoryBuffer, print_log

from .checkpoint import load_checkpoint_file
from .scalable_vit import ARCH_SETTINGS, LN_EPS, ScalableViT, checkpoint_filter_fn


class ScalableViTBackbone(ScalableViT):
    """Multi-scale NCHW features (strides 4, 8, 16, 32), each through its own LayerNorm.

    Args:
        arch: 'small', 'base', 'large', or a dict of `ScalableViT` architecture arguments.
        out_indices: Stages whose maps are returned; stages after the last one are not built.
        frozen_stages: Stages 0..frozen_stages are frozen (weights fixed, eval mode); -1 freezes none.
        drop_path_rate: Stochastic depth rate of the last block.
        with_cp: Gradient checkpointing of every block (less memory, more compute).
        init_cfg: `dict(type='Pretrained', checkpoint=PATH[, prefix='backbone.'])` loads ImageNet weights
            (ours, or the released `{'model': ...}` format); the classifier and the classification norm are
            dropped and what was missing or unexpected is logged.
        **kwargs: Further `ScalableViT` arguments (e.g. `window_size`, `attn_drop_rate`).

    Parameter names are those of the classifier (`patch_embeds.*`, `stages.*`, ...), plus `out_norms.*`.
    """

    def __init__(
            self,
            arch: Union[str, Dict] = 'small',
            out_indices: Sequence[int] = (0, 1, 2, 3),
            frozen_stages: int = -1,
            drop_path_rate: float = 0.2,
            with_cp: bool = False,
            init_cfg: Optional[Dict] = None,
            **kwargs,
    ):
        if isinstance(arch, str):
            if arch not in ARCH_SETTINGS:
                raise ValueError(f'arch must be one of {sorted(ARCH_SETTINGS)} or a dict, got {arch!r}')
            arch = ARCH_SETTINGS[arch]
        super().__init__(num_classes=0, drop_path_rate=drop_path_rate, **dict(arch, **kwargs))
        num_stages = len(self.depths)
        self.out_indices = tuple(i % num_stages for i in out_indices)
        self.frozen_stages = frozen_stages
        self.init_cfg = init_cfg
        self.prune_intermediate_layers(list(self.out_indices), prune_norm=True)
        self.out_norms = nn.ModuleList([
            nn.LayerNorm(self.embed_dims[i], eps=LN_EPS) if i in self.out_indices else nn.Identity()
            for i in range(max(self.out_indices) + 1)
        ])
        self.set_grad_checkpointing(with_cp)
        self._freeze_stages()

    def _freeze_stages(self) -> None:
        for i in range(min(self.frozen_stages + 1, len(self.stages))):
            for module in (self.patch_embeds[i], self.pos_drops[i], self.stages[i], self.pos_block[i]):
                module.eval()
                for param in module.parameters():
                    param.requires_grad = False

    def train(self, mode: bool = True) -> 'ScalableViTBackbone':
        super().train(mode)
        self._freeze_stages()
        return self

    def init_weights(self) -> None:
        if not self.init_cfg or self.init_cfg.get('type') != 'Pretrained':
            return  # ScalableViT.__init__ already applied the released initialisation
        path = self.init_cfg['checkpoint']
        checkpoint = load_checkpoint_file(path)
        prefix = self.init_cfg.get('prefix')
        if prefix:
            weights = checkpoint.get('state_dict', checkpoint.get('model', checkpoint))
            checkpoint = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
        state_dict = checkpoint_filter_fn(checkpoint, self)
        own_keys = set(self.state_dict())
        dropped = [k for k in state_dict if k.startswith('norm.') or (k not in own_keys and k.startswith(
            ('patch_embeds.', 'pos_drops.', 'pos_block.', 'stages.')))]  # classification norm, pruned stages
        state_dict = {k: v for k, v in state_dict.items() if k not in dropped}
        result = self.load_state_dict(state_dict, strict=False)
        print_log(f'ScalableViTBackbone: loaded {len(state_dict)} tensors from {path}; missing (newly '
                  f'initialised): {result.missing_keys or "none"}; unexpected: {result.unexpected_keys or "none"}; '
                  f'not used: {len(dropped)} (classification norm / pruned stages)', logger='current')

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        features = self.forward_intermediates(x, indices=list(self.out_indices), stop_early=True,
                                              intermediates_only=True)
        outs = []
        for i, feat in zip(self.out_indices, features):
            # LayerNorm over channels: B, C, H, W -> B, H, W, C -> B, C, H, W
            outs.append(self.out_norms[i](feat.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).contiguous())
        return tuple(outs)


def _reduce_history_buffer(buffer: HistoryBuffer) -> tuple:
    """Pickle a HistoryBuffer as its data; its statistics methods come back from the class."""
    return HistoryBuffer, (buffer._log_history, buffer._count_history, buffer.max_length)


def _allow_mmengine_checkpoints() -> None:
    """Make mmengine checkpoints loadable under PyTorch's `torch.load(weights_only=True)` default.

    mmengine 0.10 calls a bare `torch.load`, and its checkpoints hold the message hub: HistoryBuffers whose
    pickled form includes bound methods (reached through `getattr`, which must never be allowlisted: with
    it a checkpoint can call any function). Checkpoints written after this import pickle HistoryBuffers as
    plain arrays instead, and exactly the types those need are allowlisted.
    """
    copyreg.pickle(HistoryBuffer, _reduce_history_buffer)
    multiarray = np._core.multiarray if hasattr(np, '_core') else np.core.multiarray
    allowed = [HistoryBuffer, argparse.Namespace, np.ndarray, np.dtype, multiarray._reconstruct, multiarray.scalar,
               codecs.encode]
    allowed += [type(np.dtype(t)) for t in (np.float16, np.float32, np.float64, np.int8, np.int16, np.int32,
                                              np.int64, np.uint8, np.bool_)]
    torch.serialization.add_safe_globals(allowed)


def _register() -> None:
    try:
        from mmdet.registry import MODELS as MMDET_MODELS
        MMDET_MODELS.register_module(module=ScalableViTBackbone, force=True)
    except ImportError:
        pass
    try:
        from mmseg.registry import MODELS as MMSEG_MODELS
        MMSEG_MODELS.register_module(module=ScalableViTBackbone, force=True)
    except ImportError:
        pass


_allow_mmengine_checkpoints()
_register()
