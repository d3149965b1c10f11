"""Whether a request's management token is good: the one check every management route uses.

A browser cannot set an ``Authorization`` header on a page load or an ``EventSource``, so the
read-only page routes (``Tokens.BROWSER``) also take the token as ``?token=`` (the page then
keeps it in an HttpOnly, SameSite=Strict cookie scoped to ``/-/``) or that cookie. Routes that
change something (``Tokens.HEADER``) take the header alone, so a cookie can never be used to
deploy (no CSRF).
"""

from __future__ import annotations

import enum
import hmac
from urllib.parse import parse_qsl, unquote

from .._types import Scope

COOKIE = "modelplex_token"  # the page's cookie (``/-/dashboard?token=`` sets it)


class Tokens(enum.Enum):
    """Where a route looks for the token."""

    HEADER = "header"  # ``Authorization: Bearer <token>``
    BROWSER = "browser"  # that header, else ``?token=``, else the page's cookie


def presented_token(scope: Scope, tokens: Tokens) -> tuple[bytes | None, bool]:
    """The token a request carries where ``tokens`` looks, and whether it came from the query.

    A request with an ``Authorization`` header presents that header alone; one that is not a
    bearer token presents none."""
    cookie = None
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            return (value[7:] if value.startswith(b"Bearer ") else None), False
        if name == b"cookie" and tokens is Tokens.BROWSER:
            for part in value.decode("latin-1").split(";"):
                key, _, val = part.strip().partition("=")
                if key == COOKIE:
                    cookie = unquote(val).encode()
    if tokens is Tokens.HEADER:
        return None, False
    query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
    if "token" in query:
        return query["token"].encode(), True
    return cookie, False


def token_accepted(scope: Scope, expected: str | None, tokens: Tokens) -> bool:
    """Whether the request may use a route that takes its token where ``tokens`` says; any
    request may where no token is set (``expected`` is None)."""
    if expected is None:
        return True
    given, _ = presented_token(scope, tokens)
    return given is not None and hmac.compare_digest(given, expected.encode())
