"""One suite over every model family of `scalablevit.FAMILIES`, on each family's registered 'test' variant (as
timm's tests/test_models.py runs over every model): a family listed in the contract is tested by being listed.
Per-family files keep only what is specific to a family (goldens, released quirks, any-size rules)."""
import math

import pytest
import timm
import timm.optim
import torch
from timm.models import group_parameters
from timm.models._manipulate import reinit_non_persistent_buffers

import scalablevit

import main as cls_main  # noqa: E402
from helpers import (
    assert_compiles_to_one_graph,
    assert_fx_traces,
    assert_grad_checkpointing_keeps_gradients,
    assert_onnx_matches_onnxruntime,
    assert_scripts,
)

FAMILIES = list(scalablevit.FAMILIES)
BATCH = 2
SIZE = (64, 64)
ODD_SIZE = (97, 131)  # no stage map is a multiple of a window, lattice or patch: every padding branch runs
CONTRACT_CFG_KEYS = ('input_size', 'crop_pct', 'interpolation', 'mean', 'std', 'license')

family_params = pytest.mark.parametrize('family', FAMILIES, ids=[f.name for f in FAMILIES])


def create(family, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(family.test_model, **kwargs)


@family_params
def test_contract_is_complete(family):
    """Every variant is registered in timm with a cfg that carries the data settings and license; recipes name
    main.py flags; the dense-backbone settings name a variant."""
    assert family.test_model in family.models()
    for variant, name in family.model_names.items():
        cfg = timm.models.get_pretrained_cfg(name)
        assert cfg is not None, name
        cfg = cfg.to_dict()
        assert all(cfg.get(key) for key in CONTRACT_CFG_KEYS), (name, {k: cfg.get(k) for k in CONTRACT_CFG_KEYS})
        assert scalablevit.family_of(name) is family
    flags = {action.dest for action in cls_main.get_args_parser()._actions}
    for name, recipe in family.train_recipes.items():
        assert set(recipe) <= flags, (name, set(recipe) - flags)
    assert family.default_arch in family.arch_settings


@family_params
def test_forward_backward_reaches_every_parameter(family):
    model = create(family, num_classes=7).train()
    out = model(torch.randn(BATCH, 3, *SIZE))
    assert out.shape == (BATCH, 7) and torch.isfinite(out).all()
    out.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing


@family_params
def test_heads_and_pooling(family):
    model = create(family).eval()
    x = torch.randn(BATCH, 3, *SIZE)
    with torch.no_grad():
        pre_logits = model.forward_head(model.forward_features(x), pre_logits=True)
        assert pre_logits.shape == (BATCH, model.head_hidden_size)
        assert model(x).shape == (BATCH, 1000)
        model.reset_classifier(0)
        torch.testing.assert_close(model(x), pre_logits)
        assert create(family, num_classes=0).eval()(x).shape == (BATCH, model.num_features)


@family_params
def test_batch_of_zero_images_gives_an_empty_output(family):
    model = create(family, num_classes=5).eval()
    with torch.no_grad():
        assert model(torch.randn(0, 3, *SIZE)).shape == (0, 5)
        features = model.forward_intermediates(torch.randn(0, 3, *SIZE), intermediates_only=True)
    assert [f.shape[:2] for f in features] == [(0, info['num_chs']) for info in model.feature_info]


@family_params
def test_features_only_strides_and_channels(family):
    reference = create(family)
    model = timm.create_model(family.test_model, features_only=True).eval()
    assert model.feature_info.channels() == [info['num_chs'] for info in reference.feature_info]
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    with torch.no_grad():
        features = model(torch.randn(BATCH, 3, *ODD_SIZE))
    for channels, reduction, feat in zip(model.feature_info.channels(), model.feature_info.reduction(), features):
        assert feat.shape == (BATCH, channels, math.ceil(ODD_SIZE[0] / reduction), math.ceil(ODD_SIZE[1] / reduction))
        assert torch.isfinite(feat).all()
    subset = timm.create_model(family.test_model, features_only=True, out_indices=(1, 3))
    assert subset.feature_info.channels() == model.feature_info.channels()[1::2]


@family_params
def test_forward_intermediates_in_both_formats(family):
    model = create(family).eval()
    x = torch.randn(BATCH, 3, *ODD_SIZE)
    with torch.no_grad():
        final, nchw = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x), rtol=0, atol=0)
        nhwc = model.forward_intermediates(x, output_fmt='NHWC', intermediates_only=True)
        assert len(nchw) == len(nhwc) == len(model.feature_info)
        for a, b, info in zip(nchw, nhwc, model.feature_info):
            assert a.shape[1] == info['num_chs'] and b.shape[-1] == info['num_chs']
            torch.testing.assert_close(a.permute(0, 2, 3, 1), b, rtol=0, atol=0)
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
        torch.testing.assert_close(last_two[0], nchw[-2])
        early = model.forward_intermediates(x, indices=[1], stop_early=True, intermediates_only=True)
        torch.testing.assert_close(early[0], nchw[1])
        normed = model.forward_intermediates(x, indices=[len(nchw) - 1], norm=True, intermediates_only=True)[0]
        assert normed.shape == nchw[-1].shape


