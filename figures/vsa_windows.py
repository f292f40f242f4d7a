"""The VSA paper's qualitative figure: the default windows beside the windows each head's regressor chooses.

    python figures/vsa_windows.py --model swin_tiny_vsa_patch4_window7_224 --checkpoint CKPT --image cat.jpg \
        --out figures/vsa_windows.png
    python figures/vsa_windows.py --random-regressors 0    # untrained: regressors drawn at random (seed 0)

Any model with VSA windows works (Swin+VSA, ViTAEv2*+VSA, ScalableViT with `window_attention='vsa'`). One row
per stage (the attention block `--block` of it), one column for the default s x s windows and one per head
(`--heads` of them) with the windows that head's regressor moved and stretched. The windows are read from the
model's own computation: every call of `scalablevit.vsa.varied_size_window_attention` during a forward pass of
the image is recorded, and its regression goes through `window_sampling_grid`, the function that places the
key/value sampling points, so the boxes drawn are exactly where the model samples (the outer edges of the
outermost sampling points, one sampling step apart). `--checkpoint` is read by the package's checkpoint policy
(EMA weights when present); a new Swin+VSA model's regressors are zero (every window is the default one), so
`--random-regressors SEED` draws the regressors' last layer at random to show what moved windows look like.
Under ten seconds on a CPU at 224.
"""
import argparse
import contextlib
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import matplotlib
import numpy as np
import timm
import torch
import torch.nn as nn
from feature_maps import synthetic_image
from PIL import Image, UnidentifiedImageError

import scalablevit  # noqa: F401  (registers the models)
from scalablevit import vsa
from scalablevit.checkpoint import StateDictMismatch, load_state_dict

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the file-only backend)
from matplotlib.patches import Rectangle  # noqa: E402

RANDOM_REGRESSOR_STD = 0.5  # std of the random regression per window (offsets in windows/2, scales around 1)


@dataclass
class WindowCall:
    """One call of the VSA function: the width of its q/k/v projection (3C), the window side and the raw
    (B, heads, 4, nH, nW) regression."""
    channels: int
    window_size: int
    regression: torch.Tensor


@contextlib.contextmanager
def recorded_window_calls() -> Iterator[List[WindowCall]]:
    """Record every call of `scalablevit.vsa.varied_size_window_attention` made inside the block, by every
    module that imported it (each model family's), in call order."""
    original = vsa.varied_size_window_attention
    calls: List[WindowCall] = []

    def recording(qkv, regression, num_heads, window_size, *args, **kwargs):
        calls.append(WindowCall(qkv.shape[-1], window_size, regression.detach()))
        return original(qkv, regression, num_heads, window_size, *args, **kwargs)

    users = [m for m in list(sys.modules.values())
             if getattr(m, '__name__', '').startswith('scalablevit') and
             getattr(m, 'varied_size_window_attention', None) is original]
    for module in users:
        module.varied_size_window_attention = recording
    try:
        yield calls
    finally:
        for module in users:
            module.varied_size_window_attention = original


def window_boxes(regression: torch.Tensor, window_size: int) -> torch.Tensor:
    """(B, heads, nH, nW, 4) boxes (x0, y0, x1, y1) in map pixels (pixel i spans i..i+1) of the windows that
    `window_sampling_grid` samples for `regression` (B, heads, 4, nH, nW): the outer edges of the first and last
    sampling points, half a sampling step beyond them. A zero regression gives the default windows exactly."""
    B, heads, _, nH, nW = regression.shape
    s = window_size
    if s < 2:
        raise ValueError('window boxes need windows of at least 2 x 2 sampling points')
    grid = vsa.window_sampling_grid(regression.double(), s).view(B, heads, nH, s, nW, s, 2)
    size = torch.tensor([nW * s - 1, nH * s - 1], dtype=torch.float64)  # align_corners=True: -1..1 spans Wp-1
    first = (grid[:, :, :, 0, :, 0] + 1) / 2 * size  # B, heads, nH, nW, 2 (x, y) of the first sampling point
    last = (grid[:, :, :, -1, :, -1] + 1) / 2 * size
    half_step = (last - first) / (s - 1) / 2
    low, high = first - half_step + 0.5, last + half_step + 0.5  # + 0.5: from pixel centres to pixel edges
    return torch.cat([torch.minimum(low, high), torch.maximum(low, high)], dim=-1)


