"""Faults and bad input end in a precise error or a served request, never a hang."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import select
import signal
import socket
import time

import pytest
import requests

import modelplex as serve

from ..conftest import free_port, wait_until
from .models import make_recorder, read_events, record

H = "serve_multiplexed_model_id"


@serve.deployment(max_ongoing_requests=4)
class Slow:
    def __init__(self, events: str) -> None:
        self.events = events

    async def __call__(self, request):
        return await self.wait(float(request.query_params.get("s", "5")))

    async def wait(self, seconds: float) -> int:
        record(self.events, "started")
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            record(self.events, "cancelled")
            raise
        return os.getpid()

    def pid(self) -> int:
        return os.getpid()


def test_killed_replica_fails_in_flight_requests_fast(serve_instance, tmp_path):
    events = str(tmp_path / "events")
    handle = serve.run(Slow.bind(events))
    pid = handle.pid.remote().result()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        slow = pool.submit(requests.get, serve_instance.url, params={"s": "30"})
        wait_until(lambda: "started" in read_events(events))
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        resp = slow.result(timeout=20)
    assert resp.status_code == 503 and "died" in resp.text, resp.text
    assert resp.headers["retry-after"]
    assert time.monotonic() - killed_at < 5
    # The replica is replaced and the deployment serves again.
    wait_until(lambda: requests.get(serve_instance.url, params={"s": "0"}).status_code == 200,
               timeout=20)
    assert handle.pid.remote().result() != pid


def test_handle_call_to_a_killed_replica_raises_replica_died(serve_instance, tmp_path):
    events = str(tmp_path / "events")
    handle = serve.run(Slow.bind(events))
    pid = handle.pid.remote().result()
    response = handle.wait.remote(30)
    wait_until(lambda: "started" in read_events(events))
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(serve.ReplicaDiedError, match=r"default_Slow#"):
        response.result(timeout_s=10)


def test_request_timeout_gives_504(tmp_path):
    port = free_port()
    serve.start(http_options={"port": port, "request_timeout_s": 0.5})
    try:
        serve.run(Slow.bind(str(tmp_path / "events")))
        resp = requests.get(f"http://127.0.0.1:{port}/", params={"s": "10"})
        assert resp.status_code == 504 and "0.5" in resp.text
        wait_until(lambda: "cancelled" in read_events(str(tmp_path / "events")))
    finally:
        serve.shutdown()


def test_client_disconnect_cancels_the_replica_task(serve_instance, tmp_path):
    events = str(tmp_path / "events")
    serve.run(Slow.bind(events))
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.get(serve_instance.url, params={"s": "30"}, timeout=0.5)
    wait_until(lambda: "cancelled" in read_events(events), message="work went on after disconnect")


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_client_disconnects_are_not_logged_as_errors(serve_instance, tmp_path, capfd):
    events = str(tmp_path / "events")
    serve.run(Slow.options(max_ongoing_requests=1).bind(events))
    handler = Records()
    loggers = [logging.getLogger(name) for name in ("uvicorn", "uvicorn.error", "modelplex")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        def impatient(timeout: float) -> None:
            with pytest.raises(requests.exceptions.ReadTimeout):
                requests.get(serve_instance.url, params={"s": "30"}, timeout=timeout)

        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(impatient, 2)
            wait_until(lambda: "started" in read_events(events))
            impatient(0.3)  # queued behind the first, and gone before it finishes
            in_flight.result()
        wait_until(lambda: "cancelled" in read_events(events), message="work went on")
        assert requests.get(serve_instance.url, params={"s": "0"}).status_code == 200
        assert read_events(events).count("started") == 2  # the queued request never ran
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
    lines = [f"{r.levelname} {r.getMessage()}" for r in handler.records]
    assert not [r for r in handler.records if r.exc_info or r.levelno >= logging.WARNING], lines
    others = [line for r, line in zip(handler.records, lines) if r.name != "modelplex.access"]
    assert len(others) <= 2, lines  # at most one line per disconnect, besides the access lines
    stderr = capfd.readouterr().err
    assert "Exception in ASGI application" not in stderr and "Traceback" not in stderr, stderr


def test_cancelled_handle_call_cancels_the_replica_task(serve_instance, tmp_path):
    events = str(tmp_path / "events")
    handle = serve.run(Slow.bind(events))
    response = handle.wait.remote(30)
    wait_until(lambda: "started" in read_events(events))
    response.cancel()
    wait_until(lambda: "cancelled" in read_events(events))


def test_queue_limit_gives_503_with_retry_after(serve_instance, tmp_path):
    events = str(tmp_path / "events")
    handle = serve.run(Slow.options(max_ongoing_requests=1, max_queued_requests=1).bind(events))
    busy = handle.wait.remote(3)
    queued = handle.wait.remote(0)
    wait_until(lambda: "started" in read_events(events))
    resp = requests.get(serve_instance.url, params={"s": "0"})
    assert resp.status_code == 503 and resp.headers["retry-after"]
    assert "max_queued_requests" in resp.text
    with pytest.raises(serve.BackPressureError) as info:
        handle.wait.remote(0).result()
    assert (info.value.queued, info.value.limit) == (1, 1)
    assert isinstance(busy.result(), int) and isinstance(queued.result(), int)


@serve.deployment
class SlowLoader:
    @serve.multiplexed(max_num_models_per_replica=2, model_load_timeout_s=0.3)
    async def get_model(self, model_id: str) -> str:
        if model_id == "hang":
            await asyncio.sleep(60)
        return model_id

    async def __call__(self, request):
        return await self.get_model(serve.get_multiplexed_model_id())


def test_hanging_loader_times_out_naming_the_model(serve_instance):
    serve.run(SlowLoader.bind())
    assert requests.get(serve_instance.url, headers={H: "ok"}).text == "ok"
    resp = requests.get(serve_instance.url, headers={H: "hang"})
    assert resp.status_code == 504 and "'hang'" in resp.text
    assert requests.get(serve_instance.url, headers={H: "ok"}).text == "ok"


def test_bad_model_ids_get_400_before_user_code(serve_instance, tmp_path):
    events = str(tmp_path / "events")
    serve.run(make_recorder().bind(events))
    resp = requests.get(serve_instance.url, headers={H: "x" * 300})
    assert resp.status_code == 400 and "256 bytes" in resp.text
    with socket.create_connection(("127.0.0.1", serve_instance.port)) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n" + H.encode() + b": \xff\xfe\r\n\r\n")
        assert b" 400 " in sock.recv(4096).split(b"\r\n")[0] + b" "
    assert read_events(events) == []  # no loader ran


def raw_request(port: int, head: bytes) -> tuple[int, bytes]:
    """Send one request as raw bytes (``head`` is everything after the request line) and return
    the status and body of the answer."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(30)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + head + b"\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status_line, _, rest = data.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


