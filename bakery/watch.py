"""Noticing new images in a recipe's source folders (for `bakery watch`).

A cheap fingerprint (path, size, mtime of every file) is compared between
polls; the run it triggers hashes contents, so a touched-but-unchanged file
costs one cached run, never a wrong result.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from bakery.craft.gather.ingest import walk_folder


def folders_fingerprint(folders: list[tuple[Path, bool]]) -> tuple[str, int]:
    """(digest, file count) of every file under the folders (each with its `recursive` flag)."""
    h, count = hashlib.sha256(), 0
    for root, recursive in sorted(folders):
        if not root.is_dir():
            continue
        for path in sorted(walk_folder(root, recursive)):
            try:
                st = path.stat()
            except OSError:  # vanished between listing and stat: the next poll sees it
                continue
            h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            count += 1
    return h.hexdigest(), count
