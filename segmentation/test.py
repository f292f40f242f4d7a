"""Evaluate a segmenter checkpoint on the config's test set.

    python test.py CONFIG CHECKPOINT [--eval mIoU] [--aug-test]

`--eval` picks the IoU metrics (mIoU, mDice, mFscore); `--aug-test` evaluates with the config's test-time
augmentation: scales 0.5, 0.75, 1.0, 1.25, 1.5, 1.75 of the test size, each also flipped (the paper's MS + flip).
"""
from scalablevit.openmmlab.runner import test

METRICS = ('mIoU', 'mDice', 'mFscore')


def add_arguments(parser):
    parser.add_argument('--eval', nargs='+', metavar='METRIC', help=', '.join(METRICS))
    parser.add_argument('--aug-test', '--tta', action='store_true', dest='aug_test',
                        help='multi-scale + flip test-time augmentation')


def adjust_config(cfg, args):
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


if __name__ == '__main__':
    test(add_arguments=add_arguments, adjust_config=adjust_config)
