"""Backbone speed, work and memory at detection and segmentation sizes, as MMDetection / MMSegmentation run them.

    python benchmarks/dense.py                    # CPU: 800x1344 and 1024x2048, batch 1 and 2, every family, 3 rounds
    python benchmarks/dense.py --sizes 800x1344 --batch-sizes 1 --models scalablevit-s swin-t
    python benchmarks/dense.py --curve --plot benchmarks/cost_curve.png    # time and memory against pixels
    python benchmarks/dense.py --device cuda --amp                          # the same table on a GPU

Each row builds one backbone in a fresh process: this package's OpenMMLab backbones (`ScalableViTBackbone`,
`ScopeViTBackbone`, `SwinVSABackbone`, `ViTAEv2VSABackbone`; four outputs) and MMDetection's own
`SwinTransformer` (Swin-T/S, its Mask R-CNN settings). `infer` is a forward without gradients; `train` a forward
and a backward of the sum of the four maps (what the neck and heads would send back), without an optimizer.

Work is the multiply-adds of one forward (GMACs, `mmengine.analysis`'s rules) with attention's two products
counted wherever they run: on the explicit path as matmuls, inside `scaled_dot_product_attention` as
N·M·(d_qk + d_v) per head from the widths before any zero padding (`sdpa_multiply_adds`); a training step counts
3x the forward. The work rate (GMAC/s) of every row is divided by that of MMDetection's Swin-T at the same size,
batch and mode in the same round; the rounds (`--rounds`, 3 by default) interleave the rows and the table keeps
the median round's time and the median of the per-round ratios. Time: median of `--repeats` steps after
`--warmup`. Memory: `peak MB` is the process's peak, `step MB` what one step adds to the resident set (CPU) or
to allocated memory (CUDA), taken on the first warm-up step. CPU rows run with glibc malloc keeping freed memory
(`benchmark.py`'s cached-malloc setting) unless `--allocator system`.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
from math import prod
from pathlib import Path
from typing import Any, Dict, List, Tuple

import torch

from benchmark import CACHED_MALLOC_ENV, median_ratio, step_memory_mb, timed

# name: (backbone config, as a detection config would give it)
BACKBONES = {
    'scalablevit-s': dict(type='ScalableViTBackbone', arch='small'),
    'scalablevit-b': dict(type='ScalableViTBackbone', arch='base'),
    'scalablevit-l': dict(type='ScalableViTBackbone', arch='large'),
    'scopevit-t': dict(type='ScopeViTBackbone', arch='tiny', norm_outputs=False),
    'swin-t-vsa': dict(type='SwinVSABackbone', arch='tiny'),
    'vitaev2-s-vsa': dict(type='ViTAEv2VSABackbone', arch='s'),
    'swin-t': dict(type='mmdet.SwinTransformer', embed_dims=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24],
                   window_size=7, mlp_ratio=4, qkv_bias=True, drop_path_rate=0.2, patch_norm=True,
                   out_indices=(0, 1, 2, 3)),
    'swin-s': dict(type='mmdet.SwinTransformer', embed_dims=96, depths=[2, 2, 18, 2], num_heads=[3, 6, 12, 24],
                   window_size=7, mlp_ratio=4, qkv_bias=True, drop_path_rate=0.2, patch_norm=True,
                   out_indices=(0, 1, 2, 3)),
}
# one backbone of every family, and the two Swin baselines
DEFAULT_MODELS = ('scalablevit-s', 'scopevit-t', 'swin-t-vsa', 'vitaev2-s-vsa', 'swin-t', 'swin-s')
BASELINE = 'swin-t'  # the backbone a user would take instead: work rates are divided by its rate
DEFAULT_SIZES = ('800x1344', '1024x2048')
# The cost curve: from classification size to segmentation's test size, ~1.6x more pixels per step.
CURVE_SIZES = ('224x224', '320x320', '448x448', '512x512', '640x640', '800x800', '800x1344', '1024x1536',
               '1024x2048')


def parse_size(text: str) -> Tuple[int, int]:
    height, width = text.lower().split('x')
    return int(height), int(width)


def build_backbone(name: str) -> torch.nn.Module:
    from mmdet.registry import MODELS
    from mmengine.registry import init_default_scope

    import scalablevit.openmmlab  # noqa: F401  (registers this package's backbones)
    init_default_scope('mmdet')
    return MODELS.build(dict(BACKBONES[name]))


def unpadded_shape(value: Any) -> List[int]:
    """Shape of a traced tensor before the zero padding that produced it (`F.pad`), if any."""
    from mmengine.analysis.jit_handles import get_shape
    node = value.node()
    if node.kind() in ('aten::pad', 'aten::constant_pad_nd'):
        value = list(node.inputs())[0]
    return get_shape(value)


def sdpa_multiply_adds(inputs: List[Any], outputs: List[Any]) -> int:
    """`mmengine.analysis` handle for `aten::scaled_dot_product_attention`: q·kᵀ and attention·v, i.e.
    N·M·(d_qk + d_v) multiply-adds per batch and head. Widths are taken before the zero padding that
    `layers.sdpa_equal_widths` adds for q/k and v of different widths (padded columns are not work)."""
    q, k, v = (unpadded_shape(value) for value in inputs[:3])
    return prod(q[:-1]) * k[-2] * (q[-1] + v[-1])


def count_work(args: argparse.Namespace) -> Dict:
    """Multiply-adds of one forward at batch 1 (total and attention's products), in this (child) process."""
    from mmengine.analysis import FlopAnalyzer
    model = build_backbone(args.model)
    model.eval()  # (MMDetection's SwinTransformer.train returns None)
    height, width = parse_size(args.size)
    analyzer = FlopAnalyzer(model, (torch.randn(1, 3, height, width),))
    analyzer.set_op_handle('aten::scaled_dot_product_attention', sdpa_multiply_adds)
    analyzer.unsupported_ops_warnings(False)
    analyzer.uncalled_modules_warnings(False)
    with torch.no_grad():
        by_operator = analyzer.by_operator()
    attention = sum(by_operator.get(op, 0) for op in ('matmul', 'bmm', 'scaled_dot_product_attention'))
    return dict(model=args.model, size=args.size, gmacs=sum(by_operator.values()) / 1e9,
                attention_gmacs=attention / 1e9)


def measure(args: argparse.Namespace) -> Dict:
    """One row in this (child) process."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = build_backbone(args.model).to(device)
    height, width = parse_size(args.size)
    images = torch.randn(args.batch_size, 3, height, width, device=device)
    amp_dtype = torch.bfloat16 if args.amp else None

    def autocast():
        return torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)

    if args.mode == 'infer':
        model.eval()

        def step():
            with torch.no_grad(), autocast():
                model(images)
    else:
        model.train()

        def step():
            with autocast():
                loss = sum(feature.float().sum() for feature in model(images))
            loss.backward()
            model.zero_grad(set_to_none=True)

    peak_mb, step_mb = step_memory_mb(step, device)  # the first warm-up step
    times = timed(step, device, args.warmup - 1, args.repeats)
    median = statistics.median(times)
    return dict(model=args.model, mode=args.mode, size=args.size, batch_size=args.batch_size, median_s=median,
                min_s=min(times), max_s=max(times), peak_mb=peak_mb, step_mb=step_mb)


def run_child(args: argparse.Namespace, model: str, size: str, batch_size: int = 1, mode: str = 'count') -> Dict:
    """A row (or with mode 'count', the work count) measured in a fresh process."""
    command = [sys.executable, __file__, '--_child', '--_model', model, '--_size', size, '--_batch', str(batch_size),
               '--_mode', mode, '--device', args.device, '--threads', str(args.threads), '--warmup',
               str(args.warmup), '--repeats', str(args.repeats)] + (['--amp'] if args.amp else [])
    cached = args.device == 'cpu' and args.allocator == 'cached'
    env = dict(os.environ, **(CACHED_MALLOC_ENV if cached else {}))
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        return dict(model=model, mode=mode, size=size, batch_size=batch_size, error=result.stderr.strip()[-300:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def work_rate(row: Dict, work: Dict) -> float:
    """GMAC/s of a timed row: the forward's multiply-adds x batch (x 3 for a training step) per second."""
    gmacs = work['gmacs'] * row['batch_size'] * (3 if row['mode'] == 'train' else 1)
    return gmacs / row['median_s']


def summarise(rounds: Dict[Tuple, List[Dict]], work: Dict[Tuple[str, str], Dict]) -> List[Dict]:
    """One row per (model, size, batch, mode): the median round, its work and work rate, and the medians over
    rounds of its time and work rate divided by the baseline's in the same round."""
    rows = []
    for (model, size, batch, mode), results in rounds.items():
        ok = [r for r in results if 'error' not in r]
        if not ok:
            rows.append(results[0])
            continue
        row = dict(sorted(ok, key=lambda r: r['median_s'])[(len(ok) - 1) // 2], rounds=len(ok))
        count = work.get((model, size), {})
        if 'gmacs' in count:
            row.update(gmacs=count['gmacs'], attention_gmacs=count['attention_gmacs'],
                       gmac_per_s=work_rate(row, count))
        baseline = rounds.get((BASELINE, size, batch, mode), [])
        pairs = [(r, b) for r, b in zip(results, baseline) if 'error' not in r and 'error' not in b]
        if pairs:
            ours, theirs = zip(*pairs)
            row['time_ratio'] = median_ratio(ours, theirs, lambda r: r['median_s'], lambda b: b['median_s'])
            if 'gmacs' in count and 'gmacs' in work.get((BASELINE, size), {}):
                row['rate_ratio'] = median_ratio(ours, theirs, lambda r: work_rate(r, count),
                                                 lambda b: work_rate(b, work[BASELINE, size]))
        rows.append(row)
    return rows


def plot_curve(rows: List[Dict], path: Path) -> None:
    """Time and step memory per image against megapixels, one line per model and mode (log-log)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, (ax_time, ax_memory) = plt.subplots(1, 2, figsize=(11, 4.2))
    for (model, mode) in sorted({(r['model'], r['mode']) for r in rows if 'error' not in r}):
        points = sorted((parse_size(r['size'])[0] * parse_size(r['size'])[1] / 1e6, r) for r in rows
                        if r['model'] == model and r['mode'] == mode and 'error' not in r)
        pixels = [p for p, _ in points]
        style = '-' if mode == 'train' else '--'
        ax_time.plot(pixels, [r['median_s'] / r['batch_size'] for _, r in points], style, marker='o',
                     label=f'{model} {mode}')
        ax_memory.plot(pixels, [r['step_mb'] / r['batch_size'] for _, r in points], style, marker='o',
                       label=f'{model} {mode}')
    for ax, label in ((ax_time, 'seconds per image'), (ax_memory, 'step memory per image (MB)')):
        ax.set_xscale('log')
        ax.set_yscale('log')
        ax.set_xlabel('megapixels per image')
        ax.set_ylabel(label)
        ax.grid(True, which='both', alpha=0.3)
    ax_time.legend(fontsize=8)
    fig.suptitle('Backbone cost against input size (forward; forward + backward of the four maps)')
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--models', nargs='+', default=None, choices=sorted(BACKBONES))
    parser.add_argument('--sizes', nargs='+', default=None, help='HxW, e.g. 800x1344')
    parser.add_argument('--batch-sizes', nargs='+', type=int, default=None)
    parser.add_argument('--modes', nargs='+', default=['infer', 'train'], choices=['infer', 'train'])
    parser.add_argument('--curve', action='store_true',
                        help='the cost curve: ScalableViT-S and Swin-T at 224x224 ... 1024x2048, batch 1')
    parser.add_argument('--plot', type=Path, help='with --curve: write the plot here (PNG)')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--threads', type=int, default=torch.get_num_threads())
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--rounds', type=int, default=3, help='interleaved rounds; the table keeps their medians')
    parser.add_argument('--allocator', choices=['cached', 'system'], default='cached',
                        help='CPU rows: glibc malloc keeping freed memory (default) or its default settings')
    parser.add_argument('--no-work', dest='work', action='store_false', help='skip counting multiply-adds')
    parser.add_argument('--amp', action='store_true', help='bfloat16 autocast')
    parser.add_argument('--json', type=Path, help='write all rows here')
    for hidden in ('--_model', '--_size', '--_batch', '--_mode'):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    parser.add_argument('--_child', action='store_true', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        args.model, args.size, args.batch_size, args.mode = args._model, args._size, int(args._batch), args._mode
        print(json.dumps(count_work(args) if args.mode == 'count' else measure(args)))
        return
    if args.warmup < 1:
        parser.error('--warmup must be at least 1: memory is measured on the first warm-up step')
    models = args.models or (['scalablevit-s', 'swin-t'] if args.curve else list(DEFAULT_MODELS))
    sizes = args.sizes or list(CURVE_SIZES if args.curve else DEFAULT_SIZES)
    batch_sizes = args.batch_sizes or ([1] if args.curve else [1, 2])
    for size in sizes:
        parse_size(size)  # fail early on a malformed size

    allocator = f', {args.allocator} malloc' if args.device == 'cpu' else ''
    print(f'device {args.device}, {args.threads} threads{", bf16 autocast" if args.amp else ""}{allocator}; '
          f'backbone only, four outputs; warmup {args.warmup}, median of {args.repeats}, {args.rounds} round(s); '
          f'work rates divided by {BASELINE}\'s in the same round', flush=True)
    work: Dict[Tuple[str, str], Dict] = {}
    if args.work:
        for model in models:
            for size in sizes:
                print(f'  counting {model} {size}', file=sys.stderr, flush=True)
                work[model, size] = run_child(args, model, size)
    plan = [(model, size, batch, mode) for size in sizes for batch in batch_sizes for mode in args.modes
            for model in models]
    rounds: Dict[Tuple, List[Dict]] = {key: [] for key in plan}
    for index in range(args.rounds):
        for key in plan:
            print(f'  round {index + 1}/{args.rounds}: {" ".join(map(str, key))}', file=sys.stderr, flush=True)
            rounds[key].append(run_child(args, *key))
    rows = summarise(rounds, work)
    header = (f'{"model":14s} {"size":>10s} {"batch":>5s} {"mode":5s} {"GMACs":>7s} {"attn":>6s} {"median s":>9s} '
              f'{"spread s":>15s} {"GMAC/s":>7s} {"rate/base":>9s} {"time/base":>9s} {"peak MB":>8s} {"step MB":>8s}')
    print(header + '\n' + '-' * len(header), flush=True)
    for row in rows:
        key = f'{row["model"]:14s} {row["size"]:>10s} {row["batch_size"]:5d} {row["mode"]:5s}'
        if 'error' in row:
            print(f'{key} failed: {row["error"].splitlines()[-1]}', flush=True)
            continue

        def number(name: str, spec: str) -> str:
            return format(row[name], spec) if name in row else '-'
        print(f'{key} {number("gmacs", "7.1f"):>7s} {number("attention_gmacs", "6.1f"):>6s} {row["median_s"]:9.3f} '
              f'{row["min_s"]:7.3f}-{row["max_s"]:<7.3f} {number("gmac_per_s", "7.1f"):>7s} '
              f'{number("rate_ratio", "9.2f"):>9s} {number("time_ratio", "9.2f"):>9s} {row["peak_mb"]:8.0f} '
              f'{row["step_mb"]:8.0f}', flush=True)
    if args.json:
        args.json.write_text(json.dumps(dict(device=args.device, threads=args.threads, allocator=args.allocator,
                                             baseline=BASELINE, rounds=args.rounds, rows=rows), indent=2))
        print(f'wrote {args.json}')
    if args.plot:
        plot_curve(rows, args.plot)
        print(f'wrote {args.plot}')


if __name__ == '__main__':
    os.environ.setdefault('PYTHONWARNINGS', 'ignore')
    main()
