"""The images a prediction command is pointed at, and writing its outputs whole: shared by
`classification/predict.py` and the detection and segmentation demos."""
import glob
import os
from pathlib import Path
from typing import List, Tuple, Union

from torchvision.datasets.folder import IMG_EXTENSIONS

__all__ = ['IMG_EXTENSIONS', 'ImageInputError', 'find_images', 'output_names', 'write_atomically']


class ImageInputError(ValueError):
    """An input that names no image (a missing path, an empty folder, a glob matching nothing), or two images
    whose outputs would have the same name."""


def find_images(inputs: List[str]) -> List[Tuple[str, str]]:
    """(path, name) of every image `inputs` names, in order, each once: a file as given (name: its file name),
    a folder's image files found recursively and sorted (name: the path inside the folder), a glob pattern's
    matching files (name: the file name)."""
    found = []
    for item in inputs:
        path = Path(item)
        if path.is_file():
            found.append((item, path.name))
        elif path.is_dir():
            images = sorted(p for p in path.rglob('*') if p.is_file() and p.name.lower().endswith(IMG_EXTENSIONS))
            if not images:
                raise ImageInputError(f'no images in folder {item} (looked recursively for '
                                      f'{", ".join(IMG_EXTENSIONS)})')
            found += [(str(p), str(p.relative_to(path))) for p in images]
        elif any(c in item for c in '*?['):
            matches = sorted(p for p in glob.glob(item, recursive=True) if os.path.isfile(p))
            if not matches:
                raise ImageInputError(f'no file matches {item!r}')
            found += [(p, os.path.basename(p)) for p in matches]
        else:
            raise ImageInputError(f'{item} does not exist')
    return list({path: (path, name) for path, name in reversed(found)}.values())[::-1]


def output_names(images: List[Tuple[str, str]], suffix: str) -> List[str]:
    """Each image's output name (its name with `suffix` for its extension); an ImageInputError when two
    images would write the same file."""
    names = [str(Path(name).with_suffix(suffix)) for _, name in images]
    seen = {}
    for (path, _), name in zip(images, names):
        if name in seen:
            raise ImageInputError(f'{seen[name]} and {path} would both write {name}: pass them in separate runs or '
                                  f'rename one')
        seen[name] = path
    return names


def write_atomically(data: Union[str, bytes], path: Union[str, Path]) -> None:
    """Write `data` to a temporary file beside `path`, then rename it over `path`: readers never see a partial
    file, and a crash leaves none."""
    path = Path(path)
    tmp = path.with_name(f'.{path.name}.tmp-{os.getpid()}')
    try:
        with open(tmp, 'wb') as f:
            f.write(data.encode('utf-8') if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
