"""A real S3-compatible server for tests and benchmarks: moto, in a process of its own, that
counts what it serves.

    python -m bench.s3_server [--port 0]    # prints "S3 READY http://127.0.0.1:<port>"

moto keeps no request log, so a small WSGI middleware counts each object request (method,
bucket, key, whether it starts at byte 0, bytes sent). ``GET /_stats`` answers the counts as
JSON and ``POST /_stats/reset`` clears them (S3 bucket names cannot start with ``_``).
``S3Server`` starts it, fills buckets and reads the counts; the server stops when its stdin
closes, so it never outlives the process that started it.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import subprocess
import sys
import threading
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterable

__all__ = ["CREDENTIALS", "ObjectStats", "S3Server", "is_download", "s3_env"]

_RANGE = re.compile(r"bytes=(\d+)-")


def is_download(method: str, range_header: str | None) -> bool:
    """A GET that starts reading at byte 0: one download begins (ranged parts after it don't)."""
    if method != "GET":
        return False
    if not range_header:
        return True
    match = _RANGE.match(range_header.strip())
    return match is None or int(match.group(1)) == 0


@dataclass(frozen=True)
class ObjectStats:
    """What the server did for one object (``bucket/key``)."""

    downloads: int = 0  # GETs from byte 0
    gets: int = 0  # all GETs, ranged parts included
    heads: int = 0
    bytes_sent: int = 0


class _Counter:
    """WSGI middleware: per ``bucket/key``, GETs, HEADs, downloads and body bytes sent."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.lock = threading.Lock()
        self.stats: dict[str, dict[str, int]] = defaultdict(
            lambda: {"downloads": 0, "gets": 0, "heads": 0, "bytes_sent": 0})

    def __call__(self, environ: dict, start_response: Any) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "")
        if path.startswith("/_stats"):
            return self._stats(method, path, start_response)
        name = path.lstrip("/")
        if method not in ("GET", "HEAD") or "/" not in name or name.endswith("/"):
            return self.app(environ, start_response)  # not an object read
        with self.lock:
            entry = self.stats[name]
            entry["gets" if method == "GET" else "heads"] += 1
            entry["downloads"] += is_download(method, environ.get("HTTP_RANGE"))
        return self._counted(name, self.app(environ, start_response))

    def _counted(self, name: str, body: Iterable[bytes]) -> Iterable[bytes]:
        try:
            for chunk in body:
                with self.lock:
                    self.stats[name]["bytes_sent"] += len(chunk)
                yield chunk
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()

    def _stats(self, method: str, path: str, start_response: Any) -> list[bytes]:
        with self.lock:
            if method == "POST" and path == "/_stats/reset":
                self.stats.clear()
            body = json.dumps(self.stats).encode()
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(body)))])
        return [body]


def serve(host: str, port: int) -> None:
    from moto.moto_server.werkzeug_app import (DomainDispatcherApplication, MotoRequestHandler,
                                               create_backend_app)
    from werkzeug.serving import make_server

    app = _Counter(DomainDispatcherApplication(create_backend_app))
    server = make_server(host, port, app, threaded=True, request_handler=MotoRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"S3 READY http://{host}:{server.server_port}", flush=True)
    sys.stdin.read()  # until the parent closes our stdin (or dies)
    server.shutdown()


CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1"}  # moto takes any keys


def s3_env(endpoint: str) -> dict[str, str]:
    """The environment that points boto3, aioboto3 and s3fs at ``endpoint`` with fake keys."""
    return {"AWS_ENDPOINT_URL": endpoint, **CREDENTIALS}


class S3Server:
    """``python -m bench.s3_server`` as a child process; use as a context manager."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "bench.s3_server", "--host", host, "--port", str(port)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True, env=env)
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line.startswith("S3 READY "):
            self.close()
            raise RuntimeError(f"the S3 server did not start: {line!r}")
        self.endpoint = line.split()[-1]
        self.env = s3_env(self.endpoint)
        # For ``serve.fetch(..., storage_options=...)`` where the environment does not point here.
        self.options = {"endpoint_url": self.endpoint, "key": "testing", "secret": "testing"}

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def put(self, bucket: str, objects: dict[str, bytes], part_size: int | None = None) -> None:
        """Create ``bucket`` if need be and upload ``{key: bytes}`` to it, as boto3 does: in
        parts of 8 MB above 8 MB (an ETag ``"<md5 of the parts' md5s>-<parts>"``), or of
        ``part_size`` (5 MB at least) above ``part_size``."""
        from boto3.s3.transfer import TransferConfig

        client = self.client()
        try:
            client.create_bucket(Bucket=bucket)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass
        config = None
        if part_size is not None:
            config = TransferConfig(multipart_threshold=part_size, multipart_chunksize=part_size)
        for key, data in objects.items():
            client.upload_fileobj(io.BytesIO(data), bucket, key, Config=config)

    def stats(self) -> dict[str, ObjectStats]:
        return {k: ObjectStats(**v) for k, v in self._call("GET", "/_stats").items()}

    def of(self, name: str) -> ObjectStats:
        """What the server did for ``bucket/key`` since the last ``reset``."""
        return self.stats().get(name, ObjectStats())

    def reset(self) -> None:
        self._call("POST", "/_stats/reset")

    def _call(self, method: str, path: str) -> dict:
        import urllib.request

        request = urllib.request.Request(self.endpoint + path, method=method)
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def close(self) -> None:
        if self._proc.poll() is None:
            assert self._proc.stdin is not None
            self._proc.stdin.close()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()

    def __enter__(self) -> "S3Server":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.s3_server", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    serve(args.host, args.port)


if __name__ == "__main__":
    main()
