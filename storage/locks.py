"""One process at a time in a folder: a bake's (or slide's) saved state has one writer.

Two runs may reach the same bake folder: a sweep variant whose worker was taken for lost while it still ran, and
the flow run that replaced it on another worker; or one recipe run twice at once. The second waits for the first
and then resumes from what it saved. The lock is `filelock`'s (maintained, cross-platform): an OS lock on the
file — flock on Linux and macOS (NFS emulates it with record locks), msvcrt.locking on Windows — which the OS drops
when its process dies, SIGKILL included, so a killed run never leaves a stale lock. Who holds it is written beside
the lock file (filelock owns the lock file itself); a holder killed before it could clean that note only leaves
a stale name there, never a stale lock.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

LOCK_FILE = ".lock"
HOLDER_FILE = ".lock-holder"


@contextmanager
def exclusive(folder: Path, on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold `folder`'s lock for the block; when another process holds it, call `on_wait` with who holds it
    ("pid N on HOST") and wait for it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(folder / LOCK_FILE, thread_local=False)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if on_wait:
            on_wait(_holder(folder) or "another process")
        lock.acquire()
    try:
        (folder / HOLDER_FILE).write_text(f"pid {os.getpid()} on {socket.gethostname()}")
        yield
    finally:
        lock.release()


def _holder(folder: Path) -> str:
    try:
        return (folder / HOLDER_FILE).read_text(errors="replace").strip()
    except OSError:
        return ""