@family_params
def test_prune_intermediate_layers(family):
    model = create(family).eval()
    x = torch.randn(1, 3, *SIZE)
    with torch.no_grad():
        expected = model.forward_intermediates(x, indices=[0, 1], intermediates_only=True)
        kept = model.prune_intermediate_layers([0, 1], prune_norm=True)
        assert kept == [0, 1]
        assert model.num_features == model.feature_info[1]['num_chs'] and model.num_classes == 0
        for a, b in zip(model.forward_intermediates(x, indices=[0, 1], intermediates_only=True), expected):
            torch.testing.assert_close(a, b)
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in create(family).parameters())


@family_params
def test_grad_checkpointing_keeps_gradients(family):
    model = create(family, num_classes=5, drop_path_rate=0.).eval()  # eval: fixed BatchNorm statistics
    assert_grad_checkpointing_keeps_gradients(model, torch.randn(BATCH, 3, *SIZE), rtol=1e-5)


@family_params
def test_reset_classifier_keeps_device_and_dtype(family):
    model = create(family).to(torch.bfloat16)
    model.reset_classifier(11)
    head = [p for p in model.get_classifier().parameters()]
    assert model.num_classes == 11 and head and all(p.dtype == torch.bfloat16 for p in head)
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, *SIZE, dtype=torch.bfloat16)).shape == (1, 11)
    model.reset_classifier(0)
    assert model.num_classes == 0 and not list(model.get_classifier().parameters())


@family_params
def test_built_on_the_meta_device_and_in_a_dtype(family):
    """timm's factory arguments: `device='meta'` builds no storage (then `to_empty`, load, and timm's
    `reinit_non_persistent_buffers` for computed buffers); `dtype` builds in that dtype. Integer buffers keep
    their dtype."""
    meta = timm.create_model(family.test_model, device='meta')
    assert all(t.device.type == 'meta' for t in list(meta.parameters()) + list(meta.buffers()))
    meta.reset_classifier(3)
    assert all(p.device.type == 'meta' for p in meta.get_classifier().parameters())
    reference = create(family, num_classes=3).eval()
    meta.to_empty(device='cpu')
    meta.load_state_dict(reference.state_dict())
    reinit_non_persistent_buffers(meta)
    x = torch.randn(1, 3, *SIZE)
    with torch.no_grad():
        torch.testing.assert_close(meta.eval()(x), reference(x))
    half = timm.create_model(family.test_model, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in half.parameters())
    assert {b.dtype for b in half.buffers()} <= {torch.bfloat16, torch.int64}


@family_params
def test_drop_rates_are_accepted_and_applied(family):
    model = create(family, drop_rate=0.1, pos_drop_rate=0.1, proj_drop_rate=0.1, attn_drop_rate=0.1,
                   drop_path_rate=0.2)
    x = torch.randn(BATCH, 3, *SIZE)
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
    rates = [m.drop_prob for m in model.modules() if isinstance(m, timm.layers.DropPath)]
    assert rates and max(rates) == pytest.approx(0.2)


@family_params
def test_no_weight_decay_and_group_matcher_cover_every_parameter(family):
    model = create(family)
    names = [n for n, _ in model.named_parameters()]
    assert model.no_weight_decay() <= set(names)
    for coarse in (False, True):
        groups = group_parameters(model, model.group_matcher(coarse=coarse))
        assert sorted(n for group in groups.values() for n in group) == sorted(names)
    coarse_groups = group_parameters(model, model.group_matcher(coarse=True))
    assert len(coarse_groups) >= 1 + len(model.feature_info)  # stem, then one group per stage (+ the rest)
    optimizer = timm.optim.create_optimizer_v2(model, 'adamw', lr=1e-3, layer_decay=0.75)
    assert len({g['lr_scale'] for g in optimizer.param_groups}) > 2


