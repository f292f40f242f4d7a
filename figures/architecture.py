"""Draw the ScalableViT architecture from the model's own settings (`ARCH_SETTINGS`) to a PNG.

    python figures/architecture.py --variant small --out figures/architecture.png
"""
import argparse
from pathlib import Path

import matplotlib

from scalablevit.scalable_vit import ARCH_SETTINGS, ScalableViT

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the file-only backend)
from matplotlib.patches import FancyBboxPatch  # noqa: E402

COLOURS = {'embed': '#d9e4f5', 'iwsa': '#f6d7a7', 'ssa': '#b9e3c6', 'peg': '#e8d1f0', 'head': '#eeeeee'}


def box(ax, x: float, y: float, w: float, h: float, text: str, colour: str, fontsize: int = 8) -> None:
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle='round,pad=0.02,rounding_size=0.08', fc=colour, ec='#555'))
    ax.text(x + w / 2, y + h / 2, text, ha='center', va='center', fontsize=fontsize)


def draw(variant: str, out: Path) -> None:
    settings = dict(ARCH_SETTINGS[variant])
    defaults = ScalableViT.__init__.__defaults__
    names = ScalableViT.__init__.__code__.co_varnames[1:ScalableViT.__init__.__code__.co_argcount]
    arguments = dict(zip(names[-len(defaults):], defaults), **settings)
    fig, ax = plt.subplots(figsize=(13, 4.6))
    stage_w, gap, resolution = 2.6, 0.45, 4
    for i, (dim, heads, depth, ratio, sr) in enumerate(zip(
            arguments['embed_dims'], arguments['num_heads'], arguments['depths'], arguments['channel_ratios'],
            arguments['sr_ratios'])):
        x = 0.6 + i * (stage_w + gap)
        ax.add_patch(FancyBboxPatch((x - 0.1, 0.2), stage_w + 0.2, 3.55, boxstyle='round,pad=0.02', fc='white',
                                    ec='#999', ls='--'))
        ax.text(x + stage_w / 2, 3.9, f'Stage {i + 1}:  H/{resolution} × W/{resolution} × {dim}', ha='center',
                fontsize=9, weight='bold')
        kernel = '7×7/4' if i == 0 else '3×3/2'
        box(ax, x, 3.0, stage_w, 0.5, f'conv patch embedding {kernel} + LN', COLOURS['embed'])
        box(ax, x, 2.3, stage_w / 2 - 0.05, 0.55, f'IWSA + LIM\nwindow {arguments["window_size"]}',
            COLOURS['iwsa'])
        box(ax, x + stage_w / 2 + 0.05, 2.3, stage_w / 2 - 0.05, 0.55, 'PEG\n3×3 dw conv', COLOURS['peg'])
        box(ax, x, 1.6, stage_w, 0.55, f'SSA  ($r_n$ = 1/{sr * sr}, $r_c$ = {ratio:g})', COLOURS['ssa'])
        box(ax, x, 0.9, stage_w, 0.55, f'× {depth // 2}: IWSA, SSA alternating' if depth > 2 else 'IWSA, SSA',
            'white')
        ax.text(x + stage_w / 2, 0.45, f'{heads} heads, MLP ratio {arguments["mlp_ratio"]:g}, {depth} blocks',
                ha='center', fontsize=8)
        if i:
            ax.annotate('', xy=(x - 0.1, 2.0), xytext=(x - gap + 0.1, 2.0),
                        arrowprops=dict(arrowstyle='->', color='#555'))
        resolution *= 2
    x_head = 0.6 + 4 * (stage_w + gap)
    box(ax, x_head, 1.4, 1.8, 1.2, f'LN → mean\n→ MLP head\n{arguments["embed_dims"][-1]}→'
        f'{arguments["classifier_hidden_dim"]}→classes', COLOURS['head'])
    ax.annotate('', xy=(x_head, 2.0), xytext=(x_head - gap + 0.1, 2.0), arrowprops=dict(arrowstyle='->', color='#555'))
    ax.set_xlim(0, x_head + 2.2)
    ax.set_ylim(0, 4.3)
    ax.axis('off')
    ax.set_title(f'ScalableViT-{variant[0].upper()}: 4 stages of alternating IWSA and SSA blocks', fontsize=11)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    print(f'wrote {out}')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--variant', choices=sorted(ARCH_SETTINGS), default='small')
    parser.add_argument('--out', type=Path, default=Path('figures/architecture.png'))
    args = parser.parse_args()
    draw(args.variant, args.out)


if __name__ == '__main__':
    main()
