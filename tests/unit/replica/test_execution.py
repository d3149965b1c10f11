"""Request execution in-process: an ``Executor`` against a plain instance, a fake connection
and a fake recorder. No replica process, no sockets."""

from __future__ import annotations

import asyncio
import pickle
import threading

import cloudpickle
import pytest
from starlette.exceptions import HTTPException
from starlette.responses import StreamingResponse

from modelplex._errors import MethodNotFoundError, RemoteError, UnserializableResultError
from modelplex._messages import Call, Chunk, HTTPRequest, HTTPResult, Result
from modelplex._replica.admin import Admin
from modelplex._types import AdminOp
from modelplex._replica.execution import Executor
from modelplex._replica.outbox import NONE, Outboxes

from tests.fakes import FakeConn


class FakeRecorder:
    def __init__(self) -> None:
        self.requests: list[tuple[str, str | None]] = []

    def request(self, route: str, seconds: float, error: str | None) -> None:
        assert seconds >= 0
        self.requests.append((route, error))


class Unpicklable(Exception):
    """Its lock cannot travel: the caller gets a RemoteError in its place."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


class Model:
    async def double(self, x):
        return 2 * x

    def triple(self, x):  # sync: runs in a thread
        assert threading.current_thread() is not threading.main_thread()
        return 3 * x

    def count(self, n):
        yield from range(n)

    def unpicklable_error(self):
        raise Unpicklable("cannot travel")

    def unpicklable_value(self):
        return threading.Lock()

    def teapot(self, *args):
        raise HTTPException(418, "short and stout")

    async def __call__(self, request):
        return {"path": request.url.path, "body": (await request.body()).decode()}


class Harness:
    def __init__(self, instance, *, ingress: bool = False) -> None:
        self.conn = FakeConn()
        self.recorder = FakeRecorder()
        self.outboxes = Outboxes()
        self.executor = Executor(
            instance, Admin("r1", instance, []), deployment="Model", recorder=self.recorder,
            outboxes=self.outboxes, ingress=ingress,
        )

    def run(self, call: Call) -> Result | None:
        return asyncio.run(self.executor.execute(self.conn, (1, call.request_id), call))


def call(method: str, *args, request_id: int = 1, **options) -> Call:
    return Call(request_id, method, cloudpickle.dumps((args, {})), **options)


def http(path: str = "/echo", body: bytes = b"hi", method: str = "__call__") -> Call:
    scope = {
        "type": "http", "method": "POST", "path": path, "root_path": "/app",
        "query_string": b"", "headers": [(b"host", b"test")],
    }
    return Call(7, method, http=HTTPRequest(scope, body))


def value(result: Result):
    assert result.ok, pickle.loads(result.payload)
    return pickle.loads(result.payload)


def error(result: Result) -> BaseException:
    assert not result.ok
    return pickle.loads(result.payload)


def test_a_call_answers_the_methods_value_async_or_sync():
    h = Harness(Model())
    assert value(h.run(call("double", 21))) == 42
    assert value(h.run(call("triple", 5))) == 15
    assert h.conn.sent == []  # a whole reply needs no outbox: the replica sends the Result
    assert h.recorder.requests == [("", None), ("", None)]


def test_an_http_request_is_rendered_into_one_result():
    h = Harness(Model())
    rendered = value(h.run(http(body=b"hello")))
    assert isinstance(rendered, HTTPResult) and rendered.status == 200
    assert rendered.body == b'{"path":"/echo","body":"hello"}'
    assert h.recorder.requests == [("/app", None)]


def test_an_http_exception_is_its_status_over_http_and_itself_through_a_handle():
    h = Harness(Model())
    over_http = value(h.run(http(method="teapot")))
    assert (over_http.status, over_http.body) == (418, b"short and stout")
    through_handle = error(h.run(call("teapot")))
    assert isinstance(through_handle, HTTPException) and through_handle.status_code == 418
    assert [e for _, e in h.recorder.requests] == ["HTTPException", "HTTPException"]


def test_an_error_that_cannot_be_pickled_arrives_as_a_remote_error():
    h = Harness(Model())
    result = h.run(call("unpicklable_error"))
    remote = error(result)
    assert isinstance(remote, RemoteError)
    assert (remote.type_name, remote.message) == ("Unpicklable", "cannot travel")
    assert "unpicklable_error" in result.traceback  # the user's frame, for the caller


def test_a_value_that_cannot_be_pickled_says_which_method_returned_it():
    h = Harness(Model())
    failure = error(h.run(call("unpicklable_value")))
    assert isinstance(failure, UnserializableResultError)
    assert "Model.unpicklable_value" in str(failure) and "lock" in str(failure)


def test_a_generator_streams_with_stream_true_and_is_refused_without():
    h = Harness(Model())
    ended = h.run(call("count", 3, stream=True))
    assert ended == Result(1, True, NONE)  # ends the stream its chunks began
    assert all(isinstance(c, Chunk) and c.request_id == 1 for c in h.conn.sent)
    assert [pickle.loads(c.payload) for c in h.conn.sent] == [0, 1, 2]
    assert h.outboxes.get((1, 1)) is not None  # credit for the stream would find it

    refused = error(h.run(call("count", 3, request_id=2)))
    assert isinstance(refused, TypeError) and "handle.options(stream=True)" in str(refused)
    not_a_generator = error(h.run(call("double", 1, request_id=3, stream=True)))
    assert isinstance(not_a_generator, TypeError)
    assert "did not return a generator" in str(not_a_generator)
    assert len(h.conn.sent) == 3  # neither refusal sent a chunk


def test_a_method_that_does_not_exist_is_named_with_its_deployment():
    h = Harness(Model())
    missing = error(h.run(call("nope")))
    assert isinstance(missing, MethodNotFoundError)
    assert (missing.deployment, missing.method) == ("Model", "nope")
    assert h.recorder.requests == [("", "MethodNotFoundError")]


def test_a_streamed_http_response_goes_through_the_outbox():
    class Streamer:
        def __call__(self, request):
            async def body():
                yield b"a"
                yield b"b"
            return StreamingResponse(body(), media_type="text/plain")

    h = Harness(Streamer())
    assert h.run(http()) is None  # answered through the outbox as it ended
    head, *chunks, end = h.conn.sent
    assert pickle.loads(head.payload).status == 200
    assert b"".join(pickle.loads(c.payload) for c in chunks) == b"ab"
    assert isinstance(end, Result) and end.ok


class IngressLike:
    """Has the entry point; whether the replica calls it is the interface's to say."""

    def __init__(self) -> None:
        self.asgi_calls = 0

    async def __modelplex_asgi__(self, scope, receive, send):
        self.asgi_calls += 1
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"from the app"})

    def __call__(self, request):
        return "from __call__"


