"""What a classification run keeps in `--output_dir`: the folder's lock, crash-safe checkpoint writes, and the
model weights and RNG streams a checkpoint carries (by the package's checkpoint policy, `scalablevit.checkpoint`)."""
import random
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch

from scalablevit import checkpoint as checkpoint_io
from scalablevit import run_folder

from errors import UserInputError

__all__ = ['atomic_save', 'capture_rng_state', 'load_model_weights', 'lock_output_dir', 'restore_rng_state']


def atomic_save(obj: Any, path: Path) -> None:
    """Write a checkpoint crash-safely, with its tensor digests (`scalablevit.checkpoint.save_checkpoint`).

    A crash at any moment leaves either the previous file or the new one, never a truncated one.
    """
    checkpoint_io.save_checkpoint(obj, path)


def lock_output_dir(output_dir: Path) -> run_folder.RunFolderLock:
    """Take `--output_dir` for this run (one run per folder), after checking that it and log.txt are writable;
    removes the temporary files of writes a killed run left behind. A UserInputError names the run that
    holds the folder, or what is not writable."""
    try:
        return run_folder.lock_run_folder(output_dir, files_to_append=('log.txt',))
    except run_folder.RunFolderError as e:
        raise UserInputError(str(e)) from None


def load_model_weights(model: torch.nn.Module, checkpoint: Dict[str, Any], source: str,
                       use_ema: Optional[bool] = None) -> str:
    """Load model weights from any supported checkpoint layout by the package's checkpoint policy
    (`scalablevit.checkpoint`: EMA weights when present unless `use_ema=False`), strictly; a CheckpointError
    names missing, unexpected and shape-mismatched keys (e.g. a checkpoint for another model or class count).
    Returns which weights were loaded ('model', 'model_ema', ...)."""
    try:
        state_dict, chosen = checkpoint_io.select_state_dict(checkpoint, use_ema)
    except ValueError as e:
        raise checkpoint_io.CheckpointError(f'checkpoint {source}: {e}') from None
    checkpoint_io.check_finite(state_dict, f'checkpoint {source}', f'{chosen!r} weights')
    mismatch = checkpoint_io.StateDictMismatch.compare(state_dict, model)
    if mismatch:
        kind = 'another variant?' if mismatch.shape_errors else 'another model?'
        raise checkpoint_io.CheckpointError(
            f'checkpoint {source} does not fit --model {model.pretrained_cfg["architecture"]} with '
            f'{model.num_classes} classes ({kind} the class count comes from the class folders under '
            f'--data-path):\n{mismatch}')
    model.load_state_dict(state_dict, strict=True)
    return chosen


def capture_rng_state() -> Dict[str, Any]:
    """Every RNG the training loop draws from, in a form `torch.load(weights_only=True)` accepts."""
    np_state = np.random.get_state()
    state = {
        'python': random.getstate(),
        'numpy': (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        'torch': torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Dict[str, Any]) -> None:
    random.setstate(_to_tuple(state['python']))
    kind, keys, pos, has_gauss, cached = state['numpy']
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


def _to_tuple(value: Any) -> Any:
    return tuple(_to_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value
