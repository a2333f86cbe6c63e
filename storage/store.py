"""Content-addressed file store.

Every file the pipeline keeps is stored once, under the sha256 of its bytes:
`<root>/<first two hex digits>/<sha256>`. sha256 is the address; md5 is also
computed and kept in the catalog because boorus name files by md5. Files are
written to a temp file in the store and renamed into place, so a crash never
leaves a half-written object behind. Objects are never modified.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

CHUNK = 1 << 20


class StreamRejected(ValueError):
    """A streamed object was not stored (size limit, checksum); the message says why."""


@dataclass(frozen=True)
class Digest:
    sha256: str
    md5: str
    size: int


def digest_bytes(data: bytes) -> Digest:
    return Digest(hashlib.sha256(data).hexdigest(), hashlib.md5(data).hexdigest(), len(data))


def digest_file(path: Path) -> Digest:
    sha, md5, size = hashlib.sha256(), hashlib.md5(), 0
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            sha.update(chunk)
            md5.update(chunk)
            size += len(chunk)
    return Digest(sha.hexdigest(), md5.hexdigest(), size)


class ContentStore:
    def __init__(self, root: Path | str):
        self.root = Path(root)
        self._tmp = self.root / "tmp"

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def has(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def _commit(self, tmp_path: Path, sha256: str) -> Path:
        dest = self.path(sha256)
        if dest.exists():
            os.unlink(tmp_path)
            return dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(tmp_path, 0o444)  # objects are immutable
        os.replace(tmp_path, dest)
        return dest

    def sweep_leftovers(self, older_than_s: float = 3600.0) -> int:
        """Delete temp files a killed run left half-written (they never entered the store).

        Only files untouched for `older_than_s`: a write in progress elsewhere keeps its file fresh.
        Returns how many were deleted.
        """
        if not self._tmp.is_dir():
            return 0
        cutoff, removed = time.time() - older_than_s, 0
        for tmp in self._tmp.glob("put-*"):
            try:
                if tmp.stat().st_mtime < cutoff:
                    tmp.unlink()
                    removed += 1
            except FileNotFoundError:  # finished or swept by someone else meanwhile
                continue
        return removed

    def _tempfile(self) -> tuple[int, Path]:
        self._tmp.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self._tmp, prefix="put-")
        return fd, Path(name)

    def put_bytes(self, data: bytes, digest: Digest | None = None) -> Digest:
        """Store bytes; pass `digest` when the caller already hashed exactly these bytes."""
        digest = digest or digest_bytes(data)
        if not self.has(digest.sha256):
            fd, tmp = self._tempfile()
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            self._commit(tmp, digest.sha256)
        return digest

    def put_file(self, src: Path, expected_sha256: str | None = None) -> Digest:
        """Copy a file in, hashing while copying (the source is only read).

        With `expected_sha256`, a copy whose bytes differ (the source changed, or a
        download was corrupted) is discarded and raises OSError.
        """
        if expected_sha256 and self.has(expected_sha256):
            return digest_file(self.path(expected_sha256))

        def check(digest: Digest) -> None:
            if expected_sha256 and digest.sha256 != expected_sha256:
                raise OSError(f"{src}: content does not match the expected sha256")

        with open(src, "rb") as fin:
            return self._put_chunks(iter(lambda: fin.read(CHUNK), b""), check=check)

    def put_stream(self, chunks: Iterable[bytes], expected_md5: str | None = None, max_bytes: int | None = None) -> Digest:
        """Store a stream (a download) through a temp file, hashing as it goes.

        The object appears in the store only once the whole stream was read and, with
        `expected_md5`, its md5 matched; otherwise the temp file is removed and
        StreamRejected (or the stream's own error) is raised: no half file is ever stored.
        """

        def check(digest: Digest) -> None:
            if expected_md5 and digest.md5 != expected_md5.lower():
                raise StreamRejected(f"md5 mismatch: expected {expected_md5.lower()}, got {digest.md5}")

        return self._put_chunks(chunks, max_bytes, check)

    def _put_chunks(
        self, chunks: Iterable[bytes], max_bytes: int | None = None, check: Callable[[Digest], None] | None = None
    ) -> Digest:
        """Write chunks to a temp file while hashing; `check` may reject the result before it is stored."""
        fd, tmp = self._tempfile()
        sha, md5, size = hashlib.sha256(), hashlib.md5(), 0
        try:
            with os.fdopen(fd, "wb") as fout:
                for chunk in chunks:
                    size += len(chunk)
                    if max_bytes is not None and size > max_bytes:
                        raise StreamRejected(f"file too large: over {max_bytes / 2**20:.1f} MB")
                    sha.update(chunk)
                    md5.update(chunk)
                    fout.write(chunk)
            digest = Digest(sha.hexdigest(), md5.hexdigest(), size)
            if check:
                check(digest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self._commit(tmp, digest.sha256)
        return digest

    def read_bytes(self, sha256: str) -> bytes:
        return self.path(sha256).read_bytes()
