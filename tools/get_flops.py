"""Parameters and FLOPs of a classifier, detector or segmenter, in the paper's conventions.

    python tools/get_flops.py scalable_vit_small                                    # 224x224
    python tools/get_flops.py detection/configs/retinanet_scalablevit-s_fpn_1x_coco.py     # 800x1280
    python tools/get_flops.py segmentation/configs/upernet_scalablevit-s_8xb2-160k_ade20k-512x512.py  # 512x2048
    python tools/get_flops.py scope_vit_tiny                                        # its training size, 256x256
    python tools/get_flops.py --all --markdown docs/model_zoo.md     # the paper's 19 models and the other families

FLOPs are counted by `mmengine.analysis` (fvcore's counter: one multiply-add counts as one FLOP, as in the
paper) with attention on its explicit path, so its matrix products are counted too; the count without them,
the convention of the paper's detection and segmentation tables, is printed beside it.
"""
import argparse
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from paper import OTHER_FAMILIES, PAPER

ROOT = Path(__file__).resolve().parents[1]

DEFAULT_SHAPE = {'classification': (224, 224), 'detection': (800, 1280), 'segmentation': (512, 2048)}


class TensorForward(nn.Module):
    """Wrap an OpenMMLab model so that tracing sees `model._forward(images, data_samples)`."""

    def __init__(self, model: nn.Module, data_samples: list):
        super().__init__()
        self.model = model
        self.data_samples = data_samples

    def forward(self, images: torch.Tensor):
        return self.model._forward(images, self.data_samples)


def task_of(target: str) -> str:
    if not target.endswith('.py'):
        return 'classification'
    from mmengine.config import Config
    scope = Config.fromfile(target).get('default_scope', 'mmdet')
    return 'detection' if scope == 'mmdet' else 'segmentation'


def build(target: str, shape: Tuple[int, int]) -> Tuple[nn.Module, nn.Module, torch.Tensor]:
    """(model whose parameters are counted, module to trace, input)."""
    images = torch.randn(1, 3, *shape)
    task = task_of(target)
    if task == 'classification':
        import timm

        import scalablevit  # noqa: F401  (registers the models)
        model = timm.create_model(target).eval()
        return model, model, images

    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    cfg = Config.fromfile(target)
    cfg.model.backbone.init_cfg = None  # counting needs no weights
    init_default_scope(cfg.get('default_scope'))
    if task == 'detection':
        from mmdet.registry import MODELS
        from mmdet.structures import DetDataSample
    else:
        from mmseg.registry import MODELS
        from mmseg.structures import SegDataSample as DetDataSample
    model = MODELS.build(cfg.model).eval()
    meta = dict(img_shape=shape, ori_shape=shape, pad_shape=shape, batch_input_shape=shape, scale_factor=(1., 1.))
    return model, TensorForward(model, [DetDataSample(metainfo=meta)]), images


def default_shape(target: str) -> Tuple[int, int]:
    """Classifiers: their pretrained config's input size (224 or 256); dense models: the paper's sizes."""
    task = task_of(target)
    if task != 'classification':
        return DEFAULT_SHAPE[task]
    import timm

    import scalablevit  # noqa: F401  (registers the models)
    return tuple(timm.models.get_pretrained_cfg(target).input_size[1:])


def count(target: str, shape: Optional[Tuple[int, int]] = None) -> Dict[str, float]:
    """Millions of parameters and GFLOPs (multiply-adds) of one model: `flops` counts everything,
    `flops_no_attn` leaves out attention's two matrix products (q·kᵀ and attn·v), as the paper's numbers do.

    Attention runs its explicit path, where those products are the model's only `aten::matmul` calls (every
    Linear is `aten::linear`), so leaving them out is switching off the matmul handle."""
    from mmengine.analysis import FlopAnalyzer
    shape = tuple(shape or default_shape(target))
    model, traced, images = build(target, shape)
    result = dict(params=sum(p.numel() for p in model.parameters()) / 1e6, shape=shape)
    for module in model.modules():
        if hasattr(module, 'set_fused_attn'):
            module.set_fused_attn(False)
    for key, count_attention in (('flops', True), ('flops_no_attn', False)):
        analyzer = FlopAnalyzer(traced, (images,))
        if not count_attention:
            analyzer.set_op_handle('aten::matmul', lambda inputs, outputs: 0)  # a None handle is not honoured
        analyzer.unsupported_ops_warnings(False)
        analyzer.uncalled_modules_warnings(False)
        with torch.no_grad():
            result[key] = analyzer.total() / 1e9
    return result


def unlisted_family_models() -> List[Tuple[str, None, None]]:
    """The variants of every registered family (`scalablevit.FAMILIES`) that paper.py has no row for (a new
    family's), with no published numbers."""
    import scalablevit
    listed = {target for target, _, _ in PAPER + OTHER_FAMILIES}
    return [(name, None, None) for family in scalablevit.FAMILIES for variant, name in family.model_names.items()
            if variant != 'test' and name not in listed]