def default_boxes(rows: int, columns: int, window_size: int) -> torch.Tensor:
    """(rows, columns, 4) boxes of the regular s x s windows, in map pixels."""
    s = window_size
    y, x = torch.meshgrid(torch.arange(rows), torch.arange(columns), indexing='ij')
    return torch.stack([x * s, y * s, (x + 1) * s, (y + 1) * s], dim=-1).double()


def randomize_regressors(model: nn.Module, seed: int) -> int:
    """Draw the last layer of every VSA regressor (window mean -> LeakyReLU -> 1x1 conv, `scalablevit.vsa`)
    at random; returns how many. Weights are scaled by fan-in so each window's regression has a std of about
    RANDOM_REGRESSOR_STD, whatever the width."""
    generator = torch.Generator().manual_seed(seed)
    count = 0
    for module in model.modules():
        if isinstance(module, nn.Sequential) and len(module) and isinstance(module[0], nn.AvgPool2d) \
                and isinstance(module[-1], nn.Conv2d):
            conv = module[-1]
            std = RANDOM_REGRESSOR_STD / math.sqrt(2)  # half of the variance from the weights, half from the bias
            with torch.no_grad():
                weight = torch.randn(conv.weight.shape, generator=generator) / math.sqrt(conv.in_channels)
                conv.weight.copy_(weight * std)
                conv.bias.copy_(torch.randn(conv.bias.shape, generator=generator) * std)
            count += 1
    return count


def call_stages(model: nn.Module, calls: List[WindowCall], image_size: Tuple[int, int]) -> List[int]:
    """The stage (index into `model.feature_info`) of each call, in forward order: the first stage from the
    previous call's on whose map the image gives the call's window counts, preferring one whose width fits."""
    infos = model.feature_info
    stage, stages = 0, []
    for call in calls:
        counts = tuple(call.regression.shape[-2:])
        s = call.window_size
        candidates = [i for i in range(stage, len(infos)) if counts == tuple(
            math.ceil(math.ceil(side / infos[i]['reduction']) / s) for side in image_size)]
        by_width = [i for i in candidates if 3 * infos[i]['num_chs'] == call.channels]
        stage = (by_width or candidates or [stage])[0]
        stages.append(stage)
    return stages


def stage_windows(model: nn.Module, image: torch.Tensor, block: int) -> List[Dict]:
    """Per stage with VSA windows: stride, window size, the default boxes (nH, nW, 4) and the regressed boxes
    (heads, nH, nW, 4) of its VSA block `block` (negative: from the end), both in image pixels."""
    with recorded_window_calls() as calls, torch.no_grad():
        model(image)
    if not calls:
        raise SystemExit(f'error: {model.pretrained_cfg["architecture"]} computes no VSA windows (use a Swin+VSA, '
                         f'ViTAEv2*+VSA or ScalableViT model with window_attention=\'vsa\')')
    by_stage: Dict[int, List[WindowCall]] = {}
    for stage, call in zip(call_stages(model, calls, tuple(image.shape[-2:])), calls):
        by_stage.setdefault(stage, []).append(call)
    stages = []
    for stage, stage_calls in sorted(by_stage.items()):
        stride = model.feature_info[stage]['reduction']
        if not -len(stage_calls) <= block < len(stage_calls):
            raise SystemExit(f'error: --block {block}: stage {stage + 1} has {len(stage_calls)} VSA blocks')
        call = stage_calls[block]
        stages.append(dict(
            stage=stage + 1, stride=stride, window_size=call.window_size, blocks=len(stage_calls),
            default=default_boxes(*call.regression.shape[-2:], call.window_size) * stride,
            windows=window_boxes(call.regression, call.window_size)[0] * stride))
    return stages


def load_weights(model: nn.Module, path: str, use_ema: Optional[bool]) -> None:
    """The checkpoint's weights by the package's policy and the model family's checkpoint filter, strictly; a
    checkpoint that does not fit stops with the mismatch report."""
    try:
        state_dict = load_state_dict(path, use_ema)
        family = next((f for f in scalablevit.FAMILIES if isinstance(model, f.model_cls)), None)
        if family is not None:
            state_dict = family.checkpoint_filter(state_dict, model)
    except (FileNotFoundError, ValueError) as error:  # CheckpointError is a ValueError
        raise SystemExit(f'error: {error}') from None
    mismatch = StateDictMismatch.compare(state_dict, model)
    if mismatch:
        raise SystemExit(f'error: checkpoint {path} does not fit {model.pretrained_cfg["architecture"]}:\n'
                         f'{mismatch}')
    model.load_state_dict(state_dict)