def test_only_a_declared_ingress_app_answers_http_requests():
    app = IngressLike()
    declared = Harness(app, ingress=True)
    assert declared.run(http()) is None
    [whole] = declared.conn.sent  # answered whole, through the outbox
    assert value(whole) == HTTPResult(201, (), b"from the app") and app.asgi_calls == 1

    undeclared = Harness(app, ingress=False)
    assert value(undeclared.run(http())).body == b"from __call__"
    assert app.asgi_calls == 1


def test_management_calls_go_to_the_admin():
    h = Harness(Model())
    assert value(h.run(Call(1, AdminOp.LIST.value))) == []
    assert h.recorder.requests == [("", None)]


@pytest.mark.parametrize("access_log", [True, False])
def test_a_handle_call_has_an_access_line_when_asked(access_log, caplog):
    caplog.set_level("INFO", logger="modelplex.replica")
    instance = Model()
    executor = Executor(
        instance, Admin("r1", instance, []), deployment="Model", recorder=FakeRecorder(),
        outboxes=Outboxes(), access_log=access_log,
    )
    asyncio.run(executor.execute(FakeConn(), (1, 1), call("double", 1)))
    lines = [r.getMessage() for r in caplog.records if getattr(r, "access", False)]
    assert [line.split()[:3] for line in lines] == ([["CALL", "double", "OK"]] if access_log else [])
