"""Weights in the formats users live in, through the one checkpoint policy: `.safetensors` files and timm's hub
folders (`save_for_hf`, `local-dir:`) for every family, the policy's checks on them (digests, finite weights, no
unpickling), the one mismatch report, and tools/publish_checkpoint.py."""
import hashlib
import json
import runpy
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.models._hub import save_for_hf

import scalablevit
from scalablevit import checkpoint as checkpoint_io
from scalablevit.checkpoint import CheckpointError, StateDictMismatch

from helpers import ROOT, TINY_MODEL, create_tiny

FAMILIES = list(scalablevit.FAMILIES)
family_params = pytest.mark.parametrize('family', FAMILIES, ids=[f.name for f in FAMILIES])
publish_tool = runpy.run_path(str(ROOT / 'tools' / 'publish_checkpoint.py'), run_name='publish_checkpoint')


def seeded(name: str, seed: int = 0, **kwargs) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(name, **kwargs)


def assert_equal_tensors(state_dict, expected):
    assert state_dict.keys() >= expected.keys()
    for key, value in expected.items():
        assert torch.equal(state_dict[key], value), key


def damage_tensor(path: Path, key: str) -> None:
    """Flip one byte inside tensor `key` of a safetensors file (the header says where its bytes are)."""
    data = bytearray(path.read_bytes())
    header_size = int.from_bytes(data[:8], 'little')
    start = 8 + header_size + json.loads(data[8:8 + header_size])[key]['data_offsets'][0]
    data[start] ^= 0x40
    path.write_bytes(bytes(data))


# --- safetensors files and hub folders, for every family ---------------------------------------------------

@family_params
def test_safetensors_and_hub_folders_load_through_timm(family, tmp_path):
    """A .safetensors file (the policy's, with digests, and a bare one) by `pretrained_cfg_overlay=dict(file=...)`,
    and a folder written by timm's own `save_for_hf` by `local-dir:`, give the source's tensors (the classifier
    too: the overlay's class count is the file's, as timm needs to keep it)."""
    source = seeded(family.test_model, num_classes=7)
    expected = source.state_dict()
    checkpoint_io.save_checkpoint(expected, tmp_path / 'policy.safetensors')
    save_file(expected, tmp_path / 'bare.safetensors')
    for name in ('policy.safetensors', 'bare.safetensors'):
        model = timm.create_model(family.test_model, pretrained=True, num_classes=7,
                                  pretrained_cfg_overlay=dict(file=str(tmp_path / name), num_classes=7))
        assert_equal_tensors(model.state_dict(), expected)
    save_for_hf(source, tmp_path / 'hub', safe_serialization=True)
    model = timm.create_model(f'local-dir:{tmp_path / "hub"}', pretrained=True)
    assert type(model) is type(source) and model.num_classes == 7
    assert_equal_tensors(model.state_dict(), expected)


def test_local_dir_is_read_by_the_policy(tmp_path):
    """`local-dir:` goes through the policy: an altered tensor of the folder's file is found by its digest."""
    source = seeded(TINY_MODEL)
    save_for_hf(source, tmp_path, safe_serialization=True)
    checkpoint_io.save_checkpoint(source.state_dict(), tmp_path / 'model.safetensors')
    damage_tensor(tmp_path / 'model.safetensors', 'stages.0.0.attn.qkv.weight')
    with pytest.raises(CheckpointError, match=r'altered or damaged .* stages\.0\.0\.attn\.qkv\.weight'):
        timm.create_model(f'local-dir:{tmp_path}', pretrained=True)


def test_hub_folder_with_pytorch_model_bin_and_as_a_file_argument(tmp_path):
    """timm's legacy hub layout (pytorch_model.bin), and a hub folder named where a file is expected."""
    source = seeded(TINY_MODEL)
    save_for_hf(source, tmp_path, safe_serialization=False)
    assert (tmp_path / 'pytorch_model.bin').is_file()
    assert_equal_tensors(timm.create_model(f'local-dir:{tmp_path}', pretrained=True).state_dict(),
                         source.state_dict())
    assert_equal_tensors(checkpoint_io.load_state_dict(str(tmp_path)), source.state_dict())


