"""Which work-dir file a URL may name: only regular files inside the work dir, after every link is followed."""

from __future__ import annotations

from pathlib import Path


def safe_file(workdir: Path, relative: str) -> Path | None:
    """The file `relative` names inside `workdir`, or None (outside it, through a link out, absolute, not a file)."""
    if not relative or "\x00" in relative or relative.startswith(("/", "\\")) or Path(relative).is_absolute():
        return None
    root = workdir.resolve()
    try:
        candidate = (root / relative).resolve(strict=True)
    except (OSError, RuntimeError):  # missing, or a link loop
        return None
    if not candidate.is_relative_to(root) or not candidate.is_file():
        return None
    return candidate


def work_relative(workdir: Path, path: str | Path) -> str | None:
    """`path` (absolute or relative to the work dir) as a path under the work dir, or None when outside it."""
    root = workdir.resolve()
    full = Path(path) if Path(path).is_absolute() else root / path
    try:
        return full.resolve().relative_to(root).as_posix()
    except ValueError:
        return None
