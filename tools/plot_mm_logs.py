"""Plot training curves from mmengine's JSON logs (detection/ and segmentation/ runs) to a PNG.

    python tools/plot_mm_logs.py detection/work_dirs/CONFIG [more work dirs or scalars.json] --out curves.png

A work dir's `*/vis_data/scalars.json` files (one per start, so resumed runs too) are joined in order. Panels:
training loss and learning rate by iteration, and the validation metrics (COCO mAPs, or mIoU / mAcc / aAcc) at
each evaluation.
"""
import argparse
import json
from pathlib import Path
from typing import Dict, List

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the file-only backend)

VAL_KEYS = ('coco/bbox_mAP', 'coco/segm_mAP', 'coco/bbox_mAP_50', 'mIoU', 'mAcc', 'aAcc')


def find_logs(path: Path) -> List[Path]:
    """The scalars.json files of one run, oldest first (their folders are named by start time)."""
    if path.is_file():
        return [path]
    logs = sorted(path.glob('*/vis_data/scalars.json'))
    if not logs:
        raise SystemExit(f'error: no */vis_data/scalars.json under {path}; pass the work dir of a training run')
    return logs


def read_run(paths: List[Path]) -> Dict[str, List[Dict]]:
    train, val = [], []
    for path in paths:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise SystemExit(f'error: {path}:{number} is not a JSON line ({e})')
            (train if 'loss' in row else val if any(k in row for k in VAL_KEYS) else []).append(row)
    if not train and not val:
        raise SystemExit(f'error: {paths[0]} has no training or validation entries')
    return dict(train=train, val=val)


def plot(runs: List[Path], out: Path) -> None:
    fig, (ax_loss, ax_lr, ax_val) = plt.subplots(1, 3, figsize=(13, 3.4))
    for run in runs:
        log = read_run(find_logs(run))
        prefix = f'{run.name} ' if len(runs) > 1 else ''
        iterations = [row.get('iter', row['step']) for row in log['train']]
        ax_loss.plot(iterations, [row['loss'] for row in log['train']], label=f'{prefix}loss')
        ax_lr.plot(iterations, [row['lr'] for row in log['train'] if 'lr' in row], label=f'{prefix}lr')
        for key in VAL_KEYS:
            rows = [row for row in log['val'] if key in row and row[key] >= 0]
            if rows:
                values = [row[key] * (100 if key.startswith('coco/') else 1) for row in rows]
                ax_val.plot([row['step'] for row in rows], values, marker='o', label=f'{prefix}{key}')
    for ax, title, xlabel in ((ax_loss, 'training loss', 'iteration'), (ax_lr, 'learning rate', 'iteration'),
                              (ax_val, 'validation (%)', 'evaluation step (epoch or iteration)')):
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    print(f'wrote {out}')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('logs', nargs='+', type=Path, help='work dirs or scalars.json files')
    parser.add_argument('--out', type=Path, default=Path('curves.png'))
    args = parser.parse_args()
    plot(args.logs, args.out)


if __name__ == '__main__':
    main()
