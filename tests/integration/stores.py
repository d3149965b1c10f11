"""Real stores for the storage tests: a moto S3 server that counts object downloads, and a
small HTTP server that can refuse (403) or trickle its answer."""

from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import make_server

import logging

logging.getLogger("werkzeug").setLevel(logging.ERROR)

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1"}


class MotoS3:
    """moto in server mode on a free port; ``gets[path]`` counts object GETs (downloads)."""

    def __init__(self) -> None:
        self.gets: Counter[str] = Counter()
        app = DomainDispatcherApplication(create_backend_app)

        def counting(environ, start_response):
            if environ["REQUEST_METHOD"] == "GET" and not environ.get("QUERY_STRING"):
                self.gets[environ["PATH_INFO"]] += 1
            return app(environ, start_response)

        self._server = make_server("127.0.0.1", 0, counting, threaded=True, request_handler=MotoRequestHandler)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        import boto3

        self.client = boto3.client(
            "s3", endpoint_url=self.url, aws_access_key_id="testing",
            aws_secret_access_key="testing", region_name="us-east-1",
        )
        self.options = {"endpoint_url": self.url, "key": "testing", "secret": "testing"}

    def put(self, bucket: str, key: str, data: bytes) -> None:
        try:
            self.client.create_bucket(Bucket=bucket)
        except self.client.exceptions.BucketAlreadyOwnedByYou:
            pass
        self.client.put_object(Bucket=bucket, Key=key, Body=data)

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join()


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
