"""Writing files safely: one atomic writer, a writability probe for output folders, and an output-folder lock.

Every file circuitfind writes (circuit JSON, DOT, SVG, checkpoints, reproduction tables) goes through
:func:`atomic_write`, so a reader never sees half a file and every file gets the same permissions: ``0666``
less the user's umask, as ``open()`` would give (``tempfile.mkstemp`` would make them ``0600``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import secrets
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

from circuitfind.errors import OutputError

__all__ = ["LOCK_NAME", "atomic_write", "check_writable", "lock_folder"]

LOCK_NAME = ".lock"
_FILE_MODE = 0o666  # the kernel takes the umask off, as for open(path, "w")


def atomic_write(path: str | os.PathLike[str], data: bytes | str) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and an atomic rename.

    Parent folders are created. The file's mode is ``0666`` less the umask. On any failure the temporary file is
    removed and ``path`` is left as it was; the ``OSError`` propagates (callers know what the file was for).

    Example:
        >>> atomic_write(tmp_path / "runs" / "circuit.dot", circuit.to_dot()).relative_to(tmp_path)
        PosixPath('runs/circuit.dot')
    """
    path = Path(path).expanduser()
    payload = data.encode("utf-8") if isinstance(data, str) else data
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def check_writable(folder: str | os.PathLike[str]) -> Path:
    """Create ``folder`` if needed and prove that files can be written there (write and remove a probe file).

    Raises:
        OutputError: the folder cannot be created or written to; the message names it and the reason.

    Example:
        >>> check_writable(tmp_path / "runs" / "ioi").is_dir()
        True
    """
    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"the output folder {str(folder)!r} is a file; pass a directory (it is created if needed)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = atomic_write(folder / f".write-probe-{os.getpid()}", b"circuitfind write probe\n")
        probe.unlink()
    except OSError as e:
        raise OutputError(
            f"cannot write to the output folder {str(folder)!r}: {e.strerror or e}. Expected a folder this user "
            "can create files in, with free space; choose another --out or fix its permissions"
        ) from None
    return folder


_BUSY_FIX = "wait for it to finish or choose another --out"


@contextlib.contextmanager
def lock_folder(
    folder: str | os.PathLike[str],
    *,
    wait: bool = False,
    on_wait: Callable[[str], None] | None = None,
    fix: str = _BUSY_FIX,
) -> Iterator[Path]:
    """Hold an exclusive lock on ``folder`` (``flock`` on ``folder/.lock``) for the duration of the block.

    The lock file records who holds it (pid, host, start time) so that a second run can say so. The kernel
    drops the lock when the holder exits, however it exits; the file itself stays, and a later run simply
    takes it again (a ``.lock`` left by a dead process is not "held").

    Args:
        folder: an existing folder.
        wait: when another process holds the lock, block until it is free instead of raising.
        on_wait: called once with the holder's description before blocking (``wait=True`` only).
        fix: how to fix it, for the message when the lock is held.

    Raises:
        OutputError: another process holds the lock (and ``wait`` is False); the message names it.

    Example:
        >>> with lock_folder(tmp_path):  # nobody else writes there meanwhile
        ...     sorted(p.name for p in tmp_path.iterdir())
        ['.lock']
    """
    try:
        import fcntl
    except ImportError:  # no flock on this platform (Windows): run unlocked rather than not at all
        yield Path(folder)
        return
    path = Path(folder).expanduser() / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, _FILE_MODE)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            if not wait:
                raise OutputError(
                    f"the output folder {str(path.parent)!r} is in use by another run ({holder}); {fix}. If that "
                    "process is gone, the lock is free again: rerun"
                ) from None
            if on_wait is not None:
                on_wait(holder)
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        started = dt.datetime.now().astimezone().isoformat(timespec="seconds")
        os.write(fd, f"pid {os.getpid()} on host {socket.gethostname()}, started at {started}\n".encode())
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _read_holder(fd: int) -> str:
    text = os.pread(fd, 4096, 0).decode("utf-8", errors="replace").strip()
    return text or "a process that has not yet written its pid"