@serve.deployment
class ModelIdEcho:
    def __call__(self, request=None) -> str:
        return serve.get_multiplexed_model_id()


def test_model_ids_are_served_as_sent_or_refused_on_both_paths(serve_instance):
    handle = serve.run(ModelIdEcho.bind())
    header = H.encode() + b": "
    # U+0085 is a control character: refused over HTTP (not served as "evil") and by a handle.
    status, body = raw_request(serve_instance.port, header + "\u0085evil".encode() + b"\r\n")
    assert status == 400 and b"control character (U+0085)" in body, body
    with pytest.raises(serve.ModelIdError, match="U\\+0085"):
        handle.options(multiplexed_model_id="\u0085evil")
    # U+00A0 is not: both paths serve the id exactly as sent.
    status, body = raw_request(serve_instance.port, header + "\u00a0evil".encode() + b"\r\n")
    assert (status, body.decode()) == (200, "\u00a0evil")
    assert handle.options(multiplexed_model_id="\u00a0evil").remote().result() == "\u00a0evil"
    # The spaces and tabs HTTP allows around a value are not part of the id.
    status, body = raw_request(serve_instance.port, header + b" \tspaced \t\r\n")
    assert (status, body) == (200, b"spaced")


def test_oversized_headers_and_bodies(tmp_path):
    port = free_port()
    serve.start(http_options={"port": port, "max_body_bytes": 1000, "max_header_count": 20})
    try:
        serve.run(make_recorder().bind(str(tmp_path / "events")))
        url = f"http://127.0.0.1:{port}/"
        headers = {f"x-h{i}": "v" for i in range(30)}
        assert requests.get(url, headers=headers).status_code == 431
        assert requests.get(url, headers={"x-big": "v" * 20000}).status_code == 431
        assert requests.post(url, data=b"x" * 5000, headers={H: "1"}).status_code == 413
        assert requests.get(url, headers={H: "1"}).status_code == 200
    finally:
        serve.shutdown()


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def test_a_header_flood_is_refused_before_it_is_buffered(serve_instance):
    serve.run(ModelIdEcho.bind())
    line = b"x-pad: " + b"v" * 1000 + b"\r\n"
    chunk = line * 64  # about 64 KiB of header lines per send
    total = 64 * 1024 * 1024
    sent, answer = 0, b""
    before = rss_bytes()  # the proxy runs in this process
    with socket.create_connection(("127.0.0.1", serve_instance.port)) as sock:
        sock.settimeout(30)
        try:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
            while sent < total and not answer:
                sock.sendall(chunk)
                sent += len(chunk)
                if select.select([sock], [], [], 0)[0]:
                    answer = sock.recv(65536)
            if not answer:
                sock.sendall(b"\r\n")  # end the head: a server that took it all answers now
                answer = sock.recv(65536)
        except (BrokenPipeError, ConnectionResetError):
            pass
    grown = rss_bytes() - before
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert grown < 8 * 1024 * 1024, f"the proxy grew by {grown} bytes"
    # Early: what was sent is at most the socket buffers' worth past the bound.
    assert sent < 16 * 1024 * 1024, f"the proxy read {sent} bytes of headers before refusing"
    # The proxy still serves; headers just over max_header_bytes get 431, normal ones do not.
    header = H.encode() + b": "
    assert raw_request(serve_instance.port, header + b"ok\r\n") == (200, b"ok")
    big = b"x-big: " + b"v" * (16 * 1024) + b"\r\n"
    status, body = raw_request(serve_instance.port, big)
    assert status == 431 and b"16384 bytes" in body


