"""The channel's seam and its wire protocol: what a peer sees, and how bytes are framed.

``Channel`` is all the router, the replica and the controller use of a connection; TCP fills it
in production (``transport``), ``memory`` in tests. Unpickling runs arbitrary code, so no byte
a peer sends is unpickled until that peer has proven, by an HMAC challenge-response in both
directions, that it holds the per-cluster secret. The handshake reads only fixed-size fields,
so an unauthenticated peer cannot make us allocate or wait on a length of its choosing. After
it, a frame is an 8-byte big-endian length and a pickle.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import pickle
import secrets
from typing import Protocol

import cloudpickle

__all__ = [
    "AuthenticationError", "Channel", "ConnectionClosed", "HEADER_BYTES", "MAX_FRAME_BYTES",
    "check_secret", "client_handshake", "encode_frame", "new_secret", "server_handshake",
]

MAGIC = b"MPLX1"  # protocol name and version; a peer speaking anything else is refused
MAX_FRAME_BYTES = 1 << 30
_NONCE_BYTES = 32
_DIGEST_BYTES = hashlib.sha256().digest_size
HEADER_BYTES = 8


class ConnectionClosed(ConnectionError):
    """The peer went away: EOF, reset, or this side closed the connection."""


class AuthenticationError(ConnectionError):
    """The handshake failed: the peer does not hold this cluster's secret, or is not modelplex."""


class Channel(Protocol):
    """What a peer sees of a connection: filled by ``transport.Connection`` and, in tests, ``memory``."""

    @property
    def closed(self) -> bool: ...

    def send_nowait(self, obj: object) -> None: ...

    async def recv(self) -> object: ...

    def close(self) -> None: ...


def new_secret() -> bytes:
    return secrets.token_bytes(32)


# ---- handshake ----------------------------------------------------------------------------


def _proof(secret: bytes, role: bytes, nonce: bytes) -> bytes:
    # The role keeps a peer from answering a challenge by reflecting it back at us.
    return hmac.new(secret, role + nonce, hashlib.sha256).digest()


async def server_handshake(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, secret: bytes
) -> None:
    nonce = secrets.token_bytes(_NONCE_BYTES)
    writer.write(MAGIC + nonce)
    if await reader.readexactly(len(MAGIC)) != MAGIC:
        raise AuthenticationError("it does not speak this protocol version")
    answer = await reader.readexactly(_DIGEST_BYTES)
    client_nonce = await reader.readexactly(_NONCE_BYTES)
    if not hmac.compare_digest(answer, _proof(secret, b"client", nonce)):
        raise AuthenticationError("it does not know the cluster secret")
    writer.write(_proof(secret, b"server", client_nonce))


async def client_handshake(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, secret: bytes, peer: str
) -> None:
    try:
        greeting = await reader.readexactly(len(MAGIC) + _NONCE_BYTES)
    except asyncio.IncompleteReadError:
        raise ConnectionClosed(f"{peer} closed the connection before the handshake") from None
    if greeting[: len(MAGIC)] != MAGIC:
        raise AuthenticationError(f"{peer} does not speak this protocol version")
    nonce = secrets.token_bytes(_NONCE_BYTES)
    writer.write(MAGIC + _proof(secret, b"client", greeting[len(MAGIC) :]) + nonce)
    try:
        answer = await reader.readexactly(_DIGEST_BYTES)
    except (asyncio.IncompleteReadError, ConnectionError):
        # The server closes at once when our proof is wrong, so this is the usual sign of it.
        raise AuthenticationError(
            f"{peer} closed the connection during the handshake; it does not share our secret"
        ) from None
    if not hmac.compare_digest(answer, _proof(secret, b"server", nonce)):
        raise AuthenticationError(f"{peer} could not prove it knows the cluster secret")


# ---- helpers ------------------------------------------------------------------------------


def encode_frame(obj: object, limit: int) -> list[bytes]:
    """The length header and the pickle, as two buffers (joined only when the batch is small).

    modelplex's own messages are plain data and classes importable everywhere, which the
    standard pickler handles at twice cloudpickle's speed. Anything it cannot ship by
    reference, or that names ``__main__`` (a different module in the peer), goes by cloudpickle.
    """
    try:
        data = pickle.dumps(obj, protocol=5)
        by_value = b"__main__" in data
    except Exception:
        by_value = True
    if by_value:
        data = cloudpickle.dumps(obj, protocol=5)
    if len(data) > limit:
        raise ValueError(
            f"{type(obj).__qualname__} pickles to {len(data)} bytes, over the frame limit of {limit}"
        )
    return [len(data).to_bytes(HEADER_BYTES, "big"), data]


def check_secret(secret: bytes) -> None:
    if not isinstance(secret, bytes) or not secret:
        raise ValueError("secret must be non-empty bytes; see new_secret()")