def test_safetensors_digests_round_trip_and_find_damage(tmp_path):
    state_dict = create_tiny().state_dict()
    path = checkpoint_io.save_checkpoint(state_dict, tmp_path / 'weights.safetensors')
    assert checkpoint_io.is_safetensors_file(path)
    assert_equal_tensors(checkpoint_io.load_checkpoint_file(str(path)), state_dict)
    damage_tensor(path, 'head.3.weight')
    with pytest.raises(CheckpointError, match=r'tensor\(s\) head\.3\.weight differ from the digests'):
        checkpoint_io.load_checkpoint_file(str(path))


def test_safetensors_recognised_by_content_and_damaged_headers_refused(tmp_path):
    state_dict = create_tiny().state_dict()
    misnamed = tmp_path / 'weights.pth'
    save_file(state_dict, misnamed)
    assert_equal_tensors(checkpoint_io.load_checkpoint_file(str(misnamed)), state_dict)
    truncated = tmp_path / 'truncated.safetensors'
    truncated.write_bytes(misnamed.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match='truncated or damaged safetensors file'):
        checkpoint_io.load_checkpoint_file(str(truncated))


def test_non_finite_safetensors_weights_are_refused_naming_the_tensor(tmp_path):
    state_dict = create_tiny().state_dict()
    state_dict['stages.1.0.mlp.fc1.weight'][0, 0] = float('nan')
    save_file(state_dict, tmp_path / 'nan.safetensors')
    with pytest.raises(CheckpointError, match=r'NaN or infinite .* stages\.1\.0\.mlp\.fc1\.weight \(1 of'):
        timm.create_model(TINY_MODEL, pretrained=True,
                          pretrained_cfg_overlay=dict(file=str(tmp_path / 'nan.safetensors')))


class Trap:
    """Pickles as a call that creates a file: loading must not make that call."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), 'w')


def test_pickled_code_is_never_run(tmp_path):
    marker = tmp_path / 'unpickled'
    torch.save({'model': create_tiny().state_dict(), 'extra': Trap(marker)}, tmp_path / 'trap.pth')
    with pytest.raises(CheckpointError, match='cannot read checkpoint .*trap.pth'):
        checkpoint_io.load_checkpoint_file(str(tmp_path / 'trap.pth'))
    with pytest.raises(CheckpointError):
        timm.create_model(TINY_MODEL, pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / 'trap.pth')))
    assert not marker.exists()


@pytest.mark.parametrize('layout, error, message', [
    ('empty', FileNotFoundError, r'is a folder with no checkpoint file \(it is empty\)'),
    ('two_files', FileNotFoundError, r"several checkpoint files \['a.pth', 'b.pth'\]"),
    ('text_file', CheckpointError, 'not a PyTorch checkpoint'),
])
def test_folders_and_files_that_are_not_checkpoints(tmp_path, layout, error, message):
    folder = tmp_path / 'weights'
    folder.mkdir()
    if layout == 'two_files':
        for name in ('a.pth', 'b.pth'):
            torch.save({}, folder / name)
    elif layout == 'text_file':
        (folder / 'model.pth').write_text('{"weights": [1, 2]}')
    with pytest.raises(error, match=message):
        checkpoint_io.load_checkpoint_file(str(folder))


def test_hub_folder_of_another_model_names_the_tensors(tmp_path):
    """config.json says one variant, the weights are another's: the mismatch report names the tensors."""
    save_for_hf(seeded(TINY_MODEL), tmp_path, safe_serialization=True)
    other = seeded(TINY_MODEL, embed_dims=(32, 64, 128, 256))
    checkpoint_io.save_checkpoint(other.state_dict(), tmp_path / 'model.safetensors')
    with pytest.raises(ValueError, match=r'patch_embeds\.0\.proj\.weight: checkpoint \(32, 3, 7, 7\) vs model'):
        timm.create_model(f'local-dir:{tmp_path}', pretrained=True)


