"""Reading checkpoint files without running pickled code."""
import argparse
import os
from typing import Any, Dict

import torch


def load_checkpoint_file(path: str) -> Dict[str, Any]:
    """`torch.load(weights_only=True)` on CPU; the argparse.Namespace that released/DeiT checkpoints keep
    under 'args' is allowed. Raises FileNotFoundError or ValueError with the path in the message."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f'checkpoint {path} does not exist')
    with torch.serialization.safe_globals([argparse.Namespace]):
        try:
            checkpoint = torch.load(path, map_location='cpu', weights_only=True)
        except Exception as e:
            raise ValueError(f'cannot read checkpoint {path}: {e}') from e
    if not isinstance(checkpoint, dict):
        raise ValueError(f'checkpoint {path} holds a {type(checkpoint).__name__}, not a state dict')
    return checkpoint