@family_params
def test_attention_paths_agree(family):
    model = create(family).eval()
    x = torch.randn(BATCH, 3, *ODD_SIZE)
    with torch.no_grad():
        fused = model(x)
        model.set_fused_attn(False)
        torch.testing.assert_close(model(x), fused, rtol=1e-5, atol=1e-5)


@family_params
def test_released_format_checkpoint_loads_through_timm(family, tmp_path):
    from scalablevit.checkpoint import pretrained_overlay
    source = create(family).eval()
    path = tmp_path / 'checkpoint.pth'
    torch.save({'model': {f'module.{k}': v for k, v in source.state_dict().items()}}, path)
    loaded = timm.create_model(family.test_model, pretrained=True,
                               pretrained_cfg_overlay=pretrained_overlay(str(path))).eval()
    x = torch.randn(1, 3, *SIZE)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), source(x), rtol=0, atol=0)


@family_params
def test_bad_pretrained_files_get_the_checkpoint_policy_messages(family, tmp_path):
    """`pretrained_cfg_overlay=dict(file=...)` is read by the package's policy in every family's create
    function: a missing or truncated file is an error that names it."""
    path = tmp_path / 'model.pth'
    with pytest.raises(FileNotFoundError, match='model.pth does not exist'):
        timm.create_model(family.test_model, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    torch.save({'model': create(family).state_dict()}, path)
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(Exception, match='cannot read checkpoint .*model.pth'):
        timm.create_model(family.test_model, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))


@pytest.mark.filterwarnings('ignore:`torch.jit.script` is deprecated')
@family_params
def test_torchscript(family):
    assert_scripts(create(family).eval(), ODD_SIZE)


@family_params
def test_fx_trace(family):
    assert_fx_traces(create(family).eval())


@pytest.mark.slow  # ~8 s a family
@pytest.mark.parametrize('size', [SIZE, ODD_SIZE])
@family_params
def test_torch_compile_captures_one_graph(family, size):
    assert_compiles_to_one_graph(create(family).eval(), size)


@family_params
def test_onnx_export_matches_onnxruntime(family, tmp_path):
    """One graph with dynamic height and width serves 224x224 and 97x131, or, where the family says it cannot
    (`onnx_dynamic_sizes`), a graph exported at each size does."""
    model = create(family).eval()
    sizes = ((224, 224), ODD_SIZE)
    if family.onnx_dynamic_sizes:
        assert_onnx_matches_onnxruntime(model, tmp_path / 'model.onnx', sizes=sizes)
    else:
        for size in sizes:
            assert_onnx_matches_onnxruntime(model, tmp_path / f'model_{size[0]}.onnx', sizes=(size,),
                                            export_size=size)


# --- the OpenMMLab backbone of every family -------------------------------------------------------------------

@pytest.fixture(scope='module')
def backbones():
    pytest.importorskip('mmdet')
    from scalablevit.openmmlab import BACKBONES
    return BACKBONES


@family_params
def test_backbone_is_registered_with_out_indices(family, backbones):
    from mmdet.registry import MODELS as DET_MODELS
    from mmseg.registry import MODELS as SEG_MODELS
    assert DET_MODELS.get(family.backbone_name) is backbones[family.backbone_name]
    assert SEG_MODELS.get(family.backbone_name) is backbones[family.backbone_name]
    backbone = DET_MODELS.build(dict(type=family.backbone_name, arch='test', out_indices=(1, 3))).eval()
    with torch.no_grad():
        outs = backbone(torch.randn(1, 3, *ODD_SIZE))
    widths = [info['num_chs'] for info in create(family).feature_info]
    assert [tuple(o.shape) for o in outs] == [(1, widths[i], math.ceil(ODD_SIZE[0] / 2 ** (i + 2)),
                                               math.ceil(ODD_SIZE[1] / 2 ** (i + 2))) for i in (1, 3)]
    assert not any(name.startswith('head') for name in backbone.state_dict())


@family_params
def test_backbone_default_arch_and_output_norm_eps(family, backbones):
    cls = backbones[family.backbone_name]
    assert cls.default_arch == family.default_arch and cls.norm_eps == family.norm_eps
    backbone = cls(arch='test')
    eps = {m.eps for m in backbone.out_norms if isinstance(m, torch.nn.LayerNorm)}
    assert eps == {family.norm_eps}