def test_openmmlab_init_cfg_reads_safetensors(tmp_path):
    pytest.importorskip('mmdet')
    from scalablevit.openmmlab import BACKBONES
    family = FAMILIES[0]
    classifier = seeded(family.test_model)
    path = checkpoint_io.save_checkpoint(classifier.state_dict(), tmp_path / 'classifier.safetensors')
    backbone = BACKBONES[family.backbone_name](arch='test', init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    backbone.init_weights()
    shared = {k: v for k, v in classifier.state_dict().items() if k in backbone.state_dict()}
    assert shared and all(torch.equal(backbone.state_dict()[k], v) for k, v in shared.items())


# --- the one mismatch report ---------------------------------------------------------------------------------

def test_state_dict_mismatch():
    model = create_tiny()
    state_dict = model.state_dict()
    assert not StateDictMismatch.compare(state_dict, model)
    other = create_tiny(num_classes=5).state_dict()
    del other['stages.0.0.attn.qkv.weight']
    other['decoder.bias'] = torch.zeros(2)
    mismatch = StateDictMismatch.compare(other, model)
    assert mismatch and mismatch.missing == ['stages.0.0.attn.qkv.weight'] and mismatch.unexpected == ['decoder.bias']
    assert mismatch.shape_errors == ['head.3.weight: checkpoint (5, 64) vs model (1000, 64)',
                                     'head.3.bias: checkpoint (5,) vs model (1000,)']
    assert str(mismatch) == ('  shape mismatches: head.3.weight: checkpoint (5, 64) vs model (1000, 64), '
                             'head.3.bias: checkpoint (5,) vs model (1000,)\n'
                             '  missing keys: stages.0.0.attn.qkv.weight\n  unexpected keys: decoder.bias')
    ignored = StateDictMismatch.compare(other, model, ignore='head.')
    assert not ignored.shape_errors and ignored.missing == ['stages.0.0.attn.qkv.weight']
    finetune = StateDictMismatch.compare({k: v for k, v in create_tiny(num_classes=5).state_dict().items()}, model,
                                         reinitialise='head.3.')
    assert not finetune and finetune.reinitialised == ['head.3.bias', 'head.3.weight']
    assert finetune.loadable(other).keys() == other.keys() - {'head.3.bias', 'head.3.weight'}


def test_state_dict_mismatch_keeps_model_buffers_when_asked():
    model = timm.create_model(FAMILIES[1].test_model)
    buffers = {name for name, _ in model.named_buffers()}
    assert buffers, 'the test needs a model with buffers'
    weights = {k: v for k, v in model.state_dict().items() if k not in buffers}
    assert set(StateDictMismatch.compare(weights, model).missing) == buffers
    kept = StateDictMismatch.compare(weights, model, keep_model_buffers=True)
    assert not kept and set(kept.kept_buffers) == buffers


# --- tools/publish_checkpoint.py -----------------------------------------------------------------------------

@pytest.fixture
def training_checkpoint(tmp_path):
    """A classification/main.py checkpoint (10 classes) with different raw and EMA weights."""
    raw, ema = (seeded(TINY_MODEL, seed, num_classes=10).state_dict() for seed in (1, 2))
    path = tmp_path / 'checkpoint.pth'
    checkpoint_io.save_checkpoint({'model': raw, 'model_ema': ema, 'optimizer': {'state': {}}, 'lr_scheduler': {},
                                   'epoch': 3, 'rng': [{'torch': torch.get_rng_state()}],
                                   'args': {'model': TINY_MODEL, 'lr': 0.1}}, path)
    return path, raw, ema


def publish(*args) -> int:
    return publish_tool['main']([str(a) for a in args])


def test_publish_writes_hashed_files_and_a_hub_folder_with_the_ema_weights(training_checkpoint, tmp_path, capsys):
    path, raw, ema = training_checkpoint
    out = tmp_path / 'release'
    assert publish(path, out / 'tiny', '--hub-dir', out / 'hub') == 0
    files = sorted(p.name for p in out.iterdir())
    written = capsys.readouterr().out
    for name in files:
        if name != 'hub':
            stem, suffix = name.rsplit('.', 1)
            assert stem.split('-')[-1] == hashlib.sha256((out / name).read_bytes()).hexdigest()[:8]
            assert suffix in ('pth', 'safetensors') and str(out / name) in written
    assert len(files) == 3 and not list(out.glob('.*'))
    pth = torch.load(next(out.glob('tiny-*.pth')), weights_only=True)
    assert set(pth) == {'state_dict', checkpoint_io.DIGEST_KEY}
    assert_equal_tensors(pth['state_dict'], ema)
    assert_equal_tensors(checkpoint_io.load_checkpoint_file(str(next(out.glob('tiny-*.safetensors')))), ema)
    model = timm.create_model(f'local-dir:{out / "hub"}', pretrained=True)
    assert model.num_classes == 10
    assert_equal_tensors(model.state_dict(), ema)


def test_publish_raw_weights_and_refusals(training_checkpoint, tmp_path, capsys):
    path, raw, ema = training_checkpoint
    out = tmp_path / 'raw'
    assert publish(path, out, '--no-use-ema', '--format', 'safetensors') == 0
    (written,) = tmp_path.glob('raw-*.safetensors')
    assert_equal_tensors(checkpoint_io.load_checkpoint_file(str(written)), raw)
    assert publish(path, out, '--no-use-ema', '--format', 'safetensors') == 2
    assert 'exists already (not overwritten): pass --force' in capsys.readouterr().err
    assert publish(path, out, '--no-use-ema', '--format', 'safetensors', '--force') == 0
    plain = tmp_path / 'plain.pth'
    torch.save(raw, plain)
    assert publish(plain, tmp_path / 'x', '--use-ema') == 2
    assert 'plain state dict without EMA weights' in capsys.readouterr().err
    assert publish(plain, '--hub-dir', tmp_path / 'hub') == 2
    assert 'pass --model NAME' in capsys.readouterr().err
    assert publish(plain, tmp_path / 'x', '--hub-dir', tmp_path / 'hub', '--model', FAMILIES[1].test_model) == 2
    assert 'do not fit timm model' in capsys.readouterr().err
    (tmp_path / 'notes.txt').write_text('not a checkpoint')
    assert publish(tmp_path / 'notes.txt', tmp_path / 'y') == 2
    assert 'cannot read checkpoint' in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(('x', 'y', 'hub', '.'))) == []


