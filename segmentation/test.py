"""Evaluate a segmenter checkpoint on the config's test set.

    python test.py CONFIG CHECKPOINT [--eval mIoU] [--aug-test] [--out DIR] [--show-dir DIR]

`--eval` picks the IoU metrics (mIoU, mDice, mFscore); `--aug-test` evaluates with the config's test-time
augmentation: scales 0.5, 0.75, 1.0, 1.25, 1.5, 1.75 of the test size, each also flipped (the paper's MS + flip).
`--out DIR` also writes the predicted label maps, DIR/NAME.png per test image, as MMSegmentation's IoUMetric
`output_dir` writes them (grey PNGs of the label indices, + 1 for datasets with `reduce_zero_label` such as
ADE20K: the dataset's annotation convention), moved there whole once evaluated. `--show-dir DIR` draws every
test image with its ground truth beside its prediction (DIR/NAME.png), as MMSegmentation's visualization hook.
"""
from pathlib import Path

from scalablevit.openmmlab.predictions import (
    DrawTestResultsHook,
    PublishOutputsHook,
    metric_configs,
    prepare_staging_dir,
)
from scalablevit.openmmlab.runner import test

METRICS = ('mIoU', 'mDice', 'mFscore')


def add_arguments(parser):
    parser.add_argument('--eval', nargs='+', metavar='METRIC', help=', '.join(METRICS))
    parser.add_argument('--aug-test', '--tta', action='store_true', dest='aug_test',
                        help='multi-scale + flip test-time augmentation')
    parser.add_argument('--out', help='also write the predicted label maps (PNG) into this folder')
    parser.add_argument('--show-dir', help='draw each test image, ground truth beside prediction, into this folder')


def adjust_config(cfg, args):
    if args.out:
        metrics = metric_configs(cfg.test_evaluator, 'IoUMetric')
        if not metrics:
            raise SystemExit('error: --out writes the label maps of an IoUMetric, which the config\'s test_evaluator '
                             'lacks')
        staging = prepare_staging_dir(args.out)
        for metric in metrics:
            metric['output_dir'] = str(staging)
    if args.eval:
        unknown = [m for m in args.eval if m not in METRICS]
        if unknown:
            raise SystemExit(f'error: unknown --eval metric(s) {unknown}; use {", ".join(METRICS)}')
        cfg.test_evaluator.iou_metrics = list(args.eval)
    if args.aug_test:
        if 'tta_pipeline' not in cfg or 'tta_model' not in cfg:
            raise SystemExit('error: --aug-test needs tta_pipeline and tta_model in the config')
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        cfg.tta_model.module = cfg.model
        cfg.model = cfg.tta_model


def after_build(runner, args):
    if args.out:
        runner.register_hook(PublishOutputsHook(Path(args.out)))
    if args.show_dir:
        runner.register_hook(DrawTestResultsHook(args.show_dir))


if __name__ == '__main__':
    test(add_arguments=add_arguments, adjust_config=adjust_config, after_build=after_build)