@family_params
def test_backbone_frozen_stages_stay_frozen_after_train(family, backbones):
    backbone = backbones[family.backbone_name](arch='test', frozen_stages=1, drop_path_rate=0.)
    backbone.train()
    frozen = set(backbone._frozen_names)
    assert frozen and all(not p.requires_grad for n, p in backbone.named_parameters() if n in frozen)
    assert any(p.requires_grad for n, p in backbone.named_parameters() if n not in frozen)
    before = {n: p.detach().clone() for n, p in backbone.named_parameters() if n in frozen}
    buffers = {n: b.clone() for n, b in backbone.named_buffers()}
    optimizer = torch.optim.SGD([p for p in backbone.parameters() if p.requires_grad], lr=0.1)
    sum(o.mean() for o in backbone(torch.randn(2, 3, *SIZE))).backward()
    optimizer.step()
    for name, value in before.items():
        assert torch.equal(dict(backbone.named_parameters())[name], value), name
    # frozen modules stay in eval mode: their BatchNorm statistics (if any) do not move
    for name, module in backbone.named_modules():
        params = list(module.parameters(recurse=True))
        if params and all(f'{name}.{n}' in frozen for n, _ in module.named_parameters()):
            assert not module.training, name
    for name, value in buffers.items():
        if any(name.startswith(f.rsplit('.', 1)[0] + '.') for f in frozen) and value.is_floating_point():
            assert torch.equal(dict(backbone.named_buffers())[name], value), name


@family_params
def test_backbone_with_cp_gives_the_same_outputs(family, backbones):
    torch.manual_seed(0)
    plain = backbones[family.backbone_name](arch='test', drop_path_rate=0.).eval()
    checkpointed = backbones[family.backbone_name](arch='test', drop_path_rate=0., with_cp=True).eval()
    checkpointed.load_state_dict(plain.state_dict())
    x = torch.randn(1, 3, *SIZE, requires_grad=True)
    for a, b in zip(plain(x), checkpointed(x)):
        torch.testing.assert_close(a, b)


@family_params
def test_backbone_norm_eval_freezes_batchnorm_statistics(family, backbones):
    backbone = backbones[family.backbone_name](arch='test', norm_eval=True).train()
    batch_norms = [m for m in backbone.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert all(not m.training for m in batch_norms)
    assert any(m.training for m in backbone.modules())


@family_params
def test_backbone_init_cfg_loads_a_classifier_checkpoint(family, backbones, tmp_path):
    classifier = create(family)
    path = tmp_path / 'classifier.pth'
    torch.save({'model': classifier.state_dict()}, path)
    backbone = backbones[family.backbone_name](arch='test', init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    backbone.init_weights()
    source = classifier.state_dict()
    loaded = [k for k in backbone.state_dict() if k in source]
    assert loaded and all(torch.equal(backbone.state_dict()[k], source[k]) for k in loaded)
    assert all(k.startswith('out_norms.') for k in backbone.state_dict() if k not in source)


# --- a fifth family, registered by the contract alone (tests/toy_family.py) -----------------------------------

def test_a_fifth_family_is_picked_up_by_main_py():
    """The throw-away family of tests/toy_family.py (imported by conftest.py) is in this suite's parameters, and
    classification/main.py trains it with its recipe and its cfg's data settings."""
    import toy_family
    assert toy_family.FAMILY in FAMILIES
    assert scalablevit.family_of('toy_net_test') is toy_family.FAMILY
    args = cls_main.parse_args(['--model', 'toy_net_test'])
    assert (args.drop_path, args.warmup_epochs, args.input_size, args.eval_crop_ratio, args.interpolation) == (
        0.05, 1, 64, 0.95, 'bilinear')
    model = cls_main.create_classifier(args, num_classes=3)
    assert isinstance(model, toy_family.ToyNet) and model.num_classes == 3
    assert max(m.drop_prob for m in model.modules() if isinstance(m, timm.layers.DropPath)) == pytest.approx(0.05)


def test_a_fifth_family_gets_its_openmmlab_backbone(backbones):
    from mmdet.registry import MODELS

    import toy_family
    backbone = MODELS.build(dict(type='ToyNetBackbone', out_indices=(0, 2)))  # its default arch
    assert isinstance(backbone, toy_family.ToyNet) and type(backbone) is backbones['ToyNetBackbone']
    assert [o.shape[1] for o in backbone(torch.randn(1, 3, *SIZE))] == [16, 64]
