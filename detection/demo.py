"""Detect objects in one image and save a picture of the detections.

    python demo.py IMAGE CONFIG CHECKPOINT --out-file result.png [--score-thr 0.3] [--device cuda:0]
"""
import argparse
from pathlib import Path

import mmcv
from mmdet.apis import inference_detector, init_detector
from mmdet.registry import VISUALIZERS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('image', help='image file')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--out-file', required=True, help='where to write the picture (PNG or JPEG)')
    parser.add_argument('--score-thr', type=float, default=0.3, help='hide detections scoring below this')
    parser.add_argument('--device', default='cpu', help='e.g. cuda:0')
    args = parser.parse_args()
    for path in (args.image, args.config, args.checkpoint):
        if not Path(path).is_file():
            raise SystemExit(f'error: {path} does not exist')

    model = init_detector(args.config, args.checkpoint, device=args.device)
    result = inference_detector(model, args.image)
    visualizer = VISUALIZERS.build(model.cfg.visualizer)
    visualizer.dataset_meta = model.dataset_meta
    image = mmcv.imread(args.image, channel_order='rgb')
    visualizer.add_datasample('result', image, data_sample=result, draw_gt=False, show=False,
                              out_file=args.out_file, pred_score_thr=args.score_thr)
    print(f'{len(result.pred_instances)} detections, drawn above score {args.score_thr}: {args.out_file}')


if __name__ == '__main__':
    main()
