"""Detect objects in images; save pictures of the detections and the detections as JSON.

    python demo.py IMAGES... CONFIG CHECKPOINT --out-dir DIR [--score-thr 0.3] [--device cuda:0]
    python demo.py IMAGE CONFIG CHECKPOINT --out-file result.png

IMAGES: image files, folders (searched recursively) or quoted glob patterns. `--out-dir DIR` gets, per image
(NAME: its path inside the folder given, or its file name), MMDetection's DetInferencer layout:
  vis/NAME.png     the detections scoring at least --score-thr drawn on the image;
  preds/NAME.json  every detection: {"image", "labels", "classes", "scores", "bboxes": [[x1, y1, x2, y2], ...]
                   in pixels, and for Mask R-CNN "masks": COCO RLE ({"size", "counts"})}.
`--out-file FILE` writes the picture of one image only. The checkpoint is read by the package's checkpoint
policy and must fit the config's model; each file is written whole.
"""
import argparse
import json
from pathlib import Path

import mmcv
from mmdet.apis import inference_detector, init_detector
from mmdet.registry import VISUALIZERS
from mmdet.structures.mask import encode_mask_results

from scalablevit.images import write_atomically
from scalablevit.openmmlab.predictions import find_demo_images, init_checked, read_image, save_picture


def detections(image: str, result, classes) -> dict:
    """The machine-readable detections of one image (all of them, highest score first as the model gives)."""
    instances = result.pred_instances.cpu()
    labels = instances.labels.tolist()
    out = dict(image=image, labels=labels, classes=[classes[label] for label in labels],
               scores=[round(score, 5) for score in instances.scores.tolist()],
               bboxes=[[round(v, 2) for v in box] for box in instances.bboxes.tolist()])
    if 'masks' in instances:
        rles = encode_mask_results(instances.masks.numpy())
        out['masks'] = [dict(size=rle['size'], counts=rle['counts'].decode()) for rle in rles]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('images', nargs='+', help='image files, folders or quoted glob patterns')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint file')
    output = parser.add_mutually_exclusive_group(required=True)
    output.add_argument('--out-dir', type=Path, help='folder for vis/ (pictures) and preds/ (JSON)')
    output.add_argument('--out-file', type=Path, help='one image: where to write its picture (PNG or JPEG)')
    parser.add_argument('--score-thr', type=float, default=0.3, help='draw detections scoring at least this')
    parser.add_argument('--device', default='cpu', help='e.g. cuda:0')
    args = parser.parse_args()
    found = find_demo_images(args.images, '.png')
    if args.out_file is not None and len(found) != 1:
        parser.error(f'--out-file takes one image; {len(found)} found: use --out-dir')
    if args.out_file is not None and not args.out_file.parent.is_dir():
        parser.error(f'--out-file {args.out_file}: folder {args.out_file.parent} does not exist')

    model = init_checked(init_detector, args.config, args.checkpoint, args.device)
    visualizer = VISUALIZERS.build(model.cfg.visualizer)
    visualizer.dataset_meta = model.dataset_meta
    classes = model.dataset_meta['classes']
    total = 0
    for path, name in found:
        image = read_image(path)
        result = inference_detector(model, image)
        total += len(result.pred_instances)
        picture = args.out_file or args.out_dir / 'vis' / name
        picture.parent.mkdir(parents=True, exist_ok=True)
        save_picture(visualizer, mmcv.bgr2rgb(image), result, picture, draw_gt=False,
                     pred_score_thr=args.score_thr)
        if args.out_dir is not None:
            preds = args.out_dir / 'preds' / Path(name).with_suffix('.json')
            preds.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(json.dumps(detections(path, result, classes)) + '\n', preds)
    print(f'{len(found)} images, {total} detections (drawn above score {args.score_thr}): '
          f'{args.out_file or args.out_dir}')


if __name__ == '__main__':
    main()
