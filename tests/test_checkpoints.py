"""Loading checkpoints: the released format, plain/EMA/DDP/compiled state dicts, the one EMA rule, and clear
mismatch errors."""
import argparse

import pytest
import timm
import torch

from scalablevit import checkpoint_filter_fn
from scalablevit.checkpoint import load_state_dict, select_state_dict

from helpers import TINY_MODEL, create_tiny


@pytest.fixture
def source():
    torch.manual_seed(1)
    return create_tiny()


def load_pretrained(path, **kwargs):
    return timm.create_model(TINY_MODEL, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs)


def assert_same_weights(model, state_dict, skip_prefix=None):
    loaded = model.state_dict()
    for key, value in state_dict.items():
        if skip_prefix and key.startswith(skip_prefix):
            continue
        assert torch.equal(loaded[key], value), key


def prefixed(state_dict, prefix):
    return {prefix + k: v for k, v in state_dict.items()}


@pytest.mark.parametrize('layout', ['released', 'plain', 'ddp', 'compiled', 'ema_only', 'timm_ema'])
def test_pretrained_from_local_file(tmp_path, source, layout):
    sd = source.state_dict()
    checkpoint = {
        # the released/DeiT training format: weights under 'model', with optimizer state and argparse args
        'released': {'model': sd, 'optimizer': {}, 'epoch': 299, 'args': argparse.Namespace(model='x')},
        'plain': sd,
        'ddp': prefixed(sd, 'module.'),
        'compiled': prefixed(sd, '_orig_mod.module.'),
        'ema_only': {'model_ema': sd},
        'timm_ema': {'state_dict_ema': prefixed(sd, 'module.')},
    }[layout]
    path = tmp_path / 'checkpoint.pth'
    torch.save(checkpoint, path)
    assert_same_weights(load_pretrained(path), sd)


def test_filter_unwraps_released_format_directly(source):
    sd = source.state_dict()
    filtered = checkpoint_filter_fn({'model': prefixed(sd, 'module.'), 'epoch': 3}, create_tiny())
    assert filtered.keys() == sd.keys()


def test_pretrained_with_new_class_count_keeps_hidden_layer(tmp_path, source):
    path = tmp_path / 'checkpoint.pth'
    torch.save({'model': source.state_dict()}, path)
    model = load_pretrained(path, num_classes=10)
    assert model.head[3].out_features == 10
    assert_same_weights(model, source.state_dict(), skip_prefix='head.3.')


def test_pretrained_headless_and_features_only(tmp_path, source):
    path = tmp_path / 'checkpoint.pth'
    torch.save({'model': source.state_dict()}, path)
    headless = load_pretrained(path, num_classes=0)
    assert isinstance(headless.head, torch.nn.Identity)
    assert_same_weights(headless, source.state_dict(), skip_prefix='head.')
    backbone = load_pretrained(path, features_only=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = source.eval().forward_intermediates(x, intermediates_only=True)
        for got, want in zip(backbone.eval()(x), expected):
            torch.testing.assert_close(got, want)


def test_checkpoint_of_another_variant_names_mismatched_tensors(tmp_path):
    other = timm.create_model(TINY_MODEL, embed_dims=(32, 64, 128, 256))
    path = tmp_path / 'checkpoint.pth'
    torch.save({'model': other.state_dict()}, path)
    with pytest.raises(ValueError, match=r'another variant') as error:
        load_pretrained(path)
    assert 'patch_embeds.0.proj.weight: checkpoint (32, 3, 7, 7) vs model (16, 3, 7, 7)' in str(error.value)


def test_missing_and_unexpected_keys_are_named(tmp_path, source):
    sd = {k: v for k, v in source.state_dict().items() if not k.startswith('stages.1.1.')}
    sd['decoder.weight'] = torch.zeros(3)
    path = tmp_path / 'checkpoint.pth'
    torch.save(sd, path)
    with pytest.raises(RuntimeError) as error:
        load_pretrained(path)
    message = str(error.value)
    assert 'Missing key(s)' in message and 'stages.1.1.attn.q.weight' in message
    assert 'Unexpected key(s)' in message and 'decoder.weight' in message


def test_pretrained_without_file_is_refused():
    with pytest.raises(RuntimeError, match='No pretrained weights exist'):
        timm.create_model('scalable_vit_small', pretrained=True)


@pytest.fixture
def raw_and_ema():
    """A `--model-ema` training checkpoint: raw weights under 'model', different EMA weights under 'model_ema'."""
    torch.manual_seed(2)
    raw, ema = create_tiny().state_dict(), create_tiny().state_dict()
    return {'model': raw, 'model_ema': ema, 'optimizer': {}, 'epoch': 3}, raw, ema


def test_one_ema_rule_for_every_reader(tmp_path, raw_and_ema):
    """timm's pretrained path, the filter, `load_state_dict` and the backbone's init all pick the EMA weights
    by default; `use_ema=False` picks the raw ones."""
    checkpoint, raw, ema = raw_and_ema
    path = tmp_path / 'checkpoint.pth'
    torch.save(checkpoint, path)
    assert_same_weights(load_pretrained(path), ema)
    for key, value in checkpoint_filter_fn(checkpoint, create_tiny()).items():
        assert torch.equal(value, ema[key]), key
    for use_ema, expected in ((None, ema), (True, ema), (False, raw)):
        loaded = load_state_dict(str(path), use_ema=use_ema)
        assert all(torch.equal(loaded[k], v) for k, v in expected.items()), use_ema


def test_ema_rule_errors_and_plain_state_dicts(raw_and_ema):
    checkpoint, raw, ema = raw_and_ema
    assert select_state_dict({'model': raw})[1] == 'model'
    assert select_state_dict({'state_dict': raw, 'state_dict_ema': ema}, use_ema=False)[1] == 'state_dict'
    assert select_state_dict(prefixed(raw, 'module.'))[0].keys() == raw.keys()
    with pytest.raises(ValueError, match='has no EMA weights'):
        select_state_dict({'model': raw}, use_ema=True)
    with pytest.raises(ValueError, match='holds only EMA weights'):
        select_state_dict({'model_ema': ema}, use_ema=False)
    with pytest.raises(ValueError, match='plain state dict without EMA'):
        select_state_dict(raw, use_ema=True)


def test_prefix_selects_a_detector_backbone(tmp_path, raw_and_ema):
    _, raw, _ = raw_and_ema
    path = tmp_path / 'detector.pth'
    torch.save({'state_dict': {**prefixed(raw, 'backbone.'), 'neck.conv.weight': torch.zeros(1)}}, path)
    assert load_state_dict(str(path), prefix='backbone.').keys() == raw.keys()
    with pytest.raises(ValueError, match="no keys under prefix 'encoder.'"):
        load_state_dict(str(path), prefix='encoder.')
