"""Evaluate a detector checkpoint on the config's test set with the COCO metric.

    python test.py CONFIG CHECKPOINT [--eval bbox segm] [--out results.pkl | --out DIR] [--show-dir DIR]

`--eval` picks the COCO metrics (bbox, segm, proposal); the original spelling `--eval mAP` means every
metric the model supports (bbox, plus segm for Mask R-CNN). Without it the config's metrics are used.
`--out FILE.pkl` dumps the raw results (MMDetection's DumpDetResults); `--out DIR` writes the results in COCO's
results format as CocoMetric's `outfile_prefix` does: DIR/results.bbox.json (and results.segm.json for Mask
R-CNN), moved there whole once evaluated. `--show-dir DIR` draws every test image with its ground truth beside
its detections scoring at least `--show-score-thr` (DIR/NAME.png), as MMDetection's visualization hook does.
"""
from pathlib import Path

from scalablevit.openmmlab.predictions import (
    DrawTestResultsHook,
    PublishOutputsHook,
    metric_configs,
    prepare_staging_dir,
)
from scalablevit.openmmlab.runner import test

METRICS = ('bbox', 'segm', 'proposal', 'proposal_fast')


def add_arguments(parser):
    parser.add_argument('--eval', nargs='+', metavar='METRIC', help=f'{", ".join(METRICS)} or mAP')
    parser.add_argument('--out', help='FILE.pkl: also dump the raw results; DIR: also write the results as COCO '
                                      'results JSON (DIR/results.bbox.json, results.segm.json)')
    parser.add_argument('--show-dir', help='draw each test image, ground truth beside detections, into this folder')
    parser.add_argument('--show-score-thr', type=float, default=0.3, help='--show-dir: draw detections scoring '
                                                                          'at least this')


def adjust_config(cfg, args):
    adjust_outputs(cfg, args)
    if not args.eval:
        return
    has_masks = cfg.model.get('roi_head', {}).get('mask_head') is not None
    metrics = []
    for name in args.eval:
        if name == 'mAP':
            metrics += ['bbox', 'segm'] if has_masks else ['bbox']
        elif name in METRICS:
            metrics.append(name)
        else:
            raise SystemExit(f'error: unknown --eval metric {name!r}; use {", ".join(METRICS)} or mAP')
    if 'segm' in metrics and not has_masks:
        raise SystemExit('error: --eval segm needs a model with a mask head (Mask R-CNN)')
    cfg.test_evaluator.metric = list(dict.fromkeys(metrics))


def adjust_outputs(cfg, args):
    """`--out DIR`: the config's CocoMetric writes its results JSON into the staging folder."""
    if not args.out or args.out.endswith(('.pkl', '.pickle')):
        return
    if Path(args.out).suffix:
        raise SystemExit(f'error: --out {args.out}: pass FILE.pkl (raw results) or a folder (COCO results JSON)')
    coco = metric_configs(cfg.test_evaluator, 'CocoMetric')
    if not coco:
        raise SystemExit('error: --out DIR writes the results of a CocoMetric, which the config\'s test_evaluator '
                         'lacks; pass --out FILE.pkl')
    staging = prepare_staging_dir(args.out)
    for metric in coco:
        metric['outfile_prefix'] = str(staging / 'results')


def after_build(runner, args):
    if args.out and args.out.endswith(('.pkl', '.pickle')):
        from mmdet.evaluation import DumpDetResults
        runner.test_evaluator.metrics.append(DumpDetResults(out_file_path=args.out))
    elif args.out:
        runner.register_hook(PublishOutputsHook(Path(args.out)))
    if args.show_dir:
        runner.register_hook(DrawTestResultsHook(args.show_dir, pred_score_thr=args.show_score_thr))


if __name__ == '__main__':
    test(add_arguments=add_arguments, adjust_config=adjust_config, after_build=after_build)
