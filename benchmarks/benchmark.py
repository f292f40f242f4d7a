"""Speed, work rate and memory of every family against timm's Swin-T and the machine's matmul peak (224x224).

    python benchmarks/benchmark.py                          # CPU: batch 8, 224x224, every family and Swin-T
    python benchmarks/benchmark.py --models scalable_vit_small scalable_vit_base scalable_vit_large \
        swin_tiny_patch4_window7_224 twins_svt_small        # ScalableViT S/B/L (+ explicit and ckpt rows)
    python benchmarks/benchmark.py --device cuda --batch-size 64 --amp   # the paper's Table 6 setting
    python benchmarks/benchmark.py --models scalable_vit_small --modes infer --compile --json out.json

For every model and mode it reports the median time of `--repeats` timed steps after `--warmup` steps (and
the spread, min to max), images per second, memory, the work per image (GMACs: multiply-adds counted by fvcore's
rules, attention's products included; x 3 for a training step), the work rate (GMAC/s) as a fraction of the
measured matmul peak (2 FLOPs per multiply-add), and divided by timm Swin-T's work rate in the same round
(`rate/base`, when Swin-T is among the models). Rows are interleaved over `--rounds` (3 by default) and the
median round is kept.
`explicit` rows run ScalableViT's attention as the released code does (softmax(q·kᵀ)·v spelled out); `ckpt`
rows train with gradient checkpointing. Each row runs in its own process. Memory is measured over one extra
step: `peak MB` is the process's peak (CPU: resident set; CUDA: allocated), `step MB` what the step added on
top of what was held before it (activations, gradients, temporaries; weights and optimizer state excluded),
`tensor MB` the same for the tensors alone (on CPU, resident memory also holds what malloc keeps and
fragments; `tensor MB` is what CUDA's allocated-memory peak would report).
On CPU the rows run with glibc malloc keeping freed memory for reuse (`--allocator cached`, the default),
the role jemalloc/tcmalloc play in PyTorch's CPU tuning guides; `--allocator system` keeps glibc's defaults.
The classification data loader can be timed too: `--loader-data PATH` (an ImageFolder train/ folder parent),
and `--loader-shards DIR` the same images as WebDataset shards (`tools/make_shards.py`), at the same workers.
"""
import argparse
import ctypes
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import torch

ROOT = Path(__file__).resolve().parents[1]
# one model of every family, and timm's Swin-T, the baseline whose work rate the others are divided by
DEFAULT_MODELS = ('scalable_vit_small', 'scope_vit_tiny', 'swin_tiny_vsa_patch4_window7_224', 'vitaev2_vsa_s',
                  'swin_tiny_patch4_window7_224')
BASELINE = 'swin_tiny_patch4_window7_224'
# glibc malloc that keeps freed memory for reuse: blocks up to 32 MiB (glibc's maximum) come from the heap,
# which is never trimmed, so steady-state steps do not page-fault fresh memory for every large tensor.
CACHED_MALLOC_ENV = {'MALLOC_MMAP_THRESHOLD_': str(32 * 2 ** 20), 'MALLOC_TRIM_THRESHOLD_': str(2 ** 40)}


