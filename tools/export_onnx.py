"""Export a model of any family of the package to ONNX: the classifier, or the 4-level feature backbone for
dense tasks.

    python tools/export_onnx.py scalable_vit_small --checkpoint CKPT --out scalable_vit_small.onnx
    python tools/export_onnx.py swin_tiny_vsa_patch4_window7_224 --checkpoint CKPT --features --out backbone.onnx

The classifier takes `images` (batch, 3, H, W) and gives `logits`; the backbone gives `stage0`..`stage3`
(strides 4, 8, 16, 32). Batch, height and width are dynamic where the family's graph serves every size
(`ModelFamily.onnx_dynamic_sizes`: the window, lattice and patch padding of ScalableViT, Swin+VSA and ScopeViT
is part of the graph); ViTAEv2*+VSA's reduction-cell padding is fixed by tracing, so its graph has a dynamic
batch and the height and width of `--input-size` only. After export, onnxruntime is compared with PyTorch on a
few sizes (`--no-check` skips it).
"""
import argparse
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import timm
import torch
from timm.utils import ParseKwargs

import scalablevit  # registers the models
from scalablevit.checkpoint import pretrained_overlay

CHECK_SIZES = ((224, 224), (97, 131))  # the second one needs padding in every stage


def dynamic_sizes(name: str) -> bool:
    """Whether one exported graph serves every input size (models of no family: assumed so)."""
    family = scalablevit.family_of(name)
    return family.onnx_dynamic_sizes if family is not None else True


def build(name: str, checkpoint: str, features: bool, model_kwargs: dict,
          use_ema: Optional[bool] = None) -> torch.nn.Module:
    kwargs = dict(model_kwargs)
    if checkpoint:
        kwargs.update(pretrained=True, pretrained_cfg_overlay=pretrained_overlay(checkpoint, use_ema))
    if features:
        kwargs.update(features_only=True)
    return timm.create_model(name, **kwargs).eval()


def export(model: torch.nn.Module, out: Path, features: bool, input_size: Tuple[int, int], opset: int,
           dynamic_hw: bool = True) -> List[str]:
    """Write the ONNX file (batch dynamic; height and width too with `dynamic_hw`) and return its output names."""
    outputs = [f'stage{i}' for i in range(len(model.feature_info))] if features else ['logits']
    dynamic = {'images': {0: 'batch', 2: 'height', 3: 'width'} if dynamic_hw else {0: 'batch'}}
    dynamic.update({name: {0: 'batch', 2: f'{name}_height', 3: f'{name}_width'} if features and dynamic_hw
                    else {0: 'batch'} for name in outputs})
    # The TorchScript-based exporter keeps the shape arithmetic of the padding in the graph, so one file serves
    # every input size; torch.export cannot yet prove its reshape guards for symbolic sizes.
    torch.onnx.export(model, (torch.randn(1, 3, *input_size),), str(out), dynamo=False, opset_version=opset,
                      input_names=['images'], output_names=outputs, dynamic_axes=dynamic)
    return outputs


def compare(model: torch.nn.Module, path: Path, sizes: Sequence[Tuple[int, int]], batch: int = 2) -> float:
    """Largest absolute difference between onnxruntime and PyTorch over `sizes`."""
    import onnxruntime
    session = onnxruntime.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    worst = 0.
    for size in sizes:
        images = torch.randn(batch, 3, *size)
        with torch.no_grad():
            expected = model(images)
        expected = expected if isinstance(expected, (list, tuple)) else [expected]
        got = session.run(None, {'images': images.numpy()})
        diff = max(float(np.abs(g - e.numpy()).max()) for g, e in zip(got, expected))
        print(f'  {batch}x3x{size[0]}x{size[1]}: max |onnxruntime - torch| = {diff:.2e}')
        worst = max(worst, diff)
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('model', help='a model of the package (e.g. scalable_vit_small, scope_vit_tiny) or of timm')
    parser.add_argument('--checkpoint', default='', help='weights (ours or the released format); random if omitted')
    parser.add_argument('--use-ema', action=argparse.BooleanOptionalAction, default=None,
                        help='take the EMA weights (--use-ema) or the raw ones (--no-use-ema); default: EMA '
                             'when the checkpoint has them')
    parser.add_argument('--features', action='store_true', help='export the 4-level feature backbone')
    parser.add_argument('--out', type=Path, required=True, help='ONNX file to write')
    parser.add_argument('--input-size', type=int, nargs=2, default=(224, 224), metavar=('H', 'W'),
                        help='size of the example input used for tracing (the exported graph takes any size '
                             'where the family allows it, else only this one)')
    parser.add_argument('--opset', type=int, default=17)
    parser.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs)
    parser.add_argument('--no-check', dest='check', action='store_false', help='skip the onnxruntime comparison')
    parser.add_argument('--tolerance', type=float, default=1e-4, help='largest accepted absolute difference')
    args = parser.parse_args()
    if args.checkpoint and not Path(args.checkpoint).is_file():
        parser.error(f'checkpoint {args.checkpoint} does not exist')

    model = build(args.model, args.checkpoint, args.features, args.model_kwargs, args.use_ema)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    dynamic_hw = dynamic_sizes(args.model)
    outputs = export(model, args.out, args.features, tuple(args.input_size), args.opset, dynamic_hw)
    shape = '[batch, 3, height, width]' if dynamic_hw else f'[batch, 3, {args.input_size[0]}, {args.input_size[1]}]'
    print(f'wrote {args.out} (inputs: images {shape}; outputs: {", ".join(outputs)})')
    if not dynamic_hw:
        print(f'note: {args.model}\'s graph is for {args.input_size[0]}x{args.input_size[1]} inputs only (its padding '
              f'depends on the input size); export again with --input-size for another size')
    if args.check:
        worst = compare(model, args.out, CHECK_SIZES if dynamic_hw else (tuple(args.input_size),))
        if worst > args.tolerance:
            sys.exit(f'error: onnxruntime differs from PyTorch by {worst:.2e} > {args.tolerance:.0e}')


if __name__ == '__main__':
    main()