def load_image(path: Optional[str], model: nn.Module, size: int) -> Tuple[torch.Tensor, np.ndarray]:
    """(the model's input (1, 3, size, size): shorter side resized to `size`, centre crop, the model's mean/std;
    that crop as an RGB array to draw on)."""
    if path is None:
        picture = synthetic_image(size)
    else:
        try:
            with Image.open(path) as opened:
                picture = opened.convert('RGB')
        except (OSError, UnidentifiedImageError) as error:
            raise SystemExit(f'error: cannot read image {path}: {error}') from None
    config = timm.data.resolve_data_config({'input_size': (3, size, size), 'crop_pct': 1.0}, model=model)
    tensor = timm.data.create_transform(**config)(picture)
    mean, std = torch.tensor(config['mean'])[:, None, None], torch.tensor(config['std'])[:, None, None]
    shown = (tensor * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
    return tensor.unsqueeze(0), shown


def draw(shown: np.ndarray, stages: List[Dict], heads: int, title: str, out: Path) -> None:
    columns = 1 + min(heads, max(s['windows'].shape[0] for s in stages))
    fig, axes = plt.subplots(len(stages), columns, figsize=(2.3 * columns, 2.4 * len(stages)), squeeze=False)
    height, width = shown.shape[:2]
    colours = plt.get_cmap('tab10')
    for row, stage in enumerate(stages):
        side = stage['window_size']
        panels = [(f'stage {stage["stage"]} (stride {stage["stride"]}): default {side}x{side}', stage['default'])]
        panels += [(f'head {h + 1}', stage['windows'][h]) for h in range(min(heads, stage['windows'].shape[0]))]
        for column in range(columns):
            ax = axes[row, column]
            ax.axis('off')
            if column >= len(panels):
                continue
            name, boxes = panels[column]
            ax.imshow(shown, extent=(0, width, height, 0))
            for index, (x0, y0, x1, y1) in enumerate(boxes.reshape(-1, 4).tolist()):
                colour = 'white' if column == 0 else colours(index % 10)
                ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, linewidth=0.9, edgecolor=colour))
            ax.set_xlim(0, width)
            ax.set_ylim(height, 0)
            ax.set_title(name, fontsize=8, loc='left')
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    tmp = out.with_name(f'.{out.name}.tmp-{os.getpid()}')
    try:
        fig.savefig(tmp, dpi=110, format='png')
        os.replace(tmp, out)
    finally:
        plt.close(fig)
        if tmp.exists():
            tmp.unlink()


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', default='swin_tiny_vsa_patch4_window7_224', help='a timm model with VSA windows')
    parser.add_argument('--checkpoint', help='its weights (classification checkpoint, by the package\'s policy)')
    parser.add_argument('--use-ema', action=argparse.BooleanOptionalAction, default=None,
                        help='the EMA weights (--use-ema) or the raw ones (--no-use-ema); default: EMA when present')
    parser.add_argument('--random-regressors', type=int, metavar='SEED',
                        help='draw the regressors\' last layer at random with this seed (after --checkpoint)')
    parser.add_argument('--image', help='picture to draw on (default: a synthetic one)')
    parser.add_argument('--size', type=int, default=224, help='input side in pixels')
    parser.add_argument('--block', type=int, default=0, help='which VSA block of each stage (-1: the last)')
    parser.add_argument('--heads', type=int, default=4, help='heads to draw per stage')
    parser.add_argument('--out', type=Path, default=Path('figures/vsa_windows.png'))
    args = parser.parse_args(argv)
    if args.image and not Path(args.image).is_file():
        parser.error(f'--image {args.image} does not exist')
    if not args.out.parent.is_dir():
        parser.error(f'--out {args.out}: folder {args.out.parent} does not exist')
    if args.heads < 1 or args.size < 1:
        parser.error('--heads and --size must be at least 1')

    torch.manual_seed(0)
    if not timm.is_model(args.model):
        parser.error(f'--model {args.model} is not a timm model')
    model = timm.create_model(args.model, num_classes=0).eval()  # the classifier plays no part in the windows
    if args.checkpoint:
        load_weights(model, args.checkpoint, args.use_ema)
    weights = f'weights of {Path(args.checkpoint).name}' if args.checkpoint else 'untrained'
    if args.random_regressors is not None:
        if not randomize_regressors(model, args.random_regressors):
            raise SystemExit(f'error: {args.model} has no VSA window regressors')
        weights += f', random regressors (seed {args.random_regressors})'
    image, shown = load_image(args.image, model, args.size)
    stages = stage_windows(model, image, args.block)
    title = f'{args.model} ({weights}): block {args.block} of each stage'
    draw(shown, stages, args.heads, title, args.out)
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
