"""ViTAEv2*+VSA (`scalablevit.vitae_vsa`): the released function to float32 rounding, the released parameter
names, any input size, and the family's own rules (the timm API of every family: test_families.py)."""
import copy
import math

import pytest
import timm
import timm.optim
import torch

from scalablevit import vitae_vsa
from scalablevit.layers import fuse_conv_bn
from scalablevit.vsa import VSAttention, relative_position_index

from helpers import (
    ATTENTION_PATHS,
    DATA_DIR,
    golden_input,
    golden_outputs,
    golden_state_dict,
    read_buffer_keys,
    read_state_dict_spec,
    relative_error,
    select_attention_path,
    vsa_module_golden_errors,
)

MAX_RELATIVE_ERROR = 1e-5
BF16_MAX_RELATIVE_ERROR = 2e-2
REGRESSOR_KEYS = ('sampling_offsets.2.weight', 'sampling_offsets.2.bias', 'sampling_scales.2.weight',
                  'sampling_scales.2.bias')
RELEASED = 'vitaev2_vsa_s'
# the released models with goldens: parameters of the released code (the 48M is `ViTAEv2_VSA_widePCM_48M`)
RELEASED_PARAMS = {'vitaev2_vsa_s': 19_773_300, 'vitaev2_vsa_48m': 51_089_119}
TINY = 'vitaev2_vsa_test'


def released_buffers(name):
    """The buffers of the released state dict as `<name>.buffers.tsv` states them (constructor values)."""
    buffers = {}
    for line in (DATA_DIR / f'{name}.buffers.tsv').read_text().splitlines()[1:]:
        key, shape, value = line.split('\t')
        size = tuple(int(s) for s in shape.split('x')) if shape else ()
        if value.startswith('Swin relative-position index'):
            buffers[key] = relative_position_index(7)
            assert tuple(buffers[key].shape) == size, key
        elif value.startswith('zeros'):
            buffers[key] = torch.zeros(size)
        elif value.startswith('ones'):
            buffers[key] = torch.ones(size)
        else:
            assert key.endswith('num_batches_tracked') and value.startswith('0 '), (key, value)
            buffers[key] = torch.tensor(0)
    return buffers


def released_state_dict(name):
    """A released-format state dict made from the reference files alone: the golden weights and the buffers."""
    return {**golden_state_dict(name), **released_buffers(name)}


@pytest.fixture(scope='module')
def golden_models():
    """Each released model, built once, with its released-format golden state dict loaded `strict=True`."""
    models = {}

    def get(name):
        if name not in models:
            torch.manual_seed(0)
            model = timm.create_model(name).eval()
            incompatible = model.load_state_dict(released_state_dict(name), strict=True)
            assert not incompatible.missing_keys and not incompatible.unexpected_keys
            models[name] = model
        return models[name]
    return get


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return timm.create_model(TINY).eval()


@pytest.mark.parametrize('path', ATTENTION_PATHS)
def test_module_reproduces_the_release(monkeypatch, path):
    """The released ViTAE classification module on all four golden fields: 15x20 is off the 7-grid, where it
    divides offsets by the unpadded window counts (2 x 2, not 3 x 3). The stored reference keeps every third
    token."""
    module = vitae_vsa.ConvVSAttention(96, num_heads=3, window_size=7).eval()
    module.fused_attn = select_attention_path(monkeypatch, path)
    for field, error in vsa_module_golden_errors(module, 'vsa_attention_vitae', REGRESSOR_KEYS).items():
        assert error <= MAX_RELATIVE_ERROR, field


