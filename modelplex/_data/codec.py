"""What a call's arguments and a reply's values become on the wire, and back.

Arguments travel pickled inside the ``Call`` (see ``_messages.Call``), so a value the replica
cannot unpickle fails that request alone; a reply the caller cannot unpickle becomes a
``RemoteError`` naming the method, never a broken connection.
"""

from __future__ import annotations

import pickle
from typing import Any

import cloudpickle

from .._errors import RemoteError, RemoteTraceback, UnserializableArgumentsError
from .._messages import Result

__all__ = ["decode_item", "decode_result", "encode_args"]


def encode_args(args: tuple, kwargs: dict) -> bytes:
    """A call's arguments; b"" for none."""
    if not args and not kwargs:
        return b""
    try:  # the standard pickler where it ships everything by reference: twice as fast
        data = pickle.dumps((args, kwargs), protocol=5)
        if b"__main__" not in data:
            return data
    except Exception:
        pass
    try:
        return cloudpickle.dumps((args, kwargs), protocol=5)
    except Exception as exc:
        raise UnserializableArgumentsError(
            f"the arguments of this call cannot be serialized: {exc}"
        ) from exc


def decode_item(where: str, payload: bytes) -> Any:
    """One streamed item of ``where`` ("Deployment.method")."""
    try:
        return pickle.loads(payload)
    except Exception as exc:
        raise RemoteError(
            "UnpicklingError",
            f"an item streamed by {where} cannot be unpickled here: {type(exc).__name__}: {exc}",
        ) from None


def decode_result(where: str, result: Result) -> Any:
    """The value of ``where``'s reply, or its error raised, with the replica's traceback as
    its cause."""
    try:
        value = pickle.loads(result.payload)
    except Exception as exc:
        raise RemoteError(
            "UnpicklingError",
            f"the result of {where} cannot be unpickled here: {type(exc).__name__}: {exc}",
        ) from None
    if result.ok:
        return value
    if result.traceback and isinstance(value, BaseException):
        value.__cause__ = RemoteTraceback(result.traceback)
    raise value
