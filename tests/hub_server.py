"""A local server that answers `huggingface_hub` downloads as the hub does (`HF_ENDPOINT=hub.url`).

`GET|HEAD /<org>/<name>/resolve/<revision>/<path>` with the hub's headers: `X-Repo-Commit`, `ETag` (an LFS file's
sha256), `Content-Length`, `Accept-Ranges`; a `Range` request gets 206 and `Content-Range`. Faults: `cut` (a set of
paths whose first GET sends half the body and closes the connection), `lie` (paths whose ETag is another file's
sha256). `requests` logs (method, file, range) of every request (file: `org/name/path`, else the URL's
path: the client's other calls).
"""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    def __init__(self, files: dict[str, bytes], cut: set[str] = frozenset(), lie: set[str] = frozenset()):
        """`files`: "org/name/path" -> content."""
        self.files, self.cut, self.lie = files, set(cut), set(lie)
        self.requests: list[tuple[str, str, str | None]] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> "FakeHub":
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_HEAD(self) -> None:
                self._answer(body=False)

            def do_GET(self) -> None:
                self._answer(body=True)

            def _answer(self, body: bool) -> None:
                parts = self.path.split("?")[0].strip("/").split("/")
                key = "/".join(parts[:2] + parts[4:]) if len(parts) > 4 and parts[2] == "resolve" else self.path
                hub.requests.append((self.command, key, self.headers.get("Range")))
                if key not in hub.files:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = hub.files[key]
                start = int(self.headers["Range"].split("=")[1].split("-")[0]) if self.headers.get("Range") else 0
                etag = hashlib.sha256(b"another file" if key in hub.lie else data).hexdigest()
                self.send_response(206 if start else 200)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{etag}"')
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(len(data) - start))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if not body:
                    return
                if key in hub.cut and not start:
                    hub.cut.discard(key)
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(data[start:])

        return Handler
