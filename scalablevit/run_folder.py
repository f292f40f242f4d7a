"""One run per output folder: the lock that classification's `--output_dir` and the OpenMMLab work dirs take.

Two runs writing the same folder interleave their logs and overwrite (or delete) each other's checkpoints, so a
training run takes an exclusive advisory lock (`fcntl.flock`) on FOLDER/run.lock before it writes anything. The
kernel releases the lock when the process ends, however it ends (kill -9 included), so a stale lock never blocks
a restart. A flock belongs to the open file, which forked children (data-loader workers) share: each closes its
copy right after the fork, so workers that outlive a killed run by a few seconds do not keep its folder locked.
A second run on the folder stops at once with an error naming the process that holds it. Only the lock holder
removes the temporary files that a killed run's checkpoint writes left behind, and it first checks that it can
write in the folder, so a read-only folder fails before the first training step, not after it.

The lock is only as good as the filesystem's flock: on Lustre it needs the `flock` mount option (`localflock`
locks within one node only; `noflock` refuses locks, and the run stops saying so); NFS with `local_lock=flock`
and BeeGFS without `tuneUseGlobalFileLocks` lock within a node. Two runs on different nodes that share such a
folder are not stopped: give every run its own folder.
"""
import errno
import fcntl
import os
import socket
import time
from pathlib import Path
from typing import Dict, Iterable, Union

from .checkpoint import TEMPORARY_PATTERN

__all__ = ['LOCK_NAME', 'RunFolderError', 'RunFolderLock', 'lock_run_folder']

LOCK_NAME = 'run.lock'

_held: Dict[str, 'RunFolderLock'] = {}  # folders this process holds, so a second call in-process reuses the lock


class RunFolderError(RuntimeError):
    """The output folder cannot be used: another run holds it, or it cannot be created or written."""


class RunFolderLock:
    """The held lock of one folder; `release()` gives it up (process exit does too)."""

    def __init__(self, folder: Path, fd: int):
        self.folder = folder
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor of the open file releases the flock
            self._fd = None
            _held.pop(str(self.folder), None)

    def _forget_in_child(self) -> None:
        """In a forked child: close the inherited descriptor, so the lock ends with the process that took it."""
        self.release()


def _holder(lock_path: Path) -> str:
    try:
        text = lock_path.read_text().strip()
    except OSError:
        text = ''
    return text or 'another process (it has not written its PID yet)'


def lock_run_folder(folder: Union[str, Path], files_to_append: Iterable[str] = ()) -> RunFolderLock:
    """Create `folder` if needed, lock it for this process, check that it is writable (a probe file, and each of
    `files_to_append` that exists opened for appending) and remove stale temporary files of killed writes.

    Raises RunFolderError with what to do: another live run holds the folder (its PID, host and start time are
    named), or the folder cannot be created or written.
    """
    folder = Path(folder).resolve()
    if str(folder) in _held:
        return _held[str(folder)]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise RunFolderError(f'output folder {folder} exists as a file; choose another folder') from None
    except OSError as e:
        raise RunFolderError(f'cannot create the output folder {folder}: {e.strerror}') from None
    lock_path = folder / LOCK_NAME
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise RunFolderError(f'output folder {folder} is not writable ({e.strerror}); make it writable or '
                             f'choose another folder') from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK, errno.EINVAL):
            raise RunFolderError(
                f'the filesystem of {folder} does not support file locks ({e.strerror}), which keep two runs out '
                f'of one folder: use a folder on a filesystem with flock (Lustre: mount with -o flock; NFS: '
                f'local_lock=none or flock), e.g. node-local scratch') from None
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise
        raise RunFolderError(
            f'output folder {folder} is in use by another run: {_holder(lock_path)} holds {lock_path}. Wait for '
            f'it to end (or stop it), or choose another folder; one run writes a folder at a time.') from None
    lock = RunFolderLock(folder, fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f'PID {os.getpid()} on {socket.gethostname()}, since '
                     f'{time.strftime("%Y-%m-%d %H:%M:%S %Z")}\n'.encode())
        probe = folder / f'.write-probe.tmp-{os.getpid()}'
        with open(probe, 'wb') as f:
            f.write(b'probe')
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
        for name in files_to_append:
            if (folder / name).exists():
                with open(folder / name, 'a'):
                    pass
    except OSError as e:
        lock.release()
        raise RunFolderError(f'output folder {folder} is not writable ({e.strerror}: {e.filename or folder}); '
                             f'make it writable or choose another folder') from None
    for tmp in folder.glob(TEMPORARY_PATTERN):
        tmp.unlink(missing_ok=True)
    _held[str(folder)] = lock
    os.register_at_fork(after_in_child=lock._forget_in_child)
    return lock