def test_vitae_module_keys_convert_to_the_swin_vsa_module():
    """The README's key table: equal outputs on window multiples, different ones off the grid (the two
    releases divide offsets by different window counts there)."""
    torch.manual_seed(0)
    source = vitae_vsa.ConvVSAttention(32, num_heads=2, window_size=7).eval()
    for key in REGRESSOR_KEYS:  # move the windows well away from the default ones
        source.state_dict()[key].mul_(20)
    target = VSAttention(32, num_heads=2, window_size=7).eval()
    target.load_state_dict(vitae_vsa.vitae_to_vsattention_state_dict(source.state_dict(), num_heads=2), strict=True)
    with torch.no_grad():
        x = torch.randn(2, 14, 21, 32)
        torch.testing.assert_close(target(x), source(x), rtol=1e-5, atol=1e-5)
        x = torch.randn(2, 15, 20, 32)
        assert relative_error(target(x), source(x)) > 1e-3


@pytest.mark.parametrize('name', sorted(RELEASED_PARAMS))
def test_parameter_names_and_buffers_match_release(name):
    with torch.device('meta'):
        model = timm.create_model(name)
    expected = [(key, shape) for key, shape, _ in read_state_dict_spec(name)]
    assert [(key, tuple(p.shape)) for key, p in model.named_parameters()] == expected
    buffers = dict(model.named_buffers())
    assert list(buffers) == read_buffer_keys(name)  # the released state dict's buffers, in its order
    for key, value in released_buffers(name).items():
        assert buffers[key].shape == value.shape and buffers[key].dtype == value.dtype, key
    assert sum(p.numel() for p in model.parameters()) == golden_outputs(name)['params'] == RELEASED_PARAMS[name]


@pytest.mark.parametrize('name', sorted(RELEASED_PARAMS))
def test_buffers_are_the_released_values(name):
    """The constructed buffers equal the release's (Swin index, BatchNorm statistics at their init)."""
    torch.manual_seed(0)
    buffers = dict(timm.create_model(name).named_buffers())
    for key, value in released_buffers(name).items():
        assert torch.equal(buffers[key], value), key


# S in the fast tier; the 48M (the same code at other widths and with the wide PCM, ~20 s) in the slow one
@pytest.mark.parametrize('path', ATTENTION_PATHS)
@pytest.mark.parametrize('name', [n if n == 'vitaev2_vsa_s' else pytest.param(n, marks=pytest.mark.slow)
                                  for n in sorted(RELEASED_PARAMS)])
def test_golden_logits(monkeypatch, golden_models, name, path):
    """Logits and pooled features of the released code at 224 (the golden weights, released-format state dict
    loaded strict) on every attention path."""
    model = golden_models(name)
    model.set_fused_attn(select_attention_path(monkeypatch, path))
    ref = golden_outputs(name)
    with torch.no_grad():
        pooled = model.forward_head(model.forward_features(golden_input()), pre_logits=True)
        logits = model.head(pooled)
    assert relative_error(pooled, torch.tensor(ref['pooled_features'])) <= MAX_RELATIVE_ERROR
    assert relative_error(logits, torch.tensor(ref['logits'])) <= MAX_RELATIVE_ERROR


def test_released_checkpoint_loads_strict(tmp_path):
    from scalablevit.checkpoint import pretrained_overlay
    source = timm.create_model(TINY)
    path = tmp_path / 'released.pth'
    without_index = {k: v for k, v in source.state_dict().items() if not k.endswith('relative_position_index')}
    torch.save({'model': without_index, 'epoch': 3}, path)
    model = timm.create_model(TINY, pretrained=True, pretrained_cfg_overlay=pretrained_overlay(str(path)))
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    torch.save(timm.create_model(TINY, token_dims=(16, 32, 64, 256)).state_dict(), path)
    with pytest.raises(ValueError, match='does not fit this ViTAEv2VSA'):
        timm.create_model(TINY, pretrained=True, pretrained_cfg_overlay=pretrained_overlay(str(path)))


