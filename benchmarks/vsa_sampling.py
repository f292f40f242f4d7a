"""VSA's key/value resampling on CPU: `F.grid_sample` against exact rewrites of it, in-process A/B.

    python benchmarks/vsa_sampling.py                       # stage 1 and 2 of Swin-T+VSA at 800x1344, batch 1 and 2
    python benchmarks/vsa_sampling.py --rounds 5 --backbone  # and a whole Swin-T+VSA training step

Every candidate replaces `F.grid_sample` inside `scalablevit.vsa.varied_size_window_attention` (patched for the
duration of its timing) and computes the same function to float32 rounding (checked before timing):

* `grid_sample`: the package as it is (ATen's CPU kernel, parallel over the batch·heads slices only).
* `band_gemm`: the separable form. A window's points are an axis-aligned affine grid, so bilinear sampling is
  R_y · X · R_xᵀ per window and head, X the band of rows/columns that the window's points touch. The band width K
  is the widest window's (one host sync); bands are cut from the zero-padded map by slicing shifted s-wide tiles
  (no gather, so the backward is slicing too), and both passes are batched GEMMs, (s x K) @ (K x K·2d) then
  (s x K) @ (K x s·2d), whose backward is GEMMs.
* `kv_split`: `grid_sample` on keys and values as separate slices (2x the slices the CPU kernel parallelises over).

Times: median of `--repeats` calls per round; rounds interleave the candidates; the ratio is candidate ÷
`grid_sample` in the same round (median, min-max over rounds). `fwd` runs without gradients; `train` is a forward
and a backward of a random cotangent (the regressor's gradient included).
"""
import argparse
import statistics
import time
from contextlib import contextmanager
from typing import Callable, Dict, Iterator, Tuple

import torch
import torch.nn.functional as F

GRID_SAMPLE = F.grid_sample
# Swin-T+VSA at 800x1344: the stage-1 map is 200x336 (patch 4), stage 2 100x168
STAGES = {1: dict(size=(200, 336), dim=96, heads=3), 2: dict(size=(100, 168), dim=192, heads=6)}
WINDOW = 7


