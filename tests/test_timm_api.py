"""The timm model API, with the checks timm's own tests/test_models.py applies to this model family."""
import math

import pytest
import timm
import timm.optim
import torch
from timm.layers import get_notrace_functions, get_notrace_modules, set_scriptable
from timm.models import FeatureInfo, group_parameters
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

from helpers import VARIANTS, assert_grad_checkpointing_keeps_gradients, create_tiny

BATCH = 2


def test_models_registered():
    assert timm.list_models('scalable_vit*') == sorted(
        [f'scalable_vit_{v}' for v in ('base', 'large', 'small', 'test')] + [f'scalable_vit_{v}_vsa' for v in VARIANTS])
    for variant in VARIANTS:
        cfg = timm.models.get_pretrained_cfg(f'scalable_vit_{variant}')
        assert cfg.input_size == (3, 224, 224) and cfg.crop_pct == 0.875 and cfg.interpolation == 'bicubic'


def test_forward_at_cfg_size_and_head_widths():
    """timm's default-cfg check for non-standard (token-output) models, on ScalableViT-S at 224."""
    model = timm.create_model('scalable_vit_small').eval()
    x = torch.randn(BATCH, *model.pretrained_cfg['input_size'])
    with torch.no_grad():
        features = model.forward_features(x)
        pre_logits = model.forward_head(features, pre_logits=True)
        logits = model(x)
        assert features.shape == (BATCH, 49, model.num_features)
        assert pre_logits.shape == (BATCH, model.head_hidden_size)
        assert logits.shape == (BATCH, 1000)

        model.reset_classifier(0)
        assert model.num_classes == 0
        pooled = model(x)
        assert pooled.shape == pre_logits.shape
        torch.testing.assert_close(pooled, pre_logits)

        headless = timm.create_model('scalable_vit_small', num_classes=0).eval()
        assert headless(x).shape == (BATCH, headless.num_features)

    state_dict = model.state_dict()
    cfg = timm.create_model('scalable_vit_small').pretrained_cfg
    assert cfg['first_conv'] + '.weight' in state_dict
    assert cfg['classifier'] + '.weight' in timm.create_model('scalable_vit_small').state_dict()


def test_backward_every_parameter_gets_gradient():
    model = timm.create_model('scalable_vit_small', num_classes=42).train()
    outputs = model(torch.randn(BATCH, 3, 128, 128))
    outputs.mean().backward()
    assert outputs.shape == (BATCH, 42)
    assert not torch.isnan(outputs).any()
    for name, param in model.named_parameters():
        assert param.grad is not None, f'no gradient for {name}'
    assert sum(p.grad.numel() for p in model.parameters()) == sum(p.numel() for p in model.parameters())


def test_features_only_matches_feature_info():
    model = timm.create_model('scalable_vit_small', features_only=True).eval()
    assert model.feature_info.channels() == [64, 128, 256, 512]
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    with torch.no_grad():
        features = model(torch.randn(BATCH, 3, 96, 96))
    assert len(features) == 4
    for channels, reduction, feat in zip(model.feature_info.channels(), model.feature_info.reduction(), features):
        assert feat.shape[:2] == (BATCH, channels)
        assert feat.shape[2] <= math.ceil(96 / reduction) + 1 and feat.shape[3] <= math.ceil(96 / reduction) + 1
        assert not torch.isnan(feat).any()

    subset = timm.create_model('scalable_vit_small', features_only=True, out_indices=(1, 3))
    assert subset.feature_info.channels() == [128, 512]
    assert len(subset.model.stages) == 4


def test_features_only_prunes_unused_stages():
    model = timm.create_model('scalable_vit_small', features_only=True, out_indices=(0, 1)).eval()
    assert len(model.model.stages) == 2 and isinstance(model.model.head, torch.nn.Identity)
    with torch.no_grad():
        features = model(torch.randn(1, 3, 64, 64))
    assert [f.shape[1] for f in features] == [64, 128]


def test_forward_intermediates(tiny):
    info = FeatureInfo(tiny.feature_info, len(tiny.feature_info))
    x = torch.randn(BATCH, 3, 96, 96)
    with torch.no_grad():
        final, intermediates = tiny.forward_intermediates(x)
        features = tiny.forward_features(x)
        torch.testing.assert_close(final, features, rtol=0, atol=0)
        assert [f.shape[1] for f in intermediates] == info.channels()
        assert [96 // f.shape[-1] for f in intermediates] == info.reduction()

        last_two = tiny.forward_intermediates(x, indices=2, intermediates_only=True)
        assert [f.shape[1] for f in last_two] == info.channels()[2:]
        torch.testing.assert_close(last_two[0], intermediates[2])

        early = tiny.forward_intermediates(x, indices=[1], stop_early=True, intermediates_only=True)
        torch.testing.assert_close(early[0], intermediates[1])

        normed = tiny.forward_intermediates(x, indices=[3], norm=True, intermediates_only=True)[0]
        torch.testing.assert_close(normed.flatten(2).transpose(1, 2), features)


def test_grad_checkpointing_keeps_outputs_and_gradients():
    torch.manual_seed(0)
    model = create_tiny(num_classes=5)
    assert_grad_checkpointing_keeps_gradients(model, torch.randn(BATCH, 3, 64, 64), rtol=1e-5, same_outputs=True)


@pytest.mark.filterwarnings('ignore:`torch.jit.script` is deprecated')
def test_torchscript():
    with set_scriptable(True):
        model = timm.create_model('scalable_vit_small').eval()
    scripted = torch.jit.script(model)
    x = torch.randn(BATCH, 3, 160, 160)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x))
    with pytest.raises(Exception, match='at least 29x29'):
        scripted(torch.randn(1, 3, 16, 16))