def test_header_bound_is_per_request_on_keep_alive_and_pipelined_connections(serve_instance):
    serve.run(ModelIdEcho.bind())
    # Each head is 10 KiB: under the limit alone, over it if the bound were per connection.
    requests_ = b"".join(
        b"GET / HTTP/1.1\r\nHost: x\r\nx-pad: " + b"v" * 10240 + b"\r\n"
        + H.encode() + b": m%d\r\n\r\n" % i
        for i in range(6)
    )
    with socket.create_connection(("127.0.0.1", serve_instance.port)) as sock:
        sock.settimeout(30)
        sock.sendall(requests_)  # pipelined: all six at once
        data = b""
        while data.count(b"HTTP/1.1 200 ") < 6:
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
        for i in range(6):  # then one at a time on the same connection
            sock.sendall(requests_[: len(requests_) // 6])
            reply = b""
            while not reply.endswith(b"m0"):
                chunk = sock.recv(65536)
                assert chunk, reply
                reply += chunk
            assert reply.startswith(b"HTTP/1.1 200 ")
    assert all(b"m%d" % i in data for i in range(6))


def test_management_routes_token_and_switch(tmp_path):
    port = free_port()
    serve.start(http_options={"port": port, "management_token": "s3cret"})
    try:
        serve.run(make_recorder().bind(str(tmp_path / "events")))
        url = f"http://127.0.0.1:{port}/-/models"
        assert requests.get(url).status_code == 401
        assert requests.get(url, headers={"Authorization": "Bearer nope"}).status_code == 401
        assert requests.get(url, headers={"Authorization": "Bearer s3cret"}).status_code == 200
    finally:
        serve.shutdown()
    serve.start(http_options={"port": port, "management_routes": False})
    try:
        serve.run(make_recorder().bind(str(tmp_path / "events")))
        assert requests.get(f"http://127.0.0.1:{port}/-/models").status_code == 404
    finally:
        serve.shutdown()


def test_unauthenticated_pickle_to_a_replica_port_is_refused(serve_instance, tmp_path):
    from modelplex._driver.runtime import current_runtime

    flag = tmp_path / "pwned"
    handle = serve.run(Slow.bind(str(tmp_path / "events")))
    handle.pid.remote().result()
    routers = current_runtime().registry._routers  # where the proxy's router connected
    [router] = routers.values()
    [address] = router.replica_addresses().values()

    class Evil:
        def __reduce__(self):
            return (open, (str(flag), "w"))

    import pickle
    import struct

    payload = pickle.dumps(Evil())
    with socket.create_connection(tuple(address)) as sock:
        sock.settimeout(5)
        sock.sendall(struct.pack(">Q", len(payload)) + payload + b"\x00" * 64)
        data = b""
        try:
            while chunk := sock.recv(4096):
                data += chunk
        except (ConnectionResetError, socket.timeout):
            pass
    assert not flag.exists()
    assert handle.pid.remote().result()  # the replica still serves


def test_wedged_replica_fails_its_health_check_and_is_replaced(serve_instance, tmp_path):
    events = str(tmp_path / "events")
    handle = serve.run(
        Slow.options(health_check_period_s=0.2, health_check_timeout_s=1.0).bind(events)
    )
    pid = handle.pid.remote().result()
    os.kill(pid, signal.SIGSTOP)  # alive, but answers nothing

    def replaced():
        try:
            return handle.pid.remote().result(timeout_s=3) != pid
        except Exception:
            return False

    wait_until(replaced, timeout=20, message="the stopped replica was never replaced")
    wait_until(lambda: not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split(")")[-1].split()[0] == "Z")


def _live_replicas() -> list[int]:
    """Replica processes this test process started that are still running."""
    me = str(os.getpid())
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if fields[1] == me and fields[0] != "Z" and b"modelplex._replica" in cmdline:
            found.append(int(pid))
    return found


@serve.deployment(num_replicas=1)
class CrashesOnSecondStart:
    def __init__(self, folder: str) -> None:
        starts = len(os.listdir(folder)) + 1
        open(os.path.join(folder, str(starts)), "w").close()
        if starts == 2:
            os._exit(3)  # the first replacement dies while starting

    def pid(self) -> int:
        return os.getpid()


def test_a_replacement_that_crashes_while_starting_is_replaced_once(serve_instance, tmp_path):
    """The old controller replaced such a replacement twice: 2 replicas for num_replicas=1."""
    handle = serve.run(CrashesOnSecondStart.bind(str(tmp_path)))
    first = handle.pid.remote().result()
    os.kill(first, signal.SIGKILL)

    def served_by_a_new_replica():
        try:
            return handle.pid.remote().result(timeout_s=5) != first
        except Exception:
            return False

    wait_until(served_by_a_new_replica, timeout=30)
    time.sleep(2.0)  # room for a runaway extra replacement to start, as it did before
    assert len(os.listdir(tmp_path)) == 3
    assert len(_live_replicas()) == 1


@serve.deployment
class Blocking:
    async def block(self, seconds: float) -> str:
        time.sleep(seconds)  # blocks the user loop, as a careless async loader would
        return "done"

    async def pid(self) -> int:
        return os.getpid()


def test_a_new_router_is_greeted_while_user_code_blocks_the_loop(serve_instance):
    """Routers' connections are served on the user loop, but greeted on the control loop."""
    from modelplex._messages import ModelsUpdate
    from modelplex._driver.runtime import current_runtime
    from modelplex._data.transport import connect

    runtime = current_runtime()
    handle = serve.run(Blocking.bind())
    handle.pid.remote().result()
    [router] = runtime.registry.routers()
    [address] = router.replica_addresses().values()
    blocked = handle.block.remote(3.0)
    time.sleep(0.3)

    async def greeting() -> object:
        conn = await connect(tuple(address), secret=runtime._secret, timeout_s=1.5)
        try:
            return await asyncio.wait_for(conn.recv(), 1.0)
        finally:
            conn.close()

    started = time.monotonic()
    assert isinstance(asyncio.run(greeting()), ModelsUpdate)
    assert time.monotonic() - started < 2.0
    assert blocked.result() == "done"
