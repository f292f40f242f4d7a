"""Shared helpers: the golden reference data and a tiny ScalableViT for fast tests."""
import json
from pathlib import Path
from typing import Dict

import pytest
import timm
import torch

import scalablevit  # noqa: F401  (registers the models in timm)
from scalablevit import scalable_vit

DATA_DIR = Path(__file__).parent / 'data'
VARIANTS = ('small', 'base', 'large')
# Every structural feature of the real models (SSA with sr > 1 and sr = 1, r_c above and below 1,
# IWSA + LIM, PEG, the MLP classifier) at a width that runs in milliseconds.
TINY_ARGS = dict(embed_dims=(16, 32, 64, 128), num_heads=(1, 2, 4, 8), depths=(2, 2, 2, 2),
                 channel_ratios=(2., 1.25, 0.5, 1.), classifier_hidden_dim=64)


# The attention kernels: 'fast' lets `attend` choose per call (on CPU, explicit ops for short sequences),
# 'sdpa' forces scaled_dot_product_attention everywhere, 'explicit' spells out the released operations.
ATTENTION_PATHS = ('fast', 'sdpa', 'explicit')


def select_attention_path(monkeypatch: pytest.MonkeyPatch, path: str) -> bool:
    """Make `path` the one taken; returns the `fused` flag to pass (or to give `set_fused_attn`)."""
    if path == 'sdpa':
        monkeypatch.setattr(scalable_vit, 'sdpa_is_faster', lambda q, k, v: True)
    return path != 'explicit'


def read_state_dict_spec(variant: str):
    """Rows (key, shape, is_layernorm_weight) of the released state dict, in file order."""
    lines = (DATA_DIR / f'scalable_vit_{variant}.state_dict.tsv').read_text().splitlines()[1:]
    rows = []
    for line in lines:
        key, shape, is_ln = line.split('\t')
        rows.append((key, tuple(int(s) for s in shape.split('x')), is_ln == '1'))
    return rows


def golden_state_dict(variant: str) -> Dict[str, torch.Tensor]:
    """The reference's deterministic weights: N(0, 0.02²) in float64 (+1 on LayerNorm weights), as float32."""
    g = torch.Generator().manual_seed(0)
    state_dict = {}
    for key, shape, is_ln in read_state_dict_spec(variant):
        t = torch.randn(shape, generator=g, dtype=torch.float64) * 0.02
        if is_ln:
            t += 1.0
        state_dict[key] = t.float()
    return state_dict


def golden_input() -> torch.Tensor:
    return torch.randn((2, 3, 224, 224), generator=torch.Generator().manual_seed(1))


def golden_outputs(variant: str) -> dict:
    return json.loads((DATA_DIR / f'scalable_vit_{variant}.golden.json').read_text())


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out - ref).norm() / ref.norm()).item()


def create_tiny(**kwargs) -> torch.nn.Module:
    return timm.create_model('scalable_vit_small', **dict(TINY_ARGS, **kwargs))


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return create_tiny().eval()
