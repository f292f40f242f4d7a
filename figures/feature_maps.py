"""Figure 1 of the paper: feature maps after the second transformer block for WSA, SSA (r_c = 1) and SSA.

    python figures/feature_maps.py --image cat.jpg [--image dog.jpg ...] --checkpoint scalable_vit_small.pth \
        --out figures/figure1.png

The three rows share ScalableViT-S's first stage up to the second block (patch embedding, block 1, PEG) and
differ in that block's attention: window attention without the LIM (WSA), SSA without channel scaling
(r_c = 1), and SSA as released (r_c = 1.25). `--checkpoint` supplies ScalableViT-S weights (used for the shared
layers and the SSA row); `--wsa-checkpoint` / `--ssa-rc1-checkpoint` supply weights of models trained with those
blocks. Rows without trained weights use random ones, and the figure says so in each row's title.
Each cell shows the per-pixel norm of the block's output features, scaled to [0, 1] per image.
"""
import argparse
import copy
from pathlib import Path
from typing import List, Optional, Tuple

import matplotlib
import numpy as np
import timm
import torch
import torch.nn as nn
from PIL import Image

import scalablevit  # noqa: F401  (registers the models)
from scalablevit.checkpoint import load_state_dict
from scalablevit.scalable_vit import InteractiveWindowAttention, ScalableSelfAttention, ScalableViT, tokens_to_map

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the file-only backend)

ROWS = (('wsa', 'WSA (window attention, no LIM)'), ('ssa_rc1', 'SSA, $r_c$ = 1'), ('ssa', 'SSA'))


def without_lim(attn: InteractiveWindowAttention) -> InteractiveWindowAttention:
    """Window attention alone: the LIM conv zeroed (its output adds nothing) and frozen."""
    nn.init.zeros_(attn.lim_func.weight)
    nn.init.zeros_(attn.lim_func.bias)
    attn.lim_func.requires_grad_(False)
    return attn


def make_variant(base: ScalableViT, kind: str) -> ScalableViT:
    """A copy of `base` whose stage-1 second block uses the attention of row `kind`."""
    model = copy.deepcopy(base)
    block = model.stages[0][1]
    dim, heads = model.embed_dims[0], block.attn.num_heads
    if kind == 'wsa':
        without_lim(model.stages[0][0].attn)  # a WSA model has no LIM anywhere
        block.attn = without_lim(InteractiveWindowAttention(dim, heads, window_size=7))
    elif kind == 'ssa_rc1':
        block.attn = ScalableSelfAttention(dim, heads, sr_ratio=block.attn.reduction[0].stride[0], channel_ratio=1.)
        block.attn.apply(ScalableViT._init_weights)
    return model.eval()


def load_weights(model: nn.Module, path: Optional[str]) -> str:
    """Load the tensors of `path` that fit `model`; return the row's weight label."""
    if not path:
        return 'random weights'
    state = load_state_dict(path)  # the package's policy: EMA weights when the checkpoint has them
    own = model.state_dict()
    fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(fitting, strict=False)
    return f'trained: {Path(path).name}'


@torch.no_grad()
def second_block_features(model: ScalableViT, images: torch.Tensor) -> torch.Tensor:
    """(B, H/4, W/4) per-pixel feature norms after the stage-1 second block, scaled to [0, 1] per image."""
    x, H, W = model.patch_embeds[0](images)
    x = model.pos_block[0](model.stages[0][0](x, H, W), H, W)
    x = model.stages[0][1](x, H, W)
    norms = tokens_to_map(x, H, W).norm(dim=1)
    low = norms.flatten(1).min(1)[0][:, None, None]
    high = norms.flatten(1).max(1)[0][:, None, None]
    return (norms - low) / (high - low).clamp_min(1e-12)


def load_images(paths: List[str], size: int) -> Tuple[torch.Tensor, List[np.ndarray]]:
    config = timm.data.resolve_data_config({'input_size': (3, size, size)}, model=None)
    transform = timm.data.create_transform(**dict(config, crop_pct=1.0))
    pictures = [Image.open(p).convert('RGB') for p in paths]
    shown = [np.asarray(p.resize((size, size), Image.BICUBIC)) for p in pictures]
    return torch.stack([transform(p) for p in pictures]), shown


def synthetic_image(size: int) -> Image.Image:
    """A stand-in picture (a disc and a bar on a gradient) for runs without an image."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    picture = np.stack([0.3 + 0.4 * xx, 0.35 + 0.3 * yy, 0.5 - 0.2 * xx], axis=-1)
    picture[(xx - 0.35) ** 2 + (yy - 0.45) ** 2 < 0.04] = (0.85, 0.55, 0.2)
    picture[(abs(yy - 0.75) < 0.06) & (xx > 0.5) & (xx < 0.9)] = (0.2, 0.3, 0.8)
    return Image.fromarray((picture * 255).astype(np.uint8))


def draw(shown: List[np.ndarray], rows: List[Tuple[str, str, torch.Tensor]], out: Path) -> None:
    columns = len(shown)
    fig, axes = plt.subplots(len(rows) + 1, columns, figsize=(2.4 * columns, 2.5 * (len(rows) + 1)), squeeze=False)
    for c, picture in enumerate(shown):
        axes[0, c].imshow(picture)
    axes[0, 0].set_title('input', loc='left', fontsize=9)
    for r, (title, weights, maps) in enumerate(rows, start=1):
        for c in range(columns):
            axes[r, c].imshow(maps[c].numpy(), cmap='inferno', vmin=0, vmax=1)
        axes[r, 0].set_title(f'{title} ({weights})', loc='left', fontsize=9)
    for ax in axes.flat:
        ax.axis('off')
    fig.suptitle('Feature maps after the second block of ScalableViT-S', fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--image', action='append', default=[], help='input image (repeat for more columns)')
    parser.add_argument('--checkpoint', help='ScalableViT-S weights (ours or released)')
    parser.add_argument('--wsa-checkpoint', help='weights of a model trained with WSA blocks')
    parser.add_argument('--ssa-rc1-checkpoint', help='weights of a model trained with SSA at r_c = 1')
    parser.add_argument('--size', type=int, default=224, help='input size')
    parser.add_argument('--seed', type=int, default=0, help='seed for random weights')
    parser.add_argument('--out', type=Path, default=Path('figures/figure1.png'))
    args = parser.parse_args()
    for path in [*args.image, args.checkpoint, args.wsa_checkpoint, args.ssa_rc1_checkpoint]:
        if path and not Path(path).is_file():
            parser.error(f'{path} does not exist')

    torch.manual_seed(args.seed)
    base = timm.create_model('scalable_vit_small').eval()
    base_weights = load_weights(base, args.checkpoint)
    if args.image:
        images, shown = load_images(args.image, args.size)
    else:
        stand_in = Path(args.out).with_name('.stand_in.png')
        synthetic_image(args.size).save(stand_in)
        images, shown = load_images([str(stand_in)], args.size)
        stand_in.unlink()
    rows = []
    for kind, title in ROWS:
        model = make_variant(base, kind)
        weights = {'wsa': args.wsa_checkpoint, 'ssa_rc1': args.ssa_rc1_checkpoint}.get(kind)
        label = load_weights(model, weights) if weights else (
            base_weights if kind == 'ssa' or base_weights == 'random weights' else 'random block, trained stem')
        rows.append((title, label, second_block_features(model, images)))
    draw(shown, rows, args.out)
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