def test_publish_a_detection_checkpoint_and_its_backbone(tmp_path):
    """An mmengine checkpoint: the .pth keeps `meta` and the whole detector; `--backbone-only` gives the
    backbone's keys without 'backbone.', which the OpenMMLab backbone's init_cfg loads."""
    pytest.importorskip('mmdet')
    from scalablevit.openmmlab import BACKBONES
    family = FAMILIES[0]
    torch.manual_seed(3)
    backbone = BACKBONES[family.backbone_name](arch='test')
    detector = {**{f'backbone.{k}': v for k, v in backbone.state_dict().items()}, 'neck.conv.weight': torch.ones(2)}
    meta = {'epoch': 12, 'dataset_meta': {'classes': ('cat', 'dog')}}
    path = tmp_path / 'epoch_12.pth'
    checkpoint_io.save_checkpoint({'meta': meta, 'state_dict': detector, 'optimizer': {}, 'message_hub': {}}, path)
    assert publish(path, tmp_path / 'detector', '--format', 'pth') == 0
    published = checkpoint_io.load_checkpoint_file(str(next(tmp_path.glob('detector-*.pth'))))
    assert published['meta'] == meta and set(published) == {'meta', 'state_dict'}
    assert_equal_tensors(published['state_dict'], detector)
    assert publish(path, tmp_path / 'backbone', '--backbone-only', '--format', 'safetensors') == 0
    (weights,) = tmp_path.glob('backbone-*.safetensors')
    assert checkpoint_io.load_checkpoint_file(str(weights)).keys() == backbone.state_dict().keys()
    loaded = BACKBONES[family.backbone_name](arch='test', init_cfg=dict(type='Pretrained', checkpoint=str(weights)))
    loaded.init_weights()
    assert_equal_tensors(loaded.state_dict(), backbone.state_dict())