def synchronize(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize()


def timed(step, device: torch.device, warmup: int, repeats: int) -> List[float]:
    for _ in range(warmup):
        step()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def matmul_peak(device: torch.device, dtype: torch.dtype, sizes=(1024, 2048, 4096), repeats: int = 10) -> float:
    """GFLOP/s of the fastest square matmul (median of `repeats`): the ceiling for a model made of matmuls."""
    best = 0.
    for size in sizes:
        a = torch.randn(size, size, device=device, dtype=dtype)
        b = torch.randn(size, size, device=device, dtype=dtype)
        times = timed(lambda: a @ b, device, warmup=3, repeats=repeats)
        best = max(best, 2 * size ** 3 / statistics.median(times) / 1e9)
    return best


def median_ratio(results: List[Dict], baseline: List[Dict], rate: Callable[[Dict], float],
                 baseline_rate: Callable[[Dict], float]) -> float:
    """Median over interleaved rounds of a row's rate divided by the baseline's rate in the same round."""
    return statistics.median(rate(r) / baseline_rate(b) for r, b in zip(results, baseline))


def is_package_model(name: str) -> bool:
    """Whether a timm model name is one of this package's models (any input size, FLOPs by scalablevit.flops)."""
    import timm

    import scalablevit  # noqa: F401  (registers the models)
    return timm.models.model_entrypoint(name).__module__.startswith('scalablevit.')


def create_model_for_size(name: str, img_size: int) -> torch.nn.Module:
    """A timm model for `img_size` inputs: models built for one size (Swin, Twins) take `img_size`; this
    package's models and convolutional ones take any size as built."""
    import timm
    if is_package_model(name):
        return timm.create_model(name)
    try:
        return timm.create_model(name, img_size=img_size)
    except TypeError:  # no img_size argument: the model is not tied to one input size
        return timm.create_model(name)


def multiply_adds(name: str, img_size: int) -> float:
    """Multiply-adds per image (fvcore's count), attention's matrix products included."""
    from scalablevit.flops import count
    if is_package_model(name):
        return count(name, (img_size, img_size))['flops'] * 1e9
    from mmengine.analysis import FlopAnalyzer
    model = create_model_for_size(name, img_size).eval()
    for module in model.modules():
        if hasattr(module, 'fused_attn'):
            module.fused_attn = False
    analyzer = FlopAnalyzer(model, (torch.randn(1, 3, img_size, img_size),))
    analyzer.unsupported_ops_warnings(False)
    analyzer.uncalled_modules_warnings(False)
    with torch.no_grad():
        return float(analyzer.total())


def cpu_memory_kb() -> Tuple[int, int]:
    """(current, peak) resident set size of this process in KiB."""
    status = open('/proc/self/status').read()
    return (int(re.search(r'VmRSS:\s+(\d+)', status).group(1)), int(re.search(r'VmHWM:\s+(\d+)', status).group(1)))


def step_memory_mb(step: Callable[[], None], device: torch.device) -> Tuple[float, float]:
    """(peak, added by the step) memory in MiB over one run of `step`."""
    if device.type == 'cuda':
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        return peak / 2 ** 20, (peak - before) / 2 ** 20
    ctypes.CDLL('libc.so.6').malloc_trim(0)  # hand cached free memory back, so the step's growth is visible
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')  # reset the peak resident set size (VmHWM) to the current one
    before, _ = cpu_memory_kb()
    step()
    _, peak = cpu_memory_kb()
    return peak / 1024, (peak - before) / 1024


def cpu_tensor_step_memory_mb(step: Callable[[], None]) -> float:
    """MiB the step's tensors add at their peak on CPU, without malloc's own retention and fragmentation: the
    profiler's memory timeline, the CPU counterpart of CUDA's allocated-memory peak (`step_memory_mb`)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True,
                                record_shapes=True, with_stack=True) as profiler:
        step()
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, 'timeline.json')
        profiler.export_memory_timeline(path, device='cpu')
        _, sizes = json.loads(Path(path).read_text())  # per event: bytes held in each category
    held = [sum(categories) for categories in sizes]
    return (max(held) - held[0]) / 2 ** 20


def measure(args: argparse.Namespace) -> Dict:
    """One row: build the model, time it in one mode, report; runs in a child process."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = create_model_for_size(args.model, args.img_size).to(device)
    if args.variant == 'explicit':
        model.set_fused_attn(False)
    if args.variant == 'ckpt':
        model.set_grad_checkpointing(True)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    images = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=device).to(
        memory_format=memory_format)
    amp_dtype = torch.bfloat16 if args.amp else None
    if args.compile:
        model = torch.compile(model)

    def autocast():
        return torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)

    if args.mode == 'infer':
        model.eval()

        def step():
            with torch.no_grad(), autocast():
                model(images)
    else:
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)  # one kernel over all tensors
        targets = torch.randint(0, 1000, (args.batch_size,), device=device)

        def step():
            with autocast():
                loss = torch.nn.functional.cross_entropy(model(images), targets)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    times = timed(step, device, args.warmup, args.repeats)
    peak_mb, step_mb = step_memory_mb(step, device)
    tensor_mb = step_mb if device.type == 'cuda' else cpu_tensor_step_memory_mb(step)  # CUDA: already tensors
    median = statistics.median(times)
    return dict(model=args.model, variant=args.variant, mode=args.mode, batch_size=args.batch_size,
                img_size=args.img_size, median_s=median, min_s=min(times), max_s=max(times),
                img_per_s=args.batch_size / median, peak_mb=peak_mb, step_mb=step_mb, tensor_mb=tensor_mb)


