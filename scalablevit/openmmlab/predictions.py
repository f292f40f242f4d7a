"""What `detection/` and `segmentation/` write for users, shared by both tasks: the demos' model (loaded by the
package's checkpoint policy, refused when the checkpoint does not fit) and pictures, and test.py's `--show-dir`
(each test image's ground truth beside its prediction) and `--out` (the evaluator's result files), every file
written whole (a temporary name, then a rename)."""
import os
import shutil
from pathlib import Path
from typing import Any, Callable, List

import mmcv
import numpy as np
import torch.nn as nn
from mmengine.dist import is_main_process
from mmengine.hooks import Hook

from ..checkpoint import CheckpointError
from ..images import ImageInputError, find_images, output_names
from .checks import checkpoint_mismatch
from .compat import use_checkpoint_policy

__all__ = ['init_checked', 'find_demo_images', 'read_image', 'save_picture', 'DrawTestResultsHook',
           'PublishOutputsHook', 'staging_dir', 'prepare_staging_dir', 'metric_configs']


def init_checked(init: Callable[..., nn.Module], config: str, checkpoint: str, device: str) -> nn.Module:
    """`init(config, checkpoint, device=device)` (MMDetection's `init_detector`, MMSegmentation's `init_model`)
    with the checkpoint read by the package's policy; a checkpoint that does not fit the config's model (another
    config's, another task's) stops with the mismatch report before it is loaded, instead of running
    half-initialised (or failing inside `init` on a checkpoint without `meta`)."""
    for path in (config, checkpoint):
        if not Path(path).is_file():
            raise SystemExit(f'error: {path} does not exist')
    try:
        with use_checkpoint_policy():
            mismatch = checkpoint_mismatch(init(config, None, device='cpu'), checkpoint)
            if mismatch:
                raise SystemExit(f'error: checkpoint {checkpoint} does not fit the model of {config}:\n{mismatch}')
            return init(config, checkpoint, device=device)
    except CheckpointError as error:
        raise SystemExit(f'error: {error}') from None


def find_demo_images(inputs: List[str], suffix: str) -> List[tuple]:
    """(path, output name with `suffix`) of every image `inputs` name (`scalablevit.images`); one error line
    for an input that names no image or two images that would write the same file."""
    try:
        found = find_images(inputs)
        return list(zip([path for path, _ in found], output_names(found, suffix)))
    except ImageInputError as error:
        raise SystemExit(f'error: {error}') from None


def read_image(path: str) -> np.ndarray:
    """The image as an (H, W, 3) BGR uint8 array, as MMDetection/MMSegmentation load it (grey, alpha and 16-bit
    images converted by OpenCV); one error line for a file that is not a readable image."""
    try:
        image = mmcv.imread(path)
    except (OSError, ValueError) as error:
        raise SystemExit(f'error: cannot read image {path}: {error}') from None
    if image is None:
        raise SystemExit(f'error: cannot read image {path}: not an image OpenCV can decode')
    return image


def save_picture(visualizer: Any, image: np.ndarray, data_sample: Any, path: Path, **draw_kwargs) -> None:
    """Draw `data_sample` on the RGB `image` with the task's visualizer (`add_datasample`) into `path`, whole."""
    tmp = path.with_name(f'.{path.stem}.tmp-{os.getpid()}{path.suffix}')  # the suffix picks the encoder
    try:
        visualizer.add_datasample('result', image, data_sample=data_sample, show=False, out_file=str(tmp),
                                  **draw_kwargs)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


class DrawTestResultsHook(Hook):
    """test.py's `--show-dir DIR`: every test image with its ground truth beside its prediction, drawn by the
    runner's visualizer as MMDetection's and MMSegmentation's visualization hooks draw them, to DIR/NAME.png
    (NAME: the image's file name without its extension)."""
    priority = 'LOW'

    def __init__(self, out_dir: str, **draw_kwargs):
        self.out_dir = Path(out_dir)
        self.draw_kwargs = draw_kwargs

    def before_test(self, runner) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)

    def after_test_iter(self, runner, batch_idx: int, data_batch: Any = None, outputs: Any = None) -> None:
        for sample in outputs or ():
            image = mmcv.imread(sample.img_path, channel_order='rgb')
            save_picture(runner.visualizer, image, sample, self.out_dir / f'{Path(sample.img_path).stem}.png',
                         draw_gt=True, draw_pred=True, **self.draw_kwargs)


class PublishOutputsHook(Hook):
    """test.py's `--out DIR`: the evaluator writes its result files into `staging_dir(DIR)`; after the test
    epoch every file moves into DIR by a rename (on the main process, once the evaluation has gathered every
    rank's results), so DIR never holds a partial file. A killed run leaves only the hidden staging folder,
    which the next run clears (`prepare_staging_dir`)."""
    priority = 'LOW'

    def __init__(self, out_dir: Path):
        self.out_dir = Path(out_dir)
        self.staging = staging_dir(out_dir)

    def after_test_epoch(self, runner, metrics: Any = None) -> None:
        if not is_main_process() or not self.staging.is_dir():
            return
        for file in sorted(p for p in self.staging.rglob('*') if p.is_file()):
            target = self.out_dir / file.relative_to(self.staging)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(file, target)
        shutil.rmtree(self.staging)


def staging_dir(out_dir: Path) -> Path:
    """Where the evaluator writes the files `PublishOutputsHook` moves into `out_dir`."""
    return Path(out_dir) / '.partial'


def prepare_staging_dir(out_dir: str) -> Path:
    """An empty staging folder for `--out out_dir`, made by rank 0 before the Runner is built (the Runner's
    set-up synchronises the ranks before any writes); a file at `out_dir` is an error."""
    if Path(out_dir).is_file():
        raise SystemExit(f'error: --out {out_dir} is a file; pass a folder')
    staging = staging_dir(Path(out_dir))
    if int(os.environ.get('RANK', '0')) == 0:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    return staging


def metric_configs(evaluator: Any, name: str) -> List[dict]:
    """The metric configs of type `name` (with or without a scope prefix) in a test_evaluator config."""
    metrics = evaluator if isinstance(evaluator, (list, tuple)) else [evaluator]
    return [m for m in metrics if str(m.get('type', '')).split('.')[-1] == name]
