"""The log of a classification run: progress on the console by rank, and one JSON record per epoch in
`--output_dir`'s log.txt (kept consistent with the checkpoint on resume)."""
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Dict, List

from errors import UserInputError

__all__ = ['append_log', 'atomic_write_text', 'logger', 'setup_logging', 'truncate_log']

logger = logging.getLogger('classification')


def setup_logging(rank: int) -> None:
    """Rank-aware logging: rank 0 logs progress (INFO) to stdout; other ranks log only warnings and errors, to
    stderr and prefixed with their rank, so a failure on any rank stays visible."""
    handler = _ConsoleHandler()
    handler.setFormatter(logging.Formatter('%(message)s' if rank == 0 else f'[rank {rank}] %(message)s'))
    logger.handlers = [handler]
    logger.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    logger.propagate = False


class _ConsoleHandler(logging.Handler):
    """INFO to the current sys.stdout, WARNING and above to sys.stderr (looked up per record, so redirected
    streams are followed)."""

    def emit(self, record: logging.LogRecord) -> None:
        stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
        stream.write(self.format(record) + '\n')
        stream.flush()


def atomic_write_text(text: str, path: Path) -> None:
    path = Path(path)
    tmp = path.with_name(f'.{path.name}.tmp-{os.getpid()}')
    with open(tmp, 'w') as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def append_log(output_dir: Path, stats: Dict[str, Any]) -> None:
    with open(Path(output_dir) / 'log.txt', 'a') as f:
        f.write(json.dumps(stats) + '\n')


def _log_records(log: Path) -> List[tuple]:
    """(line, record) of each line of log.txt. A torn last line (a run killed while appending it) is dropped
    with a warning; an unreadable line elsewhere is an error naming the file and the line."""
    lines = log.read_text().splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append((line, json.loads(line)))
        except json.JSONDecodeError:
            if number != len(lines):
                raise UserInputError(f'{log}, line {number}, is not a JSON record: {line[:80]!r}. Remove or '
                                     f'repair that line.') from None
            logger.warning(f'{log}: dropped its incomplete last line ({line[:80]!r}: a run was stopped while '
                           f'writing it)')
    return records


def truncate_log(output_dir: Path, start_epoch: int) -> None:
    """Drop log lines of epochs that will be trained again (a run killed after logging, before saving) and a
    torn last line."""
    log = Path(output_dir) / 'log.txt'
    if not log.exists():
        return
    kept = [line for line, record in _log_records(log) if record.get('epoch', -1) < start_epoch]
    atomic_write_text(''.join(line + '\n' for line in kept), log)