def markdown_table(rows: List[Tuple[str, float, float, Dict[str, float]]], source: str = 'paper') -> str:
    lines = [f'| Model | Input | #Param. (M) | {source} | FLOPs (G) | without attention products | {source} |',
             '| ----- | ----- | ----------- | ----- | --------- | -------------------------- | ----- |']
    for target, paper_params, paper_flops, ours in rows:
        h, w = ours['shape']
        lines.append(f'| {Path(target).stem} | {h}×{w} | {ours["params"]:.2f} | {paper_params or ""} | '
                     f'{ours["flops"]:.2f} | {ours["flops_no_attn"]:.2f} | {paper_flops or ""} |')
    return '\n'.join(lines)


ZOO_HEADER = """# Model zoo: parameters and FLOPs

Generated by `python tools/get_flops.py --all --markdown docs/model_zoo.md` (do not edit by hand).
FLOPs: `mmengine.analysis` (fvcore's counter, one multiply-add = one FLOP, attention matrix products
included); classification at 224×224, detection at 800×1280, segmentation at 512×2048, as in the paper.

"""

ZOO_NOTES = """

Why ours and the paper's differ:

- Parameters: the model follows the released code and weights. The released classifiers have 32.00 M /
  81.88 M / 109.29 M parameters; the paper states 32.4 M / 81.9 M / 104.9 M. L is 4.4 M larger in the release
  than in the paper; S is 0.4 M smaller, which carries into every S detector and segmenter (about 0.4 M below
  the paper), while the B and L dense models match the paper to about 0.05 M.
- FLOPs: the paper's numbers leave out attention's matrix products (q·kᵀ and attn·v, which a counter that
  hooks modules does not see). Without them our counts match the paper's within about 2 % for every model
  (S/B/L classifiers 4.1 / 8.6 / 14.7 G vs 4.2 / 8.6 / 14.7 G; RetinaNet-S 235 G vs 238 G; UperNet-S 929 G vs
  931 G); with them, which is what the hardware computes, S costs 4.28 G at 224×224 (fvcore's count of the
  released model) and the dense S models about 38 G more than the paper states at these input sizes.
- Mask R-CNN counts also depend on how many proposals reach the RoI heads in the traced run; the paper does
  not say how it counted them.
"""

FAMILIES_HEADER = """

## The other families

Classifiers at their training size (Swin+VSA and ViTAEv2+VSA 224×224, ScopeViT 256×256), dense models at the
sizes above. `reference`: what the released code builds and fvcore counts for it (Swin+VSA, ViTAEv2+VSA and
ScopeViT classifiers), or, for dense models, the released backbone with MMDetection's / MMSegmentation's stock
heads. ScopeViT-T's README states 7.4 M parameters; its released code builds 8.01 M (the FLOPs, 2.0 G, agree).
ViTAEv2*-48M+VSA is the released "widePCM" model: 51.09 M parameters despite its name.
Detector FLOPs depend on the proposals of the traced run (see above): the cascade passes them through three
4conv1fc heads.

"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('target', nargs='?', help='timm model name or an OpenMMLab config file')
    parser.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'), help='input size (default: per task)')
    parser.add_argument('--all', action='store_true',
                        help='the 19 models of the paper and the other families, with the published numbers')
    parser.add_argument('--markdown', type=Path, help='with --all: also write the table to this file')
    parser.add_argument('--families-only', action='store_true',
                        help='with --all --markdown: recount only the other families and rewrite their table, '
                             'keeping the paper\'s table of the existing file')
    args = parser.parse_args()
    if args.all == bool(args.target):
        parser.error('give a model name or config, or --all')
    if args.target and args.target.endswith('.py') and not Path(args.target).is_file():
        parser.error(f'config {args.target} does not exist')

    if not args.all:
        result = count(args.target, args.shape)
        h, w = result['shape']
        print(f'{args.target}\n  input {h}x{w}  params {result["params"]:.2f} M  FLOPs {result["flops"]:.2f} G '
              f'({result["flops_no_attn"]:.2f} G without attention matrix products)')
        return
    if args.families_only and not (args.markdown and args.markdown.is_file()):
        parser.error('--families-only rewrites part of an existing --markdown file')
    tables = []
    others = OTHER_FAMILIES + unlisted_family_models()
    for models in ((others,) if args.families_only else (PAPER, others)):
        rows = []
        for target, paper_params, paper_flops in models:
            ours = count(str(ROOT / target) if target.endswith('.py') else target, args.shape)
            rows.append((target, paper_params, paper_flops, ours))
            print(f'{Path(target).stem:55s} params {ours["params"]:8.2f} M (published {str(paper_params):6})  '
                  f'FLOPs {ours["flops"]:8.1f} G, {ours["flops_no_attn"]:8.1f} G w/o attention (published '
                  f'{paper_flops})', flush=True)
        tables.append(rows)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        if args.families_only:
            # everything before the families' heading (its text may have changed since the file was written)
            paper_part = args.markdown.read_text().split(FAMILIES_HEADER.strip().splitlines()[0])[0].rstrip('\n') + '\n'
        else:
            paper_part = ZOO_HEADER + markdown_table(tables[0]) + ZOO_NOTES
        args.markdown.write_text(paper_part + FAMILIES_HEADER + markdown_table(tables[-1], source='reference') + '\n')
        print(f'wrote {args.markdown}')


if __name__ == '__main__':
    sys.exit(main())
