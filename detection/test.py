"""Evaluate a detector checkpoint on the config's test set with the COCO metric.

    python test.py CONFIG CHECKPOINT [--eval bbox segm] [--out results.pkl]

`--eval` picks the COCO metrics (bbox, segm, proposal); the original spelling `--eval mAP` means every
metric the model supports (bbox, plus segm for Mask R-CNN). Without it the config's metrics are used.
"""
from scalablevit.openmmlab.runner import test

METRICS = ('bbox', 'segm', 'proposal', 'proposal_fast')


def add_arguments(parser):
    parser.add_argument('--eval', nargs='+', metavar='METRIC', help=f'{", ".join(METRICS)} or mAP')
    parser.add_argument('--out', help='also dump the raw results to this .pkl file')


def adjust_config(cfg, args):
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


def after_build(runner, args):
    if args.out:
        from mmdet.evaluation import DumpDetResults
        if not args.out.endswith(('.pkl', '.pickle')):
            raise SystemExit('error: --out must be a .pkl file')
        runner.test_evaluator.metrics.append(DumpDetResults(out_file_path=args.out))


if __name__ == '__main__':
    test(add_arguments=add_arguments, adjust_config=adjust_config, after_build=after_build)
