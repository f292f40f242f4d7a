"""Helpers shared by the tests: the golden reference data, the tiny test model, free ports, subprocesses."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import pytest
import timm
import torch

import scalablevit  # noqa: F401  (registers the models in timm)
from scalablevit import layers, scalable_vit

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(__file__).parent / 'data'
VARIANTS = ('small', 'base', 'large')
TINY_MODEL = 'scalable_vit_test'  # the registered tiny architecture (ARCH_SETTINGS['test'])
TINY_ARGS = scalable_vit.ARCH_SETTINGS['test']


# The attention kernels: 'fast' lets `layers.attend` choose per call (on CPU, explicit ops for short sequences),
# 'sdpa' forces scaled_dot_product_attention everywhere, 'explicit' spells out the released operations.
ATTENTION_PATHS = ('fast', 'sdpa', 'explicit')


def select_attention_path(monkeypatch: pytest.MonkeyPatch, path: str) -> bool:
    """Make `path` the one taken; returns the `fused` flag to pass (or to give `set_fused_attn`)."""
    if path == 'sdpa':
        monkeypatch.setattr(layers, 'sdpa_is_faster', lambda q, k, v: True)
    return path != 'explicit'


def _reference_name(name: str) -> str:
    """'small' / 'base' / 'large' name ScalableViT's files; other names are file stems in tests/data."""
    return f'scalable_vit_{name}' if name in VARIANTS else name


def read_state_dict_spec(name: str):
    """Rows (key, shape, is_layernorm_weight) of the released state dict's parameters, in file order."""
    lines = (DATA_DIR / f'{_reference_name(name)}.state_dict.tsv').read_text().splitlines()[1:]
    rows = []
    for line in lines:
        key, shape, is_ln = line.split('\t')
        rows.append((key, tuple(int(s) for s in shape.split('x')), is_ln == '1'))
    return rows


def read_buffer_keys(name: str) -> List[str]:
    """Keys of the released state dict's buffers (`<name>.buffers.tsv`)."""
    lines = (DATA_DIR / f'{_reference_name(name)}.buffers.tsv').read_text().splitlines()[1:]
    return [line.split('\t')[0] for line in lines]


def golden_state_dict(name: str) -> Dict[str, torch.Tensor]:
    """The reference's deterministic weights: N(0, 0.02²) in float64 (+1 on LayerNorm weights), as float32
    (parameters only: buffers keep the values the model constructs)."""
    g = torch.Generator().manual_seed(0)
    state_dict = {}
    for key, shape, is_ln in read_state_dict_spec(name):
        t = torch.randn(shape, generator=g, dtype=torch.float64) * 0.02
        if is_ln:
            t += 1.0
        state_dict[key] = t.float()
    return state_dict


def golden_input(size: int = 224, seed: int = 1) -> torch.Tensor:
    return torch.randn((2, 3, size, size), generator=torch.Generator().manual_seed(seed))


def golden_outputs(name: str) -> dict:
    return json.loads((DATA_DIR / f'{_reference_name(name)}.golden.json').read_text())


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out - ref).norm() / ref.norm()).item()


# The VSA module goldens: field -> (input size, input seed, regressors multiplied by the strong factor)
VSA_MODULE_FIELDS = {
    'output': ((14, 14), 1, False),
    'output_strong': ((14, 14), 1, True),
    'output_15x20': ((15, 20), 2, False),
    'output_strong_15x20': ((15, 20), 2, True),
}


def vsa_module_golden_errors(module: torch.nn.Module, name: str, regressor_keys: Sequence[str]) -> Dict[str, float]:
    """Relative error of a (B, H, W, 96) VSA module on each field of the golden `name` (weights from its .tsv,
    `regressor_keys` scaled for the strong fields; the stored reference keeps every `token_stride`-th token).
    Also checks the parameter names and count against the reference."""
    import numpy as np
    golden = np.load(DATA_DIR / f'{name}.golden.npz')
    meta = golden_outputs(name)
    weights = golden_state_dict(name)
    assert [k for k, _ in module.named_parameters()] == list(weights)
    assert sum(p.numel() for p in module.parameters()) == meta['params']
    errors = {}
    for field, (size, seed, strong) in VSA_MODULE_FIELDS.items():
        state = {k: v * meta['strong_factor'] if strong and k in regressor_keys else v for k, v in weights.items()}
        module.load_state_dict(state, strict=False)
        x = torch.randn((2, 96, *size), generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            out = module(x.permute(0, 2, 3, 1)).reshape(2, -1, 96)[:, ::meta['token_stride']]
        errors[field] = relative_error(out, torch.from_numpy(golden[field]))
    return errors


def create_tiny(**kwargs) -> torch.nn.Module:
    return timm.create_model(TINY_MODEL, **kwargs)


def free_port() -> int:
    """A TCP port nothing listens on now (for torchrun's rendezvous), so parallel runs never collide."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def job_processes(root: int) -> List[int]:
    """`root` and all its descendants (from /proc): the processes Slurm signals in a job step, whatever
    sessions the launcher put them in (torchrun starts each worker in a session of its own)."""
    children: Dict[int, List[int]] = {}
    for entry in Path('/proc').iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / 'stat').read_text().rsplit(')', 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, pending = [], [root]
    while pending:
        pid = pending.pop()
        found.append(pid)
        pending.extend(children.get(pid, []))
    return found


def signal_job(root: int, signum: int) -> None:
    """Send `signum` to `root` and its descendants, as Slurm signals every process of a job step."""
    for pid in job_processes(root):
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def run_command(args: List[str], cwd: Path, timeout: int = 900, env: Optional[Dict[str, str]] = None,
                check: bool = True) -> subprocess.CompletedProcess:
    """Run a command (a Python script when `args[0]` ends in .py) with one thread per process, unbuffered;
    with `check`, fail the test with the output's tail when it exits non-zero."""
    if args[0].endswith('.py'):
        args = [sys.executable, *args]
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1', **(env or {}))
    result = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                            env=env)
    if check:
        assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    return result


