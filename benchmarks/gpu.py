"""The GPU benchmark in one command (planned for under 10 minutes on one H100): the paper's Table-6-style
throughput and the dense work rates against MMDetection's Swin-T, by running benchmark.py and dense.py with
their GPU settings (each prints its own table; the rows, the rounds and the ratios are theirs).

    .venv/bin/python benchmarks/gpu.py [--json-dir DIR]

1. benchmark.py --device cuda --batch-size 64 --amp: 224x224, bfloat16 autocast, one model per family and timm's
   Swin-T; img/s (`infer` rows: the paper's Table 6 setting), work rate and rate/base against Swin-T, 2 rounds.
2. dense.py --device cuda --amp at 800x1344, batch 2: every family's OpenMMLab backbone and MMDetection's Swin-T
   and Swin-S (four outputs), time, work rate and the ratio to Swin-T's work rate, 1 round (the work is counted
   on the CPU, once per model).
"""
import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
# (title, script, options, JSON file name)
STEPS = (
    ('Table-6 throughput: 224x224, batch 64, bfloat16 AMP', 'benchmark.py',
     ['--device', 'cuda', '--batch-size', '64', '--amp', '--no-variants', '--rounds', '2'], 'gpu_224.json'),
    ('Dense backbones: 800x1344, batch 2, bfloat16 AMP', 'dense.py',
     ['--device', 'cuda', '--amp', '--sizes', '800x1344', '--batch-sizes', '2', '--rounds', '1'], 'gpu_dense.json'),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--json-dir', type=Path, help='also write each table\'s rows here (gpu_224.json, '
                                                      'gpu_dense.json)')
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit('error: benchmarks/gpu.py needs a CUDA device (torch.cuda.is_available() is False); on '
                         'CPU run benchmarks/benchmark.py and benchmarks/dense.py')
    if args.json_dir:
        args.json_dir.mkdir(parents=True, exist_ok=True)
    print(f'{torch.cuda.get_device_name()}, torch {torch.__version__} (CUDA {torch.version.cuda})', flush=True)
    start = time.monotonic()
    for title, script, options, json_name in STEPS:
        print(f'\n== {title} ({script} {" ".join(options)})', flush=True)
        json_option = ['--json', str(args.json_dir / json_name)] if args.json_dir else []
        result = subprocess.run([sys.executable, str(HERE / script), *options, *json_option])
        if result.returncode != 0:
            raise SystemExit(f'error: {script} failed (exit status {result.returncode})')
        print(f'-- {time.monotonic() - start:.0f} s so far', flush=True)


if __name__ == '__main__':
    main()