def test_fx_trace_forward_and_backward():
    model = timm.create_model('scalable_vit_small').eval()
    x = torch.randn(BATCH, 3, 128, 128)
    # timm's notrace registrations keep the shape-dependent helpers out of the trace
    tracer_kwargs = dict(leaf_modules=list(get_notrace_modules()), autowrap_functions=list(get_notrace_functions()))
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=tracer_kwargs)
    fx_model = create_feature_extractor(
        model, train_return_nodes=[train_nodes[-1]], eval_return_nodes=[eval_nodes[-1]],
        tracer_kwargs=tracer_kwargs)
    with torch.no_grad():
        assert torch.equal(fx_model(x)[eval_nodes[-1]], model(x))

    fx_model.train()
    out = fx_model(x)[train_nodes[-1]]
    out.mean().backward()
    for name, param in fx_model.named_parameters():
        assert param.grad is not None, f'no gradient for {name}'


@pytest.mark.parametrize('size', [(64, 64), (97, 131)])  # the second pads IWSA's windows
def test_torch_compile_captures_one_graph(tiny, size):
    """TorchDynamo traces the whole model, padding and kernel choice included, without a graph break."""
    x = torch.randn(BATCH, 3, *size)
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(tiny)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
    compiled = torch.compile(tiny, backend='eager', fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), tiny(x))
    tiny.train()
    compiled(x).mean().backward()
    assert all(p.grad is not None for p in tiny.parameters())


def test_reset_classifier(tiny):
    hidden = tiny.head[0].weight.clone()
    tiny.reset_classifier(10)
    assert tiny.num_classes == 10 and tiny.head[3].out_features == 10
    torch.testing.assert_close(tiny.head[0].weight, hidden)  # hidden layer kept
    tiny.reset_classifier(0)
    assert isinstance(tiny.head, torch.nn.Identity)
    tiny.reset_classifier(7, global_pool='')
    with torch.no_grad():
        per_token = tiny(torch.randn(1, 3, 64, 64))
    assert per_token.shape == (1, 4, 7)  # 64 px -> 2x2 tokens at stride 32
    assert tiny.get_classifier() is tiny.head


def test_no_weight_decay_is_peg():
    model = create_tiny()
    expected = {n for n, _ in model.named_parameters() if n.startswith('pos_block.')}
    assert model.no_weight_decay() == expected and len(expected) == 8
    groups = timm.optim.param_groups_weight_decay(model, 0.05, no_weight_decay_list=model.no_weight_decay())
    no_decay = {id(p) for g in groups if g['weight_decay'] == 0 for p in g['params']}
    for name, param in model.named_parameters():
        assert (id(param) in no_decay) == (param.ndim <= 1 or name in expected), name


def test_group_matcher_covers_all_parameters():
    model = create_tiny()
    for coarse, expected_groups in ((False, 1 + sum(model.depths) + 1), (True, 1 + 4 + 1)):
        groups = group_parameters(model, model.group_matcher(coarse=coarse))
        names = [n for group in groups.values() for n in group]
        assert sorted(names) == sorted(n for n, _ in model.named_parameters())
        # stem, one group per block (or stage), final norm; the head falls into the last group
        assert len(groups) == expected_groups
    optimizer = timm.optim.create_optimizer_v2(model, 'adamw', lr=1e-3, layer_decay=0.75)
    assert len({g['lr_scale'] for g in optimizer.param_groups}) > 3


def test_drop_rates_are_applied():
    model = create_tiny(drop_rate=0.1, pos_drop_rate=0.2, proj_drop_rate=0.3, attn_drop_rate=0.4,
                        drop_path_rate=0.35)
    rates = [blk.drop_path1.drop_prob if hasattr(blk.drop_path1, 'drop_prob') else 0.
             for stage in model.stages for blk in stage]
    assert rates == pytest.approx([0.35 * i / 7 for i in range(8)])
    assert model.head_drop.p == 0.1 and model.pos_drops[0].p == 0.2
    assert model.stages[0][0].attn.proj_drop.p == 0.3 and model.stages[0][0].mlp.drop1.p == 0.3
    assert model.stages[0][1].attn.attn_drop == 0.4
    model.train()
    x = torch.randn(1, 3, 64, 64)
    assert not torch.equal(model(x), model(x))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def test_explicit_attention_selectable():
    model = create_tiny()
    model.set_fused_attn(False)
    flags = [m.fused_attn for m in model.modules() if hasattr(m, 'fused_attn')]
    assert len(flags) == 8 and not any(flags)
    timm.layers.set_fused_attn(False)
    try:
        assert not any(m.fused_attn for m in create_tiny().modules() if hasattr(m, 'fused_attn'))
    finally:
        timm.layers.set_fused_attn(True)