def test_48m_is_the_released_wide_pcm_layout():
    """ViTAEv2*-48M+VSA as released (`ViTAEv2_VSA_widePCM_48M`): RC heads equal to the NC heads, and the
    reduction cells' PCM through 2·token_dims (in -> 2·t -> 2·t -> t); the normal cells' PCM is unchanged."""
    with torch.device('meta'):
        model = timm.create_model('vitaev2_vsa_48m')
        headless = timm.create_model('vitaev2_vsa_48m', num_classes=0)
    assert sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in headless.parameters()) == 769_000
    in_chans = 3
    for layer, embed, token, heads in zip(model.layers, (96, 96, 192, 384), (96, 192, 384, 768), (3, 6, 12, 24)):
        pcm = layer.RC.PCM
        assert [(pcm[i].in_channels, pcm[i].out_channels) for i in (0, 3, 6)] == [
            (in_chans, 2 * token), (2 * token, 2 * token), (2 * token, token)]
        assert layer.RC.PRM.convs[0][0].out_channels == embed
        assert layer.RC.attn.num_heads == heads and all(cell.attn.num_heads == heads for cell in layer.NC)
        assert [(layer.NC[0].PCM[i].in_channels, layer.NC[0].PCM[i].out_channels) for i in (0, 3, 6)] == [
            (token, 4 * token), (4 * token, token), (token, token)]
        in_chans = token
    assert [len(layer.NC) for layer in model.layers] == [2, 2, 11, 2]


def test_wide_pcm_is_an_option_of_the_reduction_cell():
    """S keeps the narrow PCM (in -> embed -> embed -> token); `wide_pcm` widens any model."""
    narrow = vitae_vsa.ReductionCell(3, 8, 16, 4, 7, (1, 2), num_heads=2, groups=1)
    wide = vitae_vsa.ReductionCell(3, 8, 16, 4, 7, (1, 2), num_heads=2, groups=1, wide_pcm=True)
    assert [narrow.PCM[i].out_channels for i in (0, 3, 6)] == [8, 8, 16]
    assert [wide.PCM[i].out_channels for i in (0, 3, 6)] == [32, 32, 16]
    x = torch.randn(1, 3, 45, 38)
    assert wide.eval()(x).shape == narrow.eval()(x).shape == (1, 12, 10, 16)
    tiny_wide = timm.create_model(TINY, wide_pcm=True)
    assert tiny_wide.layers[1].RC.PCM[3].weight.shape == (64, 16, 3, 3)  # 2·32 -> 2·32, groups 4


def test_train_recipes_are_the_release_and_main_py_defaults():
    """ViTAE-VSA's recipe: 10 warm-up epochs; S drop path 0.1, wd 0.05; 48M drop path 0.25, wd 0.055, which
    classification/main.py takes as its defaults for these models (the family contract)."""
    assert vitae_vsa.TRAIN_RECIPES == {
        'vitaev2_vsa_s': dict(drop_path=0.1, warmup_epochs=10, weight_decay=0.05),
        'vitaev2_vsa_48m': dict(drop_path=0.25, warmup_epochs=10, weight_decay=0.055),
    }
    import main as cls_main
    for name, recipe in vitae_vsa.TRAIN_RECIPES.items():
        args = cls_main.parse_args(['--model', name])
        assert {key: getattr(args, key) for key in recipe} == recipe, name
        model = cls_main.create_classifier(args, num_classes=10)
        rates = [getattr(cell.drop_path, 'drop_prob', 0.) for layer in model.layers for cell in layer.NC]
        assert rates[-1] == pytest.approx(recipe['drop_path']), name


@pytest.mark.slow
@pytest.mark.parametrize('name, gflops', [('vitaev2_vsa_s', 5.764), ('vitaev2_vsa_48m', 15.090)])
def test_flops_equal_the_release(name, gflops):
    """fvcore's count of the released code at 224 (one multiply-add = one FLOP), by `scalablevit.flops` (what
    `tools/get_flops.py` prints)."""
    from scalablevit.flops import count
    result = count(name)
    assert result['shape'] == (224, 224) and result['params'] * 1e6 == pytest.approx(RELEASED_PARAMS[name], abs=0.5)
    assert result['flops'] == pytest.approx(gflops, abs=5e-4)


