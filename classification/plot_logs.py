"""Plot the training curves in one or more `log.txt` files (a JSON line per epoch) to a PNG.

    python plot_logs.py runs/small/log.txt [runs/base/log.txt ...] --out curves.png
"""
import argparse
import json
from pathlib import Path
from typing import Dict, List

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the file-only backend)

PANELS = (
    ('loss', (('train_loss', 'train'), ('test_loss', 'val'))),
    ('top-1 accuracy (%)', (('test_acc1', 'val top-1'),)),
    ('top-5 accuracy (%)', (('test_acc5', 'val top-5'),)),
    ('learning rate', (('train_lr', 'lr'),)),
)


def read_log(path: Path) -> List[Dict]:
    if not path.is_file():
        raise SystemExit(f'error: {path} does not exist')
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise SystemExit(f'error: {path}:{number} is not a JSON line ({e})')
    if not rows:
        raise SystemExit(f'error: {path} has no epochs logged yet')
    return rows


def plot_logs(logs: List[Path], out: Path) -> None:
    fig, axes = plt.subplots(1, len(PANELS), figsize=(4.2 * len(PANELS), 3.4))
    for log in logs:
        rows = read_log(log)
        run = log.parent.name or str(log)
        epochs = [row['epoch'] for row in rows]
        for ax, (title, series) in zip(axes, PANELS):
            for key, label in series:
                if key in rows[0]:
                    name = label if len(logs) == 1 else f'{run} {label}'
                    ax.plot(epochs, [row[key] for row in rows], marker='.', label=name)
            ax.set_title(title)
            ax.set_xlabel('epoch')
            ax.grid(alpha=0.3)
    for ax in axes:
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    print(f'wrote {out}')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('logs', nargs='+', type=Path, help='log.txt files written by main.py')
    parser.add_argument('--out', type=Path, default=Path('curves.png'))
    args = parser.parse_args()
    plot_logs(args.logs, args.out)


if __name__ == '__main__':
    main()
