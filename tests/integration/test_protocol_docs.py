"""docs/apps.md's gRPC and WebSockets examples, as written there: the ``.proto`` compiled, the
server code run, the client code run against it (on free ports)."""

from __future__ import annotations

import os
import re
import sys

import modelplex as serve

from ..conftest import ROOT, free_port

DOC = os.path.join(ROOT, "docs", "apps.md")


def _section(title: str) -> str:
    return open(DOC).read().split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_the_grpc_example_runs(tmp_path, capsys, monkeypatch):
    from grpc_tools import protoc

    section = _section("gRPC")
    (proto,) = re.findall(r"```proto\n(.*?)```", section, re.S)
    server, client = re.findall(r"```python\n(.*?)```", section, re.S)
    (tmp_path / "translate.proto").write_text(proto)
    assert protoc.main(["grpc_tools.protoc", f"-I{tmp_path}", f"--python_out={tmp_path}",
                        f"--grpc_python_out={tmp_path}", str(tmp_path / "translate.proto")]) == 0
    monkeypatch.syspath_prepend(str(tmp_path))  # replicas inherit sys.path
    http, grpc_port = free_port(), free_port()
    server = server.replace('"port": 8000', f'"port": {http}').replace("port=9000", f"port={grpc_port}")
    try:
        exec(compile(server, "docs/apps.md", "exec"), {"__name__": "docs"})  # shipped by value
        exec(compile(client.replace("localhost:9000", f"127.0.0.1:{grpc_port}"),
                     "docs/apps.md", "exec"), {"__name__": "docs"})
    finally:
        serve.shutdown()
        for name in ("translate_pb2", "translate_pb2_grpc"):
            sys.modules.pop(name, None)
    assert capsys.readouterr().out.splitlines()[-2:] == ["hallo Welt True", "['a', 'b', 'c']"]


def test_the_websockets_example_runs(serve_instance, capsys):
    section = _section("WebSockets")
    server, client = re.findall(r"```python\n(.*?)```", section, re.S)
    exec(compile(server, "docs/apps.md", "exec"), {"__name__": "docs"})
    client = client.replace("ws://localhost:8000", f"ws://127.0.0.1:{serve_instance.port}")
    exec(compile(client, "docs/apps.md", "exec"), {"__name__": "docs"})
    assert capsys.readouterr().out.splitlines()[-1] == "EN: hello"