# --- checks shared by the model families' tests ------------------------------------------------------------

def fill_padding_with_noise(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make `F.pad` fill what it pads with large random values instead of zeros, so a test can show that
    padding never reaches real tokens."""
    import torch.nn.functional as F
    zero_pad = F.pad

    def noisy_pad(t, pad, *args, **kwargs):
        padded = zero_pad(t, pad)
        is_pad = zero_pad(torch.ones_like(t), pad) == 0
        return torch.where(is_pad, torch.randn_like(padded) * 100, padded)

    monkeypatch.setattr(F, 'pad', noisy_pad)


def assert_grad_checkpointing_keeps_gradients(model: torch.nn.Module, x: torch.Tensor, rtol: float,
                                              same_outputs: bool = False) -> None:
    """Gradients (and with `same_outputs`, outputs) with `set_grad_checkpointing(True)` equal the plain
    ones; the model must draw no randomness (drop path and dropout off)."""
    out_plain = model(x)
    out_plain.sum().backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    out_ckpt = model(x)
    out_ckpt.sum().backward()
    if same_outputs:
        torch.testing.assert_close(out_ckpt, out_plain, rtol=0, atol=0)
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, plain[name], rtol=rtol, atol=1e-6, msg=name)


def assert_scripts(model: torch.nn.Module, size: Tuple[int, int]) -> None:
    """TorchScript gives the eager outputs (on a size that needs padding, so the padded branch is scripted)."""
    scripted = torch.jit.script(model)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x))


def assert_fx_traces(model: torch.nn.Module, size: Tuple[int, int] = (64, 64)) -> None:
    """torch.fx (timm's leaf modules and functions) traces the model to the eager outputs."""
    from timm.layers import get_notrace_functions, get_notrace_modules
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names
    tracer_kwargs = dict(leaf_modules=list(get_notrace_modules()), autowrap_functions=list(get_notrace_functions()))
    _, eval_nodes = get_graph_node_names(model, tracer_kwargs=tracer_kwargs)
    fx_model = create_feature_extractor(model, return_nodes=[eval_nodes[-1]], tracer_kwargs=tracer_kwargs)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        torch.testing.assert_close(fx_model(x)[eval_nodes[-1]], model(x))


def assert_compiles_to_one_graph(model: torch.nn.Module, size: Tuple[int, int]) -> None:
    """Dynamo captures the whole forward without a graph break, and the compiled model agrees."""
    x = torch.randn(2, 3, *size)
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    compiled = torch.compile(model, backend='eager', fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))


def assert_onnx_matches_onnxruntime(model: torch.nn.Module, path: Path,
                                    sizes: Sequence[Tuple[int, int]] = ((64, 64), (96, 128)),
                                    export_size: Tuple[int, int] = (64, 64)) -> None:
    """Export with dynamic batch, height and width (traced at `export_size`); onnxruntime matches PyTorch at
    `sizes`."""
    import numpy as np
    ort = pytest.importorskip('onnxruntime')
    torch.onnx.export(model, (torch.randn(1, 3, *export_size),), str(path), input_names=['images'],
                      output_names=['logits'], opset_version=17, dynamo=False,
                      dynamic_axes={'images': {0: 'batch', 2: 'height', 3: 'width'}})
    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    for size in sizes:
        x = torch.randn(2, 3, *size)
        with torch.no_grad():
            expected = model(x).numpy()
        (out,) = session.run(None, {'images': x.numpy()})
        np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
