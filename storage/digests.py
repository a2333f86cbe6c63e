"""Source-file digests remembered by (path, size, mtime, inode), so a re-run does not read
every unchanged original again (git's index does the same).

A file whose size, mtime and inode are unchanged is taken as unchanged. A file touched
within the last RACY_S seconds is always re-read: its mtime could still change within the
same clock tick after we hashed it.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from pathlib import Path

from storage.store import Digest, digest_file

RACY_S = 2.0


class DigestCache:
    def __init__(self, path: Path | str | None):
        self.path = Path(path) if path else None
        self._old: dict[str, list] = {}
        self._seen: dict[str, list] = {}
        self._lock = threading.Lock()
        if self.path and self.path.is_file():
            try:
                self._old = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                self._old = {}  # a broken cache only costs a re-read

    def digest(self, file: Path) -> Digest:
        st = file.stat()
        key, sig = str(file), [st.st_size, st.st_mtime_ns, st.st_ino]
        hit = self._old.get(key)
        if hit and hit[:3] == sig:
            digest = Digest(hit[3], hit[4], st.st_size)
        else:
            digest = digest_file(file)
        if time.time() - st.st_mtime_ns / 1e9 > RACY_S:
            with self._lock:
                self._seen[key] = [*sig, digest.sha256, digest.md5]
        return digest

    def save(self) -> None:
        """Keep the files seen by this scan only (folders that left the recipe drop out)."""
        if not self.path:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name, suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(self._seen, fh, separators=(",", ":"))
        os.replace(tmp, self.path)