@pytest.mark.slow
def test_48m_runs_at_odd_sizes():
    model = timm.create_model('vitaev2_vsa_48m').eval()
    with torch.no_grad():
        for size in ((97, 131), (64, 45)):
            assert torch.isfinite(model(torch.randn(1, 3, *size))).all()


def test_released_quirks_kept():
    """The reduction cell's attention scale comes from its input (PRM) width per head; normal and reduction
    cells use different LayerNorm eps; offsets are divided by the unpadded window counts."""
    model = timm.create_model(RELEASED)
    rc0, rc1, nc = model.layers[0].RC, model.layers[1].RC, model.layers[0].NC[0]
    assert rc0.attn.scale == pytest.approx(128 ** -0.5) and rc1.attn.scale == pytest.approx(96 ** -0.5)
    assert nc.attn.scale == pytest.approx(32 ** -0.5)
    assert rc0.norm1.eps == 1e-5 and nc.norm1.eps == 1e-6
    regression = torch.ones(1, 2, 4, 3, 3)
    # a 15x20 map: padded counts 3 x 3, the release divides by 2 x 2 -> offsets x 1.5, scales unchanged
    rescaled = vitae_vsa.divide_offsets_by_unpadded_counts(regression, 15, 20, 7)
    assert torch.equal(rescaled[:, :, :2], torch.full((1, 2, 2, 3, 3), 1.5))
    assert torch.equal(rescaled[:, :, 2:], regression[:, :, 2:])
    assert vitae_vsa.divide_offsets_by_unpadded_counts(regression, 14, 21, 7) is regression


def test_drop_path_rates_rise_over_all_normal_cells():
    """Fixed release bug: stage k's rates continue where stage k-1's end."""
    model = timm.create_model(RELEASED, drop_path_rate=0.13)
    rates = [getattr(cell.drop_path, 'drop_prob', 0.) for layer in model.layers for cell in layer.NC]
    assert rates == pytest.approx(torch.linspace(0, 0.13, 14).tolist())


def test_prm_branches_land_on_the_pcm_grid():
    """Every PRM branch gives ⌈side/r⌉ for any side, as the PCM does; at multiples of the stride the padding
    is the release's ⌈((k-1)·d + 1 - r)/2⌉."""
    prm = vitae_vsa.PyramidReduction(3, 4, kernel_size=7, stride=4, dilations=(1, 2, 3, 4))
    pcm = vitae_vsa.conv_branch((3, 4, 4, 8), (2, 2, 1), groups=1)
    assert [prm.padding(224, d) for d in (1, 2, 3, 4)] == [2, 5, 8, 11]
    for size in range(29, 41):
        x = torch.randn(1, 3, size, size + 3)
        assert prm(x).shape[1:3] == pcm(x).shape[2:] == (math.ceil(size / 4), math.ceil((size + 3) / 4))


@pytest.mark.parametrize('size', [(64, 64), (97, 131), (32, 45)])
def test_any_input_size(tiny, size):
    with torch.no_grad():
        logits = tiny(torch.randn(2, 3, *size))
        features = timm.create_model(TINY, features_only=True).eval()(torch.randn(1, 3, *size))
    assert logits.shape == (2, 1000) and torch.isfinite(logits).all()
    H, W = size
    for i, feat in enumerate(features):
        H, W = math.ceil(H / (4 if i == 0 else 2)), math.ceil(W / (4 if i == 0 else 2))
        assert feat.shape == (1, 16 * 2 ** i, H, W)


def test_too_small_input_is_a_clear_error(tiny):
    with pytest.raises(ValueError, match='at least 32x32'):
        tiny(torch.randn(1, 3, 16, 64))


