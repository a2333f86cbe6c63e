"""One process at a time in a folder: a bake's (or slide's) saved state has one writer.

Two runs may reach the same bake folder: a sweep variant whose worker was taken for lost while it still ran, and
the flow run that replaced it on another worker; or one recipe run twice at once. The second waits for the first
and then resumes from what it saved. POSIX record locks (fcntl.lockf) work across the machines of an NFS share,
and the kernel drops them when their process dies, SIGKILL included, so a killed run never leaves a stale lock.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_FILE = ".lock"


@contextmanager
def exclusive(folder: Path, on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold `folder`'s lock for the block; when another process holds it, call `on_wait` with who holds it
    ("pid N on HOST") and wait for it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EAGAIN):
                raise
            if on_wait:
                on_wait(os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process")
            fcntl.lockf(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        yield
    finally:
        os.close(fd)  # drops the lock
