"""Plot training curves to a PNG, from classification and from detection/segmentation runs.

    python tools/plot_logs.py classification/output/small/log.txt [more log.txt] --out curves.png
    python tools/plot_logs.py detection/work_dirs/CONFIG [more work dirs or scalars.json] --out curves.png

Two log readers, one plot: `classification/main.py`'s `log.txt` (a JSON line per epoch) and mmengine's
`*/vis_data/scalars.json` (one file per start of a run, so resumed runs are joined in order). Panels: training
loss, learning rate, and the validation metrics (top-1/top-5, COCO mAPs, or mIoU / mAcc / aAcc).
"""
import argparse
import json
from pathlib import Path
from typing import Dict, List, NamedTuple

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the file-only backend)

MM_VAL_KEYS = ('coco/bbox_mAP', 'coco/segm_mAP', 'coco/bbox_mAP_50', 'mIoU', 'mAcc', 'aAcc')


class Curves(NamedTuple):
    """One run's curves: {label: (x, y)} per panel, and the x-axis unit of the training panels."""
    train_unit: str
    loss: Dict[str, tuple]
    lr: Dict[str, tuple]
    val: Dict[str, tuple]


def read_json_lines(paths: List[Path]) -> List[Dict]:
    rows = []
    for path in paths:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise SystemExit(f'error: {path}:{number} is not a JSON line ({e})')
    if not rows:
        raise SystemExit(f'error: {paths[0]} has nothing logged yet')
    return rows


def read_classification_log(path: Path) -> Curves:
    """`log.txt` of classification/main.py: per epoch train_loss, train_lr, test_loss, test_acc1/5."""
    rows = read_json_lines([path])
    epochs = [row['epoch'] for row in rows]

    def series(key):
        return (epochs, [row[key] for row in rows]) if key in rows[0] else None
    loss = {'train': series('train_loss'), 'val': series('test_loss')}
    val = {'val top-1': series('test_acc1'), 'val top-5': series('test_acc5')}
    return Curves('epoch', loss, {'lr': series('train_lr')}, val)


def read_mmengine_run(path: Path) -> Curves:
    """mmengine's scalars.json files of a work dir (or one file): loss and lr by iteration, metrics (%)."""
    paths = [path] if path.is_file() else sorted(path.glob('*/vis_data/scalars.json'))
    if not paths:
        raise SystemExit(f'error: no */vis_data/scalars.json under {path}; pass the work dir of a training run')
    rows = read_json_lines(paths)
    train = [row for row in rows if 'loss' in row]
    iterations = [row.get('iter', row['step']) for row in train]
    val = {}
    for key in MM_VAL_KEYS:
        picked = [row for row in rows if key in row and row[key] >= 0]
        if picked:
            scale = 100 if key.startswith('coco/') else 1
            val[key] = ([row['step'] for row in picked], [row[key] * scale for row in picked])
    return Curves('iteration', {'loss': (iterations, [row['loss'] for row in train])},
                  {'lr': (iterations, [row['lr'] for row in train if 'lr' in row])}, val)


def read_run(path: Path) -> Curves:
    if not path.exists():
        raise SystemExit(f'error: {path} does not exist')
    if path.is_file() and path.name != 'scalars.json':
        return read_classification_log(path)
    return read_mmengine_run(path)


def plot(paths: List[Path], out: Path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    runs = [(path, read_run(path)) for path in paths]
    for path, curves in runs:
        prefix = f'{path.parent.name if path.is_file() else path.name} ' if len(paths) > 1 else ''
        for ax, panel in zip(axes, (curves.loss, curves.lr, curves.val)):
            for label, xy in panel.items():
                if xy is not None and xy[1]:
                    ax.plot(*xy, marker='.', label=prefix + label)
    unit = runs[0][1].train_unit
    for ax, title, xlabel in ((axes[0], 'loss', unit), (axes[1], 'learning rate', unit),
                              (axes[2], 'validation (%)', 'epoch or iteration')):
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
    parser.add_argument('logs', nargs='+', type=Path, help='log.txt files, work dirs or scalars.json files')
    parser.add_argument('--out', type=Path, default=Path('curves.png'))
    args = parser.parse_args()
    plot(args.logs, args.out)


if __name__ == '__main__':
    main()