def test_no_weight_decay_follows_the_release(tiny):
    """Only timm's rule (1-D parameters and biases): the release lists nothing else."""
    assert tiny.no_weight_decay() == set()
    groups = timm.optim.param_groups_weight_decay(tiny, 0.05, no_weight_decay_list=tiny.no_weight_decay())
    no_decay = {id(p) for g in groups if g['weight_decay'] == 0 for p in g['params']}
    for name, param in tiny.named_parameters():
        assert (id(param) in no_decay) == (param.ndim <= 1), name




def randomize_batchnorms(model):
    """Running statistics and affine maps far from the constructor's identity, so folding them is not a no-op."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                shape = module.running_mean.shape
                module.running_mean.copy_(torch.randn(shape, generator=generator) * 0.5)
                module.running_var.copy_(torch.rand(shape, generator=generator) * 2 + 0.1)
                module.weight.copy_(torch.randn(shape, generator=generator))
                module.bias.copy_(torch.randn(shape, generator=generator) * 0.5)
    return model


def fused_pair(model):
    """(the eval-mode model, a fused copy): the copy's BatchNorms folded, the original left as it was."""
    model = randomize_batchnorms(model).eval()
    return model, copy.deepcopy(model).fuse()


def dense_tiny():
    from scalablevit.openmmlab.backbone import ViTAEv2VSABackbone
    torch.manual_seed(0)
    return ViTAEv2VSABackbone(arch='test')


@pytest.mark.parametrize('make', [lambda: timm.create_model(TINY), dense_tiny], ids=['classifier', 'backbone'])
@pytest.mark.parametrize('size', [(224, 224), (197, 251)])
def test_fuse_keeps_the_outputs(make, size):
    torch.manual_seed(0)
    model, fused = fused_pair(make())
    assert not fused.training
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        refs, outs = model(x), fused(x)
    refs, outs = (refs,) if torch.is_tensor(refs) else refs, (outs,) if torch.is_tensor(outs) else outs
    assert len(outs) == len(refs)
    for out, ref in zip(outs, refs):
        assert out.shape == ref.shape
        assert relative_error(out, ref) < MAX_RELATIVE_ERROR
        assert (out - ref).abs().max() < 1e-5 * ref.abs().max()


def test_fuse_under_bfloat16_autocast_is_as_close_as_the_unfused_model():
    """bfloat16 rounds the folded weights instead of the BatchNorm's input: each model is about as far from the
    float32 reference as the other (~0.5 % relative), and they differ from each other by as much."""
    torch.manual_seed(0)
    model, fused = fused_pair(dense_tiny())
    x = torch.randn(1, 3, 97, 131)
    with torch.no_grad():
        refs = model(x)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            unfused_bf16, fused_bf16 = model(x), fused(x)
    for ref, out_unfused, out_fused in zip(refs, unfused_bf16, fused_bf16):
        err_unfused, err_fused = relative_error(out_unfused.float(), ref), relative_error(out_fused.float(), ref)
        assert err_fused < min(2 * err_unfused, BF16_MAX_RELATIVE_ERROR)
        assert relative_error(out_fused.float(), out_unfused.float()) < BF16_MAX_RELATIVE_ERROR


def test_fuse_changes_nothing_else_and_refuses_training(tiny):
    keys = list(tiny.state_dict())
    model, fused = fused_pair(tiny)
    assert list(model.state_dict()) == keys and not model.convs_fused
    model.train()  # the unfused model trains as before
    batchnorm_keys = [k for k in keys if '.PCM.1.' in k or '.PCM.4.' in k]
    assert batchnorm_keys and list(fused.state_dict()) == [k for k in keys if k not in batchnorm_keys]
    assert fused.fuse() is fused  # a second fuse finds nothing more to fold
    with pytest.raises(RuntimeError, match='fused for inference'):
        fused.train()
    assert not fused.training


def test_fuse_conv_bn_refuses_batch_statistics():
    seq = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4, track_running_stats=False))
    with pytest.raises(ValueError, match='no running statistics'):
        fuse_conv_bn(seq)
