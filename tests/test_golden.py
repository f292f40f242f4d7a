"""The released checkpoints' names/shapes load strictly, and the released function is reproduced."""
import pytest
import timm
import torch

from helpers import (
    ATTENTION_PATHS,
    VARIANTS,
    golden_input,
    golden_outputs,
    golden_state_dict,
    read_state_dict_spec,
    relative_error,
    select_attention_path,
)

MAX_RELATIVE_ERROR = 1e-5


@pytest.mark.parametrize('variant', VARIANTS)
def test_parameter_names_and_shapes_match_release(variant):
    model = timm.create_model(f'scalable_vit_{variant}')
    expected = [(key, shape) for key, shape, _ in read_state_dict_spec(variant)]
    actual = [(key, tuple(t.shape)) for key, t in model.state_dict().items()]
    assert actual == expected
    assert sum(p.numel() for p in model.parameters()) == golden_outputs(variant)['params']


# ScalableViT-S in the fast tier; B and L (the same code at other widths, ~15 s) in the slow one
@pytest.mark.parametrize('variant', [v if v == 'small' else pytest.param(v, marks=pytest.mark.slow) for v in VARIANTS])
def test_golden_logits_and_features(monkeypatch, variant):
    model = timm.create_model(f'scalable_vit_{variant}').eval()
    model.load_state_dict(golden_state_dict(variant), strict=True)
    ref = golden_outputs(variant)
    ref_logits, ref_pooled = torch.tensor(ref['logits']), torch.tensor(ref['pooled_features'])
    x = golden_input()
    for path in ATTENTION_PATHS:
        with monkeypatch.context() as patch:
            model.set_fused_attn(select_attention_path(patch, path))
            with torch.no_grad():
                pooled = model.forward_head(model.forward_features(x), pre_logits=True)
                logits = model(x)
        assert relative_error(pooled, ref_pooled) <= MAX_RELATIVE_ERROR, path
        assert relative_error(logits, ref_logits) <= MAX_RELATIVE_ERROR, path