def run_row(args: argparse.Namespace, model: str, variant: str, mode: str) -> Dict:
    command = [sys.executable, __file__, '--_child', '--_model', model, '--_variant', variant, '--_mode', mode,
               '--device', args.device, '--batch-size', str(args.batch_size), '--img-size', str(args.img_size),
               '--threads', str(args.threads), '--warmup', str(args.warmup), '--repeats', str(args.repeats)]
    command += [flag for flag, on in (('--channels-last', args.channels_last), ('--compile', args.compile),
                                      ('--amp', args.amp)) if on]
    env = dict(os.environ, **(CACHED_MALLOC_ENV if args.allocator == 'cached' else {}))
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(f'error: {model} {variant} {mode} failed:\n{result.stderr[-2000:]}')
    return json.loads(result.stdout.strip().splitlines()[-1])


def loader_throughput(data_path: str, batch_size: int, workers: int, batches: int, shards: bool = False) -> float:
    """Training images per second that the classification pipeline (decode + DeiT augmentation) delivers through
    main.py's training loader: an ImageFolder, or with `shards` WebDataset shards (`--dataset wds`)."""
    sys.path.insert(0, str(ROOT / 'classification'))
    import main as cls_main
    from image_data import build_dataset
    from shards import build_shard_split
    args = cls_main.parse_args(['--data-path', data_path, '--batch-size', str(batch_size), '--num_workers',
                                str(workers), '--dataset', 'wds' if shards else 'folder'])
    args.distributed = False
    dataset, _ = (build_shard_split if shards else build_dataset)(is_train=True, args=args)
    sampler, loader = cls_main.build_train_loader(args, dataset)
    epoch = 0
    sampler.set_epoch(epoch)
    iterator = iter(loader)
    next(iterator)  # start-up of the workers is not throughput
    start, seen = time.perf_counter(), 0
    for _ in range(batches):
        try:
            images, _ = next(iterator)
        except StopIteration:
            epoch += 1
            sampler.set_epoch(epoch)
            iterator = iter(loader)
            images, _ = next(iterator)
        seen += images.shape[0]
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--models', nargs='+', default=list(DEFAULT_MODELS))
    parser.add_argument('--modes', nargs='+', default=['infer', 'train'], choices=['infer', 'train'])
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument('--img-size', type=int, default=224)
    parser.add_argument('--threads', type=int, default=torch.get_num_threads())
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--repeats', type=int, default=10)
    parser.add_argument('--channels-last', action='store_true')
    parser.add_argument('--compile', action='store_true', help='torch.compile the model (compile time excluded)')
    parser.add_argument('--amp', action='store_true', help='bfloat16 autocast')
    parser.add_argument('--allocator', choices=['cached', 'system'], default='cached',
                        help='CPU rows: glibc malloc keeping freed memory (default) or its default settings')
    parser.add_argument('--rounds', type=int, default=3,
                        help='run every row this many times, interleaved, and keep the median round (ratios to '
                             'the baseline: median of the per-round ratios)')
    parser.add_argument('--no-variants', dest='variants', action='store_false',
                        help='skip the explicit-attention and gradient-checkpointing rows')
    parser.add_argument('--loader-data', help='also time the classification data loader on this dataset')
    parser.add_argument('--loader-shards', help='also time the loader on these WebDataset shards of --loader-data '
                                                '(tools/make_shards.py), at the same workers')
    parser.add_argument('--loader-batches', type=int, default=20, help='batches the loader rows time')
    parser.add_argument('--loader-workers', type=int, default=10, help='DataLoader workers (DeiT default: 10)')
    parser.add_argument('--json', type=Path, help='write all results here')
    parser.add_argument('--_child', action='store_true', help=argparse.SUPPRESS)
    parser.add_argument('--_model', help=argparse.SUPPRESS)
    parser.add_argument('--_variant', help=argparse.SUPPRESS)
    parser.add_argument('--_mode', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        args.model, args.variant, args.mode = args._model, args._variant, args._mode
        print(json.dumps(measure(args)))
        return

    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    peak_dtype = torch.bfloat16 if args.amp else torch.float32
    peak = matmul_peak(device, peak_dtype)
    print(f'device {args.device}, {args.threads} threads, batch {args.batch_size}, {args.img_size}x{args.img_size}'
          f'{", channels_last" if args.channels_last else ""}{", torch.compile" if args.compile else ""}'
          f'{", bf16 autocast" if args.amp else ""}'
          f'{f", {args.allocator} malloc" if device.type == "cpu" else ""}; '
          f'matmul peak {peak:.1f} GFLOP/s ({peak_dtype})', flush=True)
    plan = []
    for model in args.models:
        variants = ['fast']
        if args.variants and model.startswith('scalable_vit'):
            variants += ['explicit', 'ckpt']
        plan += [(model, variant, mode) for variant in variants for mode in args.modes
                 if not (variant == 'ckpt' and mode == 'infer')]
    flops_per_image = {model: 2 * multiply_adds(model, args.img_size) for model in args.models}
    # Rounds interleave the rows, so a slow spell of a shared machine does not land on one model only.
    rounds: Dict[Tuple[str, str, str], List[Dict]] = {key: [] for key in plan}
    for index in range(args.rounds):
        for key in plan:
            print(f'  round {index + 1}/{args.rounds}: {" ".join(key)}', file=sys.stderr, flush=True)
            rounds[key].append(run_row(args, *key))

    def gflop_per_s(row: Dict, model: str) -> float:
        work = flops_per_image[model] * (3 if row['mode'] == 'train' else 1)  # backward costs ~2x the forward
        return work * row['img_per_s'] / 1e9

    header = (f'{"model":30s} {"variant":9s} {"mode":5s} {"median s":>9s} {"spread s":>15s} {"img/s":>8s} '
              f'{"GMACs":>6s} {"GMAC/s":>7s} {"% peak":>7s} {"rate/base":>9s} {"peak MB":>8s} {"step MB":>8s} '
              f'{"tensor MB":>9s}')
    print(header + '\n' + '-' * len(header), flush=True)
    rows = []
    for (model, variant, mode), results in rounds.items():
        row = sorted(results, key=lambda r: r['median_s'])[(len(results) - 1) // 2]
        row.update(gflops_per_image=flops_per_image[model] / 1e9, gmacs_per_image=flops_per_image[model] / 2e9,
                   gflop_per_s=gflop_per_s(row, model), peak_gflop_per_s=peak, rounds=len(results))
        row['gmac_per_s'] = row['gflop_per_s'] / 2
        row['fraction_of_peak'] = row['gflop_per_s'] / peak
        baseline = rounds.get((BASELINE, 'fast', mode))
        if baseline:  # the work rate against the baseline's in the same round, median over rounds
            row['rate_ratio'] = median_ratio(results, baseline, lambda r: gflop_per_s(r, model),
                                             lambda b: gflop_per_s(b, BASELINE))
        rows.append(row)
        ratio = f'{row["rate_ratio"]:9.2f}' if 'rate_ratio' in row else f'{"-":>9s}'
        print(f'{model:30s} {variant:9s} {mode:5s} {row["median_s"]:9.3f} '
              f'{row["min_s"]:7.3f}-{row["max_s"]:<7.3f} {row["img_per_s"]:8.1f} {row["gmacs_per_image"]:6.2f} '
              f'{row["gmac_per_s"]:7.1f} {100 * row["fraction_of_peak"]:6.1f}% {ratio} {row["peak_mb"]:8.0f} '
              f'{row["step_mb"]:8.0f} {row["tensor_mb"]:9.0f}', flush=True)
    result = dict(device=args.device, threads=args.threads, allocator=args.allocator, matmul_peak_gflop_per_s=peak,
                  rows=rows)
    if args.loader_data:
        speed = loader_throughput(args.loader_data, args.batch_size, args.loader_workers, args.loader_batches)
        result['loader_img_per_s'] = speed
        print(f'classification loader ({args.loader_workers} workers, DeiT train transforms): {speed:.1f} img/s')
    if args.loader_shards:
        speed = loader_throughput(args.loader_shards, args.batch_size, args.loader_workers, args.loader_batches,
                                  shards=True)
        result['loader_shards_img_per_s'] = speed
        print(f'classification loader on shards ({args.loader_workers} workers): {speed:.1f} img/s')
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
        print(f'wrote {args.json}')


if __name__ == '__main__':
    os.environ.setdefault('PYTHONWARNINGS', 'ignore')
    main()
