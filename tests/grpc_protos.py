"""A ``.proto`` compiled with ``grpcio-tools`` at test time, as a user builds their service."""

from __future__ import annotations

import importlib
import pathlib
import sys

PROTOS = pathlib.Path(__file__).parent / "integration" / "protos"


def compile_proto(out: pathlib.Path, name: str = "inference") -> tuple[object, object]:
    """``<name>_pb2`` and ``<name>_pb2_grpc``, generated into ``out`` (put on ``sys.path``,
    which replicas inherit)."""
    from grpc_tools import protoc

    out.mkdir(parents=True, exist_ok=True)
    code = protoc.main([
        "grpc_tools.protoc", f"-I{PROTOS}", f"--python_out={out}", f"--grpc_python_out={out}",
        str(PROTOS / f"{name}.proto"),
    ])
    if code != 0:
        raise RuntimeError(f"protoc failed on {name}.proto ({code})")
    if str(out) not in sys.path:
        sys.path.insert(0, str(out))
    importlib.invalidate_caches()
    return importlib.import_module(f"{name}_pb2"), importlib.import_module(f"{name}_pb2_grpc")
