"""Where a request's management token is read from, and whether it is good."""

from __future__ import annotations

from modelplex._http.tokens import Tokens, presented_token, token_accepted


def scope(headers=(), query=b""):
    return {"headers": list(headers), "query_string": query}


COOKIE = (b"cookie", b"other=1; modelplex_token=c%20d")


def test_a_browser_route_reads_the_header_then_the_query_then_the_cookie():
    browser = Tokens.BROWSER
    assert presented_token(scope([(b"authorization", b"Bearer h"), COOKIE], b"token=q"), browser) == (b"h", False)
    assert presented_token(scope([COOKIE], b"token=q"), browser) == (b"q", True)
    assert presented_token(scope([COOKIE]), browser) == (b"c d", False)
    assert presented_token(scope(), browser) == (None, False)
    # A header that is not a bearer token presents none: the query does not stand in for it.
    assert presented_token(scope([(b"authorization", b"Basic h")], b"token=q"), browser) == (None, False)


def test_a_route_that_changes_something_reads_the_header_alone():
    header = Tokens.HEADER
    assert presented_token(scope([COOKIE, (b"authorization", b"Bearer h")]), header) == (b"h", False)
    assert presented_token(scope([COOKIE], b"token=q"), header) == (None, False)


def test_the_token_must_match_where_one_is_set():
    good = scope([(b"authorization", b"Bearer s3cret")])
    assert token_accepted(good, "s3cret", Tokens.HEADER)
    assert not token_accepted(scope([(b"authorization", b"Bearer nope")]), "s3cret", Tokens.HEADER)
    assert not token_accepted(scope([(b"authorization", b"s3cret")]), "s3cret", Tokens.HEADER)
    assert not token_accepted(scope(query=b"token=s3cret"), "s3cret", Tokens.HEADER)
    assert token_accepted(scope(query=b"token=s3cret"), "s3cret", Tokens.BROWSER)
    assert token_accepted(scope(), None, Tokens.HEADER)  # no token set: open
    # Not ASCII: compared as UTF-8 bytes, refused or taken without an error.
    assert token_accepted(scope(query="token=%C3%A9t%C3%A9".encode()), "été", Tokens.BROWSER)
    assert not token_accepted(scope([(b"authorization", "Bearer é".encode())]), "s3cret", Tokens.HEADER)
