"""A real HTTP store for the storage tests, that can refuse (403) or trickle its answer. (The
S3 server, moto counting what it serves, is ``bench.s3_server``, shared with the benchmarks.)"""

from __future__ import annotations

import hashlib
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class HTTPStore:
    """Serves ``files`` (path -> bytes) with an ETag; ``deny`` answers 403; ``trickle_s``
    sleeps between 64 KiB chunks, so a download can be caught half-way."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.deny: set[str] = set()
        self.trickle_s = 0.0
        store = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _head(self) -> bytes | None:
                path = self.path.split("?")[0]
                if path in store.deny:
                    self.send_error(403, "Forbidden")
                    return None
                data = store.files.get(path)
                if data is None:
                    self.send_error(404, "Not Found")
                    return None
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("ETag", '"' + hashlib.md5(data).hexdigest() + '"')
                self.end_headers()
                return data

            def do_HEAD(self):
                self._head()

            def do_GET(self):
                data = self._head()
                if data is None:
                    return
                try:
                    for i in range(0, len(data), 1 << 16):
                        self.wfile.write(data[i:i + (1 << 16)])
                        self.wfile.flush()
                        time.sleep(store.trickle_s)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
