"""The family contract: what every model family of the package declares, and the list the rest of the code reads.

A family is one model file (`scalable_vit.py`, `swin_vsa.py`, ...) that ends with

    FAMILY = register_family(ModelFamily(name='scalable_vit', title='ScalableViT', model_cls=ScalableViT, ...))

after its timm entry points. `FAMILIES` then lists it for the generic code: the OpenMMLab backbones
(`scalablevit.openmmlab` builds and registers `<backbone_name>` for each family), `classification/main.py` (the
training-recipe defaults under explicit flags), the FLOP counts (`flops.py`, `paper.py`), the tools
(`get_flops.py`, `export_onnx.py`) and the shared test suite (`tests/test_families.py`, run on each family's `test`
variant). Nothing outside the family file names a family. `docs/adding_a_family.md` says what a new family must
provide and pass.
"""
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional

import torch.nn as nn

__all__ = ['FAMILIES', 'ModelFamily', 'family_of', 'on_family_registered', 'register_family', 'train_recipe']


@dataclass(frozen=True)
class ModelFamily:
    """What one model family declares.

    Args:
        name: The family's short name (its module's name, e.g. 'scalable_vit').
        title: The name in messages and tables (e.g. 'ScalableViT').
        model_cls: The model class: timm's full model API (`forward_features`, `forward_head`,
            `forward_intermediates` in NCHW and NHWC, `prune_intermediate_layers`, `feature_info`,
            `reset_classifier` keeping device and dtype, `set_grad_checkpointing`, `set_fused_attn`,
            `no_weight_decay`, `group_matcher` with one coarse group per stage, `device`/`dtype` factory
            arguments).
        arch_settings: Variant name -> architecture arguments of `model_cls`; 'test' is the tiny variant that
            tests and CPU demos use.
        model_names: Variant name -> the timm model registered for it (every variant of `arch_settings`).
        checkpoint_filter: `checkpoint_filter_fn(state_dict, model)`: the family's checkpoints by the package's
            checkpoint policy (`scalablevit.checkpoint`).
        backbone_name: The OpenMMLab registry name of its dense backbone (`type=` in configs).
        default_arch: The backbone's variant when a config names none.
        norm_eps: Epsilon of the LayerNorms the dense backbone adds on its outputs (the family's own).
        train_recipes: timm model name -> the training-recipe defaults that differ from DeiT's, as
            `classification/main.py` argument names (`drop_path`, `warmup_epochs`, `model_ema`,
            `weight_decay`, ...); input size, crop and interpolation come from the model's `pretrained_cfg`.
        onnx_dynamic_sizes: Whether one exported ONNX graph serves every input size (False: export at the size
            it will run at).
        description: One line for the backbone's docstring and the tools' tables.
    """
    name: str
    title: str
    model_cls: type
    arch_settings: Mapping[str, Mapping[str, Any]]
    model_names: Mapping[str, str]
    checkpoint_filter: Callable[[Dict[str, Any], nn.Module], Dict[str, Any]]
    backbone_name: str
    default_arch: str
    norm_eps: float
    train_recipes: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    onnx_dynamic_sizes: bool = True
    description: str = ''

    def __post_init__(self):
        if 'test' not in self.arch_settings:
            raise ValueError(f"family {self.name}: arch_settings needs a tiny 'test' variant (tests, CPU demos)")
        if set(self.model_names) != set(self.arch_settings):
            raise ValueError(f'family {self.name}: model_names {sorted(self.model_names)} must name a timm model '
                             f'for every variant of arch_settings {sorted(self.arch_settings)}')
        if self.default_arch not in self.arch_settings:
            raise ValueError(f'family {self.name}: default_arch {self.default_arch!r} is not one of its variants '
                             f'{sorted(self.arch_settings)}')
        unknown = set(self.train_recipes) - set(self.models())
        if unknown:
            raise ValueError(f'family {self.name}: train_recipes name models it does not register: {sorted(unknown)}')

    @property
    def test_model(self) -> str:
        """The timm name of the tiny 'test' variant."""
        return self.model_names['test']

    def models(self) -> List[str]:
        """Every timm model this family registers (its variants and any extensions)."""
        import timm
        module_name = self.model_cls.__module__
        return [name for name in timm.list_models(module=module_name.split('.')[-1])
                if timm.models.model_entrypoint(name).__module__ == module_name]


FAMILIES: List[ModelFamily] = []
_listeners: List[Callable[[ModelFamily], None]] = []


def register_family(family: ModelFamily) -> ModelFamily:
    """Add a family to `FAMILIES` (and to every registry that listens: the OpenMMLab backbones)."""
    if any(f.name == family.name for f in FAMILIES):
        raise ValueError(f'a model family named {family.name!r} is registered already')
    FAMILIES.append(family)
    for listener in _listeners:
        listener(family)
    return family


def on_family_registered(listener: Callable[[ModelFamily], None]) -> None:
    """Call `listener` for every registered family, now and whenever one is registered later."""
    _listeners.append(listener)
    for family in FAMILIES:
        listener(family)


def family_of(model_name: str) -> Optional[ModelFamily]:
    """The family of a timm model name (with or without a `.tag`), None for models of other code (timm's own)."""
    import timm
    name = model_name.split('.')[0]
    if not timm.is_model(name):
        return None
    module = sys.modules.get(timm.models.model_entrypoint(name).__module__)
    family = getattr(module, 'FAMILY', None)
    return family if isinstance(family, ModelFamily) else None


def train_recipe(model_name: str) -> Dict[str, Any]:
    """The training-recipe defaults of a model that differ from DeiT's ({} for models of no family)."""
    family = family_of(model_name)
    return dict(family.train_recipes.get(model_name.split('.')[0], {})) if family else {}