def shifted_bands(x: torch.Tensor, dim: int, start: int, band: int, step: int, count: int) -> torch.Tensor:
    """Along `dim` (size n) -> (count, band): window a's positions a·step + start + [0, band), cut by slicing
    s-wide tiles shifted by r tiles (r < ceil(band / step)); `x` must hold every position."""
    tiles = -(-band // step)
    x = x.narrow(dim, start, (count + tiles - 1) * step).unflatten(dim, (count + tiles - 1, step))
    parts = [x.narrow(dim, r, count).narrow(dim + 1, 0, min(step, band - r * step)) for r in range(tiles)]
    return torch.cat(parts, dim + 1) if tiles > 1 else parts[0]


def interpolation_matrix(t: torch.Tensor, start: torch.Tensor, band: int) -> torch.Tensor:
    """(..., s) pixel coordinates -> (..., s, band) bilinear weights on the band starting at `start`; the weights
    of floor(t) and floor(t) + 1 as grid_sample computes them (so the gradient at integer t is one-sided too)."""
    floor = t.floor()
    upper = t - floor
    k = (floor - start).long().unsqueeze(-1)
    positions = torch.arange(band, device=t.device)
    return (1 - upper).unsqueeze(-1) * (positions == k) + upper.unsqueeze(-1) * (positions == k + 1)


def band_gemm_grid_sample(input: torch.Tensor, grid: torch.Tensor, **kwargs) -> torch.Tensor:
    """`grid_sample(bilinear, zeros, align_corners=True)` for VSA's window grids, as two batched GEMMs."""
    BH, C, Hp, Wp = input.shape
    s = WINDOW
    nH, nW = Hp // s, Wp // s
    points = grid.view(BH, nH, s, nW, s, 2)
    tx = (points[:, :, 0, :, :, 0] + 1) * ((Wp - 1) / 2)  # BH, nH, nW, s (x of column j)
    ty = (points[:, :, :, :, 0, 1].transpose(2, 3) + 1) * ((Hp - 1) / 2)  # BH, nH, nW, s (y of row i)
    origin_y = (torch.arange(nH) * s).view(1, nH, 1, 1)
    origin_x = (torch.arange(nW) * s).view(1, 1, nW, 1)
    # the in-map pixels each window touches, relative to its default window (out-of-map ones clamped: zero anyway)
    rows = ty.floor().clamp(-1, Hp - 1) - origin_y
    cols = tx.floor().clamp(-1, Wp - 1) - origin_x
    lo_y, hi_y, lo_x, hi_x = torch.stack((rows.amin(), rows.amax(), cols.amin(), cols.amax())).long().tolist()
    Ky, Kx = hi_y - lo_y + 2, hi_x - lo_x + 2
    top, left = max(0, -lo_y), max(0, -lo_x)
    bottom = max(0, lo_y + (nH + -(-Ky // s) - 1) * s - Hp)
    right = max(0, lo_x + (nW + -(-Kx // s) - 1) * s - Wp)
    x = F.pad(input.permute(0, 2, 3, 1), (0, 0, left, right, top, bottom))  # BH, Hpad, Wpad, C
    x = shifted_bands(x, 1, lo_y + top, Ky, s, nH)  # BH, nH, Ky, Wpad, C
    x = shifted_bands(x, 3, lo_x + left, Kx, s, nW)  # BH, nH, Ky, nW, Kx, C
    x = x.permute(0, 1, 3, 4, 2, 5).reshape(-1, Kx, Ky * C)  # BH·nH·nW, Kx, Ky·C
    rx = interpolation_matrix(tx, origin_x + lo_x, Kx).reshape(-1, s, Kx)
    ry = interpolation_matrix(ty, origin_y + lo_y, Ky).reshape(-1, s, Ky)
    x = torch.bmm(rx, x).view(-1, s, Ky, C).transpose(1, 2).reshape(-1, Ky, s * C)  # n, Ky, s_j·C
    x = torch.bmm(ry, x)  # n, s_i, s_j·C
    # n, s_i, s_j, C -> BH, C, Hp, Wp
    return x.view(BH, nH, nW, s, s, C).permute(0, 5, 1, 3, 2, 4).reshape(BH, C, Hp, Wp)


def kv_split_grid_sample(input: torch.Tensor, grid: torch.Tensor, **kwargs) -> torch.Tensor:
    """`grid_sample` over keys and values as separate slices: twice the slices for the kernel's threads."""
    BH, C, Hp, Wp = input.shape
    # BH, 2d, Hp, Wp (channels-last view) -> BH·2, d, Hp, Wp (channels-last view)
    halves = input.permute(0, 2, 3, 1).unflatten(-1, (2, C // 2)).permute(0, 3, 1, 2, 4)
    halves = halves.reshape(BH * 2, Hp, Wp, C // 2).permute(0, 3, 1, 2)
    grid = grid.unsqueeze(1).expand(BH, 2, Hp, Wp, 2).reshape(BH * 2, Hp, Wp, 2)
    return GRID_SAMPLE(halves, grid, **kwargs).view(BH, C, Hp, Wp)


CANDIDATES: Dict[str, Callable] = {
    'grid_sample': GRID_SAMPLE, 'band_gemm': band_gemm_grid_sample, 'kv_split': kv_split_grid_sample}


@contextmanager
def sampler(name: str) -> Iterator[None]:
    """Run VSA with the candidate in place of `F.grid_sample`."""
    F.grid_sample = CANDIDATES[name]
    try:
        yield
    finally:
        F.grid_sample = GRID_SAMPLE


def attention_inputs(stage: int, batch: int, moved: float) -> Tuple[torch.nn.Module, torch.Tensor]:
    """One VSA attention of the stage, its regressor's last conv random (std `moved`; 0: default windows)."""
    from scalablevit.vsa import VSAttention
    spec = STAGES[stage]
    torch.manual_seed(0)
    module = VSAttention(spec['dim'], spec['heads'], WINDOW)
    if moved:
        torch.nn.init.normal_(module.transform[2].weight, std=moved)
    return module, torch.randn(batch, *spec['size'], spec['dim'])


def check_same_function(module: torch.nn.Module, x: torch.Tensor, name: str) -> float:
    """Largest relative difference of output and gradients (input, regressor) between `name` and grid_sample."""
    def run():
        module.zero_grad(set_to_none=True)
        inputs = x.clone().requires_grad_()
        out = module(inputs)
        out.backward(torch.ones_like(out))
        return [out, inputs.grad, module.transform[2].weight.grad]
    reference = run()
    with sampler(name):
        candidate = run()
    return max(((a - b).abs().max() / b.abs().max()).item() for a, b in zip(candidate, reference))


def time_step(step: Callable, repeats: int) -> float:
    step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def attention_steps(module: torch.nn.Module, x: torch.Tensor) -> Dict[str, Callable]:
    cotangent = torch.randn(x.shape)

    def fwd():
        with torch.no_grad():
            module(x)

    def train():
        module(x.requires_grad_()).backward(cotangent)
        module.zero_grad(set_to_none=True)
        x.grad = None
    return dict(fwd=fwd, train=train)


def backbone_steps(size: Tuple[int, int], batch: int) -> Dict[str, Callable]:
    """Swin-T+VSA as benchmarks/dense.py builds it: inference, and forward + backward of the four maps' sum."""
    from dense import build_backbone
    torch.manual_seed(0)
    model = build_backbone('swin-t-vsa')
    images = torch.randn(batch, 3, *size)

    def fwd():
        model.eval()
        with torch.no_grad():
            model(images)

    def train():
        model.train()
        sum(feature.sum() for feature in model(images)).backward()
        model.zero_grad(set_to_none=True)
    return dict(fwd=fwd, train=train)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--stages', type=int, nargs='*', default=[1, 2], choices=sorted(STAGES))
    parser.add_argument('--batch-sizes', type=int, nargs='+', default=[1, 2])
    parser.add_argument('--moved', type=float, nargs='+', default=[0., 0.01],
                        help="std of the regressor's last conv weights (0: a fresh model's default windows)")
    parser.add_argument('--candidates', nargs='+', default=['band_gemm', 'kv_split'],
                        choices=[c for c in CANDIDATES if c != 'grid_sample'])
    parser.add_argument('--modes', nargs='+', default=['fwd', 'train'], choices=['fwd', 'train'])
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--backbone', action='store_true', help='also a whole Swin-T+VSA step at 800x1344')
    parser.add_argument('--threads', type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = ['grid_sample'] + args.candidates

    cases = []  # (label, steps, module and input for the check or None)
    for stage in args.stages:
        for batch in args.batch_sizes:
            for moved in args.moved:
                module, x = attention_inputs(stage, batch, moved)
                cases.append((f'stage {stage} b{batch} moved {moved:g}', attention_steps(module, x), (module, x)))
    if args.backbone:
        for batch in args.batch_sizes:
            cases.append((f'backbone 800x1344 b{batch}', backbone_steps((800, 1344), batch), None))

    print(f'threads {args.threads}; largest regression, relative difference to grid_sample (output, input grad,'
          ' regressor grad):')
    for label, _, check in cases:
        if check is not None:
            with torch.no_grad():
                regression = check[0].project(check[1])[1].abs().max().item()
            print(f'  {label}: |regression| <= {regression:.2f}, '
                  + ', '.join(f'{n} {check_same_function(*check, n):.1e}' for n in args.candidates))

    times = {(label, mode, name): [] for label, _, _ in cases for mode in args.modes for name in names}
    for _ in range(args.rounds):
        for label, steps, _ in cases:
            for mode in args.modes:
                for name in names:
                    with sampler(name):
                        times[label, mode, name].append(time_step(steps[mode], args.repeats))

    header = f'{"case":<28} {"mode":<6} {"grid_sample ms":>14}' + ''.join(
        f' {n + " ms":>12} {"ratio (min-max)":>18}' for n in args.candidates)
    print(header)
    for label, _, _ in cases:
        for mode in args.modes:
            base = times[label, mode, 'grid_sample']
            row = f'{label:<28} {mode:<6} {statistics.median(base) * 1e3:>14.1f}'
            for name in args.candidates:
                ratios = [t / b for t, b in zip(times[label, mode, name], base)]
                row += (f' {statistics.median(times[label, mode, name]) * 1e3:>12.1f}'
                        f' {statistics.median(ratios):>6.2f} ({min(ratios):.2f}-{max(ratios):.2f})')
            print(row)


if __name__ == '__main__':
    main()
