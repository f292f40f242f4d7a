"""Segment images; save the predicted classes overlaid in colour and the label maps as PNG.

    python demo.py IMAGES... CONFIG CHECKPOINT --out-dir DIR [--opacity 0.5] [--device cuda:0]
    python demo.py IMAGE CONFIG CHECKPOINT --out-file result.png

IMAGES: image files, folders (searched recursively) or quoted glob patterns. `--out-dir DIR` gets, per image
(NAME: its path inside the folder given, or its file name):
  vis/NAME.png   the class colours over the image;
  pred/NAME.png  the label map at the image's size: a palette PNG whose pixel values are the class indices
                 (0 .. classes-1; read it with `numpy.asarray(PIL.Image.open(path))`) and whose colours are the
                 dataset's palette (16-bit grey without a palette for more than 256 classes);
and DIR/classes.json ([{"index", "name", "color"}]). `--out-file FILE` writes the overlay of one image only.
The checkpoint is read by the package's checkpoint policy and must fit the config's model; each file is
written whole.
"""
import argparse
import io
import json
from pathlib import Path

import mmcv
import numpy as np
from mmseg.apis import inference_model, init_model
from mmseg.visualization import SegLocalVisualizer
from PIL import Image

from scalablevit.images import write_atomically
from scalablevit.openmmlab.predictions import find_demo_images, init_checked, read_image, save_picture


def label_map_png(labels: np.ndarray, palette) -> bytes:
    """(H, W) class indices as PNG bytes: with the palette for up to 256 classes, 16-bit grey beyond."""
    buffer = io.BytesIO()
    if len(palette) <= 256:
        image = Image.fromarray(labels.astype(np.uint8), 'P')
        image.putpalette([channel for colour in palette for channel in colour])
    else:
        image = Image.fromarray(labels.astype(np.uint16))
    image.save(buffer, format='PNG')
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('images', nargs='+', help='image files, folders or quoted glob patterns')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint file')
    output = parser.add_mutually_exclusive_group(required=True)
    output.add_argument('--out-dir', type=Path, help='folder for vis/ (overlays), pred/ (label maps), classes.json')
    output.add_argument('--out-file', type=Path, help='one image: where to write its overlay (PNG or JPEG)')
    parser.add_argument('--opacity', type=float, default=0.5, help='opacity of the colour map, 0 to 1')
    parser.add_argument('--device', default='cpu', help='e.g. cuda:0')
    args = parser.parse_args()
    if not 0 <= args.opacity <= 1:
        parser.error('--opacity must be between 0 and 1')
    found = find_demo_images(args.images, '.png')
    if args.out_file is not None and len(found) != 1:
        parser.error(f'--out-file takes one image; {len(found)} found: use --out-dir')
    if args.out_file is not None and not args.out_file.parent.is_dir():
        parser.error(f'--out-file {args.out_file}: folder {args.out_file.parent} does not exist')

    model = init_checked(init_model, args.config, args.checkpoint, args.device)
    classes, palette = model.dataset_meta['classes'], model.dataset_meta['palette']
    visualizer = SegLocalVisualizer(alpha=args.opacity)
    visualizer.set_dataset_meta(classes=classes, palette=palette)
    if args.out_dir is not None:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        write_atomically(json.dumps([dict(index=i, name=name, color=list(colour))
                                     for i, (name, colour) in enumerate(zip(classes, palette))]) + '\n',
                         args.out_dir / 'classes.json')
    seen = set()
    for path, name in found:
        image = read_image(path)
        result = inference_model(model, image)
        labels = result.pred_sem_seg.data[0].cpu().numpy()
        seen.update(np.unique(labels).tolist())
        picture = args.out_file or args.out_dir / 'vis' / name
        picture.parent.mkdir(parents=True, exist_ok=True)
        save_picture(visualizer, mmcv.bgr2rgb(image), result, picture, draw_gt=False)
        if args.out_dir is not None:
            label_map = args.out_dir / 'pred' / name
            label_map.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(label_map_png(labels, palette), label_map)
    names = ', '.join(classes[c] for c in sorted(seen))
    print(f'{len(found)} images, {len(seen)} classes in the predictions ({names}): {args.out_file or args.out_dir}')


if __name__ == '__main__':
    main()
