"""Segment one image and save it with the predicted classes overlaid in colour.

    python demo.py IMAGE CONFIG CHECKPOINT --out-file result.png [--opacity 0.5] [--device cuda:0]
"""
import argparse
from pathlib import Path

from mmseg.apis import inference_model, init_model, show_result_pyplot


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('image', help='image file')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--out-file', required=True, help='where to write the overlay (PNG or JPEG)')
    parser.add_argument('--opacity', type=float, default=0.5, help='opacity of the colour map, 0 to 1')
    parser.add_argument('--device', default='cpu', help='e.g. cuda:0')
    args = parser.parse_args()
    for path in (args.image, args.config, args.checkpoint):
        if not Path(path).is_file():
            raise SystemExit(f'error: {path} does not exist')
    if not 0 <= args.opacity <= 1:
        raise SystemExit('error: --opacity must be between 0 and 1')

    model = init_model(args.config, args.checkpoint, device=args.device)
    result = inference_model(model, args.image)
    show_result_pyplot(model, args.image, result, opacity=args.opacity, show=False, draw_gt=False,
                       out_file=args.out_file)
    classes = result.pred_sem_seg.data.unique().tolist()
    names = [model.dataset_meta['classes'][c] for c in classes]
    print(f'{len(classes)} classes in the prediction ({", ".join(names)}): {args.out_file}')


if __name__ == '__main__':
    main()
