"""The error tree: every class pickles unchanged, is drawn and exported, and one table maps
errors to HTTP answers."""

from __future__ import annotations

import inspect
import pickle

import cloudpickle
import pytest
from starlette.exceptions import HTTPException

import modelplex
from modelplex import _errors
from modelplex._errors import error_response

TREE = sorted(
    (
        cls
        for cls in vars(_errors).values()
        if isinstance(cls, type) and issubclass(cls, _errors.ModelplexError)
    ),
    key=lambda cls: cls.__name__,
)

# One example value per annotation in the classes' __init__ signatures; a class with a new
# kind of argument fails below until an example is added here.
EXAMPLES = {
    "str": "m-1 with: a colon",
    "str | None": "a message",
    "int": 3,
    "float": 2.5,
    "object": ValueError("bad weights\nsecond line"),
    "list[str]": ["applications[0].name: must be a string", "http_options.port: must be <= 65535"],
}


def example(cls: type) -> BaseException:
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    if any(p.kind is p.VAR_POSITIONAL for p in params):  # Exception's own __init__
        return cls("something went wrong\nsecond line")
    args, kwargs = [], {}
    for param in params:
        if param.annotation not in EXAMPLES:
            pytest.fail(f"add an example for {cls.__name__}({param.name}: {param.annotation})")
        value = EXAMPLES[param.annotation]
        if param.name == "traceback":
            value = 'Traceback (most recent call last):\n  File "x.py", line 1\nValueError: no'
        if param.kind is param.KEYWORD_ONLY:
            kwargs[param.name] = value
        else:
            args.append(value)
    return cls(*args, **kwargs)


def fields(exc: BaseException) -> dict:
    return dict(vars(exc))


@pytest.mark.parametrize("cls", TREE, ids=lambda cls: cls.__name__)
@pytest.mark.parametrize("dumps", [pickle.dumps, cloudpickle.dumps], ids=["pickle", "cloudpickle"])
def test_every_error_round_trips_unchanged(cls, dumps):
    original = example(cls)
    exc = original
    for _ in range(3):  # stable: a second trip changes nothing either
        exc = pickle.loads(dumps(exc))
        assert type(exc) is cls
        assert str(exc) == str(original)
        assert exc.args == original.args
        assert fields(exc) == fields(original)


def test_deployment_failed_error_keeps_one_traceback():
    exc = _errors.DeploymentFailedError("d", "ValueError: no", "Traceback: line")
    for _ in range(3):
        exc = pickle.loads(pickle.dumps(exc))
    assert str(exc) == "Deployment 'd' failed to start: ValueError: no\nTraceback: line"
    assert (exc.deployment, exc.message, exc.traceback) == ("d", "ValueError: no", "Traceback: line")


@pytest.mark.parametrize(
    "cls", [c for c in TREE if not c.__name__.startswith("_")], ids=lambda cls: cls.__name__
)
def test_every_error_is_drawn_in_the_tree_and_exported(cls):
    assert f" {cls.__name__} " in _errors.__doc__ or f" {cls.__name__}\n" in _errors.__doc__
    assert getattr(modelplex, cls.__name__) is cls


def test_not_found_errors_stay_key_errors_with_plain_messages():
    exc = _errors.ApplicationNotFoundError("nope")
    assert isinstance(exc, KeyError) and str(exc) == "no application named 'nope'"
    assert error_response(exc).body == b"no application named 'nope'"


class LoaderError(Exception):
    pass


def header(response, name: bytes) -> bytes | None:
    return dict(response.headers).get(name)


@pytest.mark.parametrize(
    "exc, status, body",
    [
        (LoaderError("weights missing\n  at line 3"), 500, b"LoaderError: weights missing"),
        (ValueError("user code"), 500, b"ValueError: user code"),  # not 400: it is not ours
        (KeyError("k"), 500, b"KeyError: 'k'"),
        (RuntimeError(), 500, b"RuntimeError"),
        (_errors.ModelIdError("model id is bad"), 400, b"model id is bad"),
        (_errors.BadRequestError("model_id is required"), 400, b"model_id is required"),
        (_errors.ConfigError(["a: must be 1", "b: must be 2"]), 400, b"a: must be 1\nb: must be 2"),
        (_errors.UnauthorizedError("token"), 401, b"token"),
        (_errors.DeploymentNotFoundError("a", "d"), 404, b"application 'a' has no deployment 'd'"),
        (_errors.RouteNotFoundError("no route"), 404, b"no route"),
        (_errors.PayloadTooLargeError("too big"), 413, b"too big"),
        (_errors.HeadersTooLargeError("too many"), 431, b"too many"),
        (_errors.ReplicaDiedError("r#1", "gone"), 503, b"Replica 'r#1' died while serving the request: gone"),
        (_errors.BackPressureError("app_d", 5, 5), 503,
         b"Deployment 'app_d' has 5 requests queued, at its limit of 5 (max_queued_requests)."),
        (_errors.BackPressureError("app_d", 5, 5, "tenant-7", 3), 429,
         b"Model 'tenant-7' has 5 requests queued in deployment 'app_d', at its limit of 5 "
         b"(max_queued_requests_per_model)."),
        (_errors.RequestTimeoutError(0.5), 504, b"The request got no answer within 0.5s."),
        (_errors.ModelTooLargeError("m", 5, 1), 507, None),
        (_errors.RemoteError("Odd", "msg", "tb\nmore"), 500, b"Odd: msg"),
        (HTTPException(403, "not for you"), 403, b"not for you"),
    ],
)
def test_one_table_maps_errors_to_http(exc, status, body):
    response = error_response(exc)
    assert response.status == status
    if body is not None:
        assert response.body == body
    assert header(response, b"content-length") == str(len(response.body)).encode()
    assert header(response, b"content-type") == b"text/plain; charset=utf-8"
    assert (header(response, b"retry-after") is not None) == (status in (429, 503))


def test_table_passes_retry_after_and_http_exception_headers():
    backoff = _errors.ModelLoadBackoffError("m", 3, 4.2, ValueError("x"))
    assert header(error_response(backoff), b"retry-after") == b"5"
    assert header(error_response(_errors.BackPressureError("d", 1, 1)), b"retry-after") == b"1"
    per_model = pickle.loads(pickle.dumps(_errors.BackPressureError("d", 9, 9, "m", 4)))
    assert header(error_response(per_model), b"retry-after") == b"4" and per_model.model_id == "m"
    teapot = error_response(HTTPException(418, "short and stout", headers={"X-Pot": "yes"}))
    assert (teapot.status, header(teapot, b"x-pot")) == (418, b"yes")
