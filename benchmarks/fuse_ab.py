"""ViTAEv2*+VSA inference with and without the PCM's BatchNorms folded into their convolutions, in-process A/B.

    python benchmarks/fuse_ab.py                              # arch 's' dense backbone, 800x1344, batch 1, 3 rounds
    python benchmarks/fuse_ab.py --size 1024x2048 --rounds 5 --threads 2

The dense backbone (`ViTAEv2VSABackbone`, random weights and BatchNorm statistics) is timed as built (eval mode)
and after `fuse()` (a deep copy), checked to give the same features to float32 rounding first. Rounds interleave
the two, alternating which runs first; each time is the median of `--repeats` calls after a warm-up, and the
ratio is fused / unfused in the same round (median, min-max over rounds). Runs with `benchmark.py`'s cached
malloc (the script re-executes itself with it) unless `--allocator system`.
"""
import argparse
import copy
import os
import statistics
import sys

import torch

from benchmark import CACHED_MALLOC_ENV, timed


def parse_size(text: str):
    height, width = (int(v) for v in text.lower().split('x'))
    return height, width


def randomized_batchnorms(model: torch.nn.Module) -> torch.nn.Module:
    """Statistics away from the constructor's identity, so the equality check before timing means something."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.5)
                module.running_var.uniform_(0.1, 2)
                module.weight.normal_(1, 0.2)
                module.bias.normal_(0, 0.5)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--arch', default='s', help="ViTAEv2VSABackbone arch ('s', '48m', 'test')")
    parser.add_argument('--size', default='800x1344', help='HxW')
    parser.add_argument('--batch-size', type=int, default=1)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--allocator', choices=['cached', 'system'], default='cached')
    args = parser.parse_args()
    if args.allocator == 'cached' and any(os.environ.get(k) != v for k, v in CACHED_MALLOC_ENV.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], dict(os.environ, **CACHED_MALLOC_ENV))

    from scalablevit.openmmlab.backbone import ViTAEv2VSABackbone
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    models = {'unfused': randomized_batchnorms(ViTAEv2VSABackbone(arch=args.arch)).eval()}
    models['fused'] = copy.deepcopy(models['unfused']).fuse()
    images = torch.randn(args.batch_size, 3, *parse_size(args.size))
    with torch.no_grad():  # also the warm-up of each
        refs, outs = models['unfused'](images), models['fused'](images)
    worst = max(((o - r).abs().max() / r.abs().max()).item() for o, r in zip(outs, refs))
    assert worst < 1e-5, f'fused features differ from the unfused by {worst:.2e} of their scale'

    times = {name: [] for name in models}
    for i in range(args.rounds):
        for name in (list(models) if i % 2 == 0 else list(models)[::-1]):
            def step(model=models[name]):
                with torch.no_grad():
                    model(images)
            times[name].append(statistics.median(timed(step, images.device, 0, args.repeats)))
        print(f'round {i}: ' + ', '.join(f'{name} {t[-1]:.3f} s' for name, t in times.items()), flush=True)
    ratios = [f / u for f, u in zip(times['fused'], times['unfused'])]
    print(f'ViTAEv2VSABackbone({args.arch!r}) {args.size} batch {args.batch_size}, {args.threads} threads, '
          f'{args.allocator} malloc; max |fused - unfused| / max |unfused| = {worst:.1e}')
    for name, t in times.items():
        print(f'  {name:8s} median {statistics.median(t):.3f} s (min {min(t):.3f}, max {max(t):.3f})')
    print(f'  fused / unfused: {statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f})')


if __name__ == '__main__':
    main()
