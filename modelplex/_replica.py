"""A replica: one process serving one deployment (``python -m modelplex._replica``).

Two event loops: the control loop (main thread) talks to the controller and accepts routers'
connections, so a slow constructor, a model load or a blocking ``async`` method never stops the
replica from answering health checks or greeting a new router. User code runs on the user loop
(its own thread), and so does each router's connection once greeted: a request is read, run
and answered on one loop, with no hop between threads (two hops cost a third of a no-op
request's time in the replica).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import os
import pickle
import signal
import socket
import struct
import sys
import threading
import time
import traceback
from typing import Any

import cloudpickle
from starlette.exceptions import HTTPException

from . import _admin, _context, _metrics, _multiplex, _streams
from . import _disk_cache
from ._admin import Admin
from ._aio import LoopThread, new_event_loop
from ._specs import ReplicaSpec
from ._stores import close_filesystems
from ._cache import ModelCache, disarm_finalizer
from ._errors import (
    MethodNotFoundError,
    RemoteError,
    UnserializableResultError,
    error_response,
    http_status_for,
)
from ._http import render, to_starlette
from ._logging import configure_replica_logging
from ._messages import (
    Call,
    Cancel,
    Credit,
    HTTPResult,
    ModelsUpdate,
    Ping,
    Pong,
    Preload,
    Preloaded,
    Reconfigure,
    Reconfigured,
    ReplicaReady,
    ReplicaStartFailed,
    ReplicaStopped,
    Result,
    StopReplica,
    Touch,
)
from ._remote import RemoteDirectory
from ._router import RouterRegistry, install_registry
from ._transport import Connection, ConnectionClosed, adopt, connect, start_server

logger = logging.getLogger("modelplex.replica")

# A Touch keeps its model wanted this long; routers repeat it while requests still wait.
_AWAITED_S = 0.2


class Replica:
    def __init__(self, spec: ReplicaSpec, metrics: _metrics.Metrics | None = None) -> None:
        self.spec = spec
        self.metrics = metrics
        self.recorder = (
            metrics.replica(spec.deployment_id, spec.replica_id) if metrics
            else _metrics.NoReplicaRecorder()
        )
        self.replica_id = spec.replica_id
        self.deployment = str(spec.deployment_id)
        self.loop = asyncio.get_running_loop()
        self.user = LoopThread("modelplex-user")
        self.instance: Any = None
        self.admin: Admin | None = None
        self.caches: list[ModelCache] = []
        # Routers' connections and the requests on them: user loop only.
        self.conns: set[Connection] = set()
        self.running: dict[tuple[int, int], asyncio.Task] = {}
        # The replies that stream or are answered before their task ends (an HTTP response
        # with background work), by the same key: credit for their streams arrives here.
        # Made when a request first needs one: a whole reply needs none.
        self.outboxes: dict[tuple[int, int], _streams.Outbox] = {}
        self.ongoing = 0
        # model id -> requests for it that reached this replica and have not finished. Caches
        # read it to prefer other victims, so a request already on its way never finds its
        # model just unloaded.
        self.wanted: dict[str, int] = {}
        # model id -> until when a router's Touch counts it as wanted (user loop only).
        self.awaited: dict[str, float] = {}
        self.idle = asyncio.Event()  # waited on the user loop
        self.idle.set()
        self.models_version = 0  # user loop only
        # The last update computed on the user loop, which owns the caches; the control loop
        # greets new connections with it and never reads a cache itself.
        self.latest_update = ModelsUpdate(self.replica_id, 0, {}, (), True)
        self.stopping = False
        self.access_log = spec.logging_config.enable_access_log

    # ---- life cycle --------------------------------------------------------------------------

    async def run(self) -> None:
        _multiplex.install_replica_hooks(
            self._on_new_cache, self.user.loop, self.spec.deployment_id.app
        )
        registry = RouterRegistry(
            self.loop, RemoteDirectory(self.spec.controller_address, self.spec.secret), self.spec.secret,
            events=self.metrics.router_events if self.metrics else None,
        )
        install_registry(registry)
        control = await connect(self.spec.controller_address, secret=self.spec.secret)
        try:
            cls, args, kwargs = cloudpickle.loads(self.spec.payload)
            replica_id = _context.ReplicaID(self.replica_id, self.spec.deployment_id)
            _context.replica_context = _context.ReplicaContext(replica_id)
            self.instance = await asyncio.wrap_future(self.user.submit(_construct(cls, args, kwargs)))
            _context.replica_context = _context.ReplicaContext(replica_id, self.instance)
            self.admin = Admin(
                self.replica_id, self.instance, self.caches,
                node=self.spec.node_id or socket.gethostname(), ongoing=lambda: self.ongoing,
            )
            if self.spec.cache_limits is not None:
                limits, admin = self.spec.cache_limits, self.admin

                async def configure() -> None:  # caches belong to the user loop
                    admin.configure(*limits)

                await asyncio.wrap_future(self.user.submit(configure()))
            start = getattr(self.instance, "__modelplex_start__", None)
            if start is not None:  # an ingress app's lifespan startup (see _ingress.py)
                await self._on_user(start())
            if self.spec.user_config is not None:  # before the first request, as in Ray
                await self._on_user(self._apply_user_config(self.spec.user_config))
        except BaseException as exc:
            logger.exception("Replica %s failed to start.", self.replica_id)
            await control.send(
                ReplicaStartFailed(
                    self.replica_id, f"{type(exc).__name__}: {exc}", traceback.format_exc()
                )
            )
            return
        server = await start_server(self._greet, secret=self.spec.secret, host=self.spec.bind_host)
        await control.send(ReplicaReady(self.replica_id, server.address, os.getpid()))
        self.recorder.started()
        logger.info("Replica %s ready at %s:%d.", self.replica_id, *server.address)
        try:
            while True:
                message = await control.recv()
                if isinstance(message, Ping):
                    if callable(getattr(self.instance, "check_health", None)):
                        asyncio.get_running_loop().create_task(self._check_health(control, message))
                    else:
                        control.send_nowait(Pong(message.seq))
                elif isinstance(message, Preload):
                    asyncio.get_running_loop().create_task(self._preload(control, message))
                elif isinstance(message, Reconfigure):
                    asyncio.get_running_loop().create_task(self._reconfigure(control, message))
                elif isinstance(message, StopReplica):
                    await self._stop(message.timeout_s, message.wait_loop_s, message.reason)
                    await self._on_user(self._close_connections())
                    await server.close()
                    await control.send(ReplicaStopped(self.replica_id))
                    return
        except ConnectionClosed:
            logger.warning("Controller went away; replica %s exits.", self.replica_id)
        finally:
            await registry.close()

    async def _preload(self, control: Connection, message: Preload) -> None:
        """The controller hands this replica a hot model before its holder stops."""
        try:
            await asyncio.wrap_future(
                self.user.submit(self.admin.run(_admin.PRELOAD, (message.model_id,)))
            )
            reply = Preloaded(message.seq, True)
        except Exception as exc:
            reply = Preloaded(message.seq, False, f"{type(exc).__name__}: {exc}")
        try:
            control.send_nowait(reply)
        except ConnectionClosed:
            pass

    async def _check_health(self, control: Connection, ping: Ping) -> None:
        """The user's ``check_health`` on the user loop, bounded by the health check timeout:
        raising or running past it answers unhealthy."""
        try:
            await asyncio.wait_for(self._on_user(_call(self.instance.check_health)), ping.timeout_s)
            pong = Pong(ping.seq)
        except asyncio.TimeoutError:
            pong = Pong(ping.seq, False, f"check_health did not return within {ping.timeout_s:g}s")
        except Exception as exc:
            pong = Pong(ping.seq, False, f"{type(exc).__name__}: {exc}")
        if not pong.healthy:
            logger.warning("Health check failed: %s", pong.error)
        try:
            control.send_nowait(pong)
        except ConnectionClosed:
            pass

    async def _reconfigure(self, control: Connection, message: Reconfigure) -> None:
        """A new ``user_config`` for this running replica (its models stay loaded)."""
        try:
            await self._on_user(self._apply_user_config(message.user_config))
            reply = Reconfigured(message.seq, True)
        except Exception as exc:
            logger.exception("reconfigure() failed; keeping the previous user_config.")
            reply = Reconfigured(
                message.seq, False, f"{type(exc).__name__}: {exc}", traceback.format_exc()
            )
        try:
            control.send_nowait(reply)
        except ConnectionClosed:
            pass

    async def _apply_user_config(self, user_config: Any) -> None:
        method = getattr(self.instance, "reconfigure", None)
        if not callable(method):
            raise ValueError(
                f"user_config is set but deployment {self.spec.deployment_id.name!r} has no "
                f"reconfigure() method"
            )
        await _call(method, user_config)

    async def _stop(
        self, timeout_s: float, wait_loop_s: float = 2.0, reason: str = "shutdown"
    ) -> None:
        """Finish the requests in flight, then unload every model (running their __del__).

        Checks every ``wait_loop_s`` (and at once when the last one ends) whether requests
        still run, for at most ``timeout_s``."""
        self.stopping = True
        deadline = time.monotonic() + timeout_s
        while self.ongoing:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                logger.warning("%d requests still running after %.1fs; stopping.", self.ongoing, timeout_s)
                break
            try:
                await self._on_user(asyncio.wait_for(self.idle.wait(), min(wait_loop_s, remaining)))
            except asyncio.TimeoutError:
                logger.info(
                    "Stopping: %d requests still running; waiting up to %.1fs more.",
                    self.ongoing, max(0.0, deadline - time.monotonic()),
                )
        caches = list(self.caches)

        async def close_all() -> None:
            for cache in caches:
                await cache.close(reason=reason)
            await close_filesystems()  # the store clients serve.fetch kept open on this loop

        await asyncio.wrap_future(self.user.submit(close_all()))
        await self._finalize_instance()

    async def _finalize_instance(self) -> None:
        """As Ray Serve does on a graceful stop: an ingress app's lifespan shutdown, then the
        deployment's own ``__del__``, once, after its models are unloaded (then disarmed, so
        the GC does not run it again)."""
        stop = getattr(self.instance, "__modelplex_stop__", None)
        if stop is not None:
            try:
                await self._on_user(stop())
            except Exception:
                logger.exception("The ingress app's shutdown failed.")
        if self.instance is None or getattr(type(self.instance), "__del__", None) is None:
            return
        try:
            await self._on_user(_call(self.instance.__del__))
        except Exception:
            logger.exception("The deployment's __del__ raised.")
        disarm_finalizer(self.instance)

    async def _on_user(self, coro: Any) -> Any:
        """Run ``coro`` on the user loop and wait for it here."""
        return await asyncio.wrap_future(self.user.submit(coro))

    # ---- model caches ------------------------------------------------------------------------

    def _on_new_cache(self, cache: ModelCache) -> None:
        self.caches.append(cache)
        if self.metrics is not None:
            cache.events = self.metrics.cache_events(self.spec.deployment_id, self.replica_id)
        if self.admin is not None:
            self.admin.apply_limits(cache)
        cache.on_change = self._models_changed  # called on the user loop
        cache.wanted = self._wanted
        self._models_changed()

    def _touch(self, model_id: str) -> None:  # on the user loop, which owns the caches
        for cache in self.caches:
            cache.touch(model_id)
        self.awaited[model_id] = time.monotonic() + _AWAITED_S

    def _wanted(self) -> frozenset[str]:
        """Models that requests here, or queued for here at a router, are about to use."""
        now = time.monotonic()
        for model_id in [m for m, until in self.awaited.items() if until < now]:
            del self.awaited[model_id]
        return frozenset(dict(self.wanted)) | frozenset(self.awaited)  # dict() copies atomically

    def _models_changed(self) -> None:
        update = self._models_update()
        if self.user.in_thread():
            self._broadcast(update)
        else:
            self.user.loop.call_soon_threadsafe(self._broadcast, update)

    def _models_update(self) -> ModelsUpdate:
        loaded: dict[str, float] = {}
        loading: list[str] = []
        has_room = True
        slots = 0
        for cache in list(self.caches):
            snapshot = cache.snapshot()
            for info in snapshot.loaded:
                loaded[info.model_id] = info.load_s
            loading.extend(snapshot.loading)
            limit = cache.max_models
            if limit != -1 and len(snapshot.loaded) + len(snapshot.loading) >= limit:
                has_room = False
            slots = -1 if limit == -1 or slots == -1 else slots + limit
        self.models_version += 1
        return ModelsUpdate(
            self.replica_id, self.models_version, loaded, tuple(loading), has_room, slots
        )

    def _broadcast(self, update: ModelsUpdate) -> None:
        self.latest_update = update
        for conn in list(self.conns):
            try:
                conn.send_nowait(update)
            except Exception:
                conn.close()

    # ---- requests ----------------------------------------------------------------------------

    async def _greet(self, conn: Connection) -> None:
        """On the control loop: tell a new router what this replica holds (it routes nothing
        here before that, so a blocked user loop must not delay it), then hand it over.
        It sends the last update the user loop made: the caches belong to that loop."""
        conn.send_nowait(self.latest_update)
        fd = conn.detach()
        await self._on_user(self._serve(fd, conn.peer, conn.max_frame_bytes))

    async def _close_connections(self) -> None:
        for conn in list(self.conns):
            conn.close()

    async def _serve(self, fd: int, peer: str, max_frame_bytes: int) -> None:
        conn = await adopt(fd, peer, max_frame_bytes=max_frame_bytes)
        self.conns.add(conn)
        try:
            conn.send_nowait(self._models_update())  # what changed during the hand-over
            while True:
                message = await conn.recv()
                if isinstance(message, Call):
                    self._dispatch(conn, message)
                elif isinstance(message, Credit):
                    outbox = self.outboxes.get((id(conn), message.request_id))
                    if outbox is not None:
                        outbox.credit(message.n)
                elif isinstance(message, Cancel):
                    running = self.running.get((id(conn), message.request_id))
                    if running is not None:
                        running.cancel()
                elif isinstance(message, Touch):
                    self._touch(message.model_id)
        except ConnectionClosed:
            pass
        finally:
            self.conns.discard(conn)
            conn.close()
            # Nobody is left to read what these produce; a stream would wait for credit for ever.
            for key, task in list(self.running.items()):
                if key[0] == id(conn):
                    task.cancel()

    def _dispatch(self, conn: Connection, call: Call) -> None:
        self.ongoing += 1
        self.recorder.ongoing(self.ongoing)
        if call.model_id:
            self.wanted[call.model_id] = self.wanted.get(call.model_id, 0) + 1
        self.idle.clear()
        key = (id(conn), call.request_id)
        task = self.user.loop.create_task(self._execute(conn, key, call))
        self.running[key] = task
        task.add_done_callback(functools.partial(self._reply, conn, key, call))

    def _reply(
        self, conn: Connection, key: tuple[int, int], call: Call, task: asyncio.Task
    ) -> None:
        self.running.pop(key, None)
        self.ongoing -= 1
        self.recorder.ongoing(self.ongoing)
        if call.model_id:
            _decrement(self.wanted, call.model_id)
        if self.ongoing == 0:
            self.idle.set()
        outbox = self.outboxes.pop(key, None)
        if conn.closed or (outbox is not None and outbox.answered):
            return
        if task.cancelled():
            result = _failure(call.request_id, asyncio.CancelledError("request cancelled"))
        else:
            result = task.result()
        conn.send_nowait(result)

    def _outbox(self, conn: Connection, key: tuple[int, int]) -> _streams.Outbox:
        outbox = self.outboxes[key] = _streams.Outbox(conn, key[1])
        return outbox

    async def _execute(self, conn: Connection, key: tuple[int, int], call: Call) -> Result | None:
        ctx = _context.RequestContext(
            request_id=call.trace_id or str(call.request_id),
            model_id=call.model_id,
            route=call.http.scope.get("path", "") if call.http is not None else "",
        )
        token = _context.set_request(ctx)
        started = time.perf_counter()
        outcome = "CANCELLED"  # unless it returns or raises
        error: str | None = "CancelledError"  # for the metrics, unless it returns
        try:
            if self.admin.handles(call.method):
                args = pickle.loads(call.payload)[0] if call.payload else ()
                value = await self.admin.run(call.method, args)
                outcome, error = "OK", None
                return self._success(call, value)
            if call.http is not None:
                result = await self._serve_http(conn, key, call)
            else:
                result = await self._invoke(conn, key, call)
            outcome, error = "OK", None
            return result
        except HTTPException as exc:
            outcome, error = str(exc.status_code), type(exc).__name__
            outbox = self.outboxes.get(key)
            if call.http is None or (outbox is not None and outbox.started):
                return _failure(call.request_id, exc, traceback.format_exc())
            return self._success(call, HTTPResult(*error_response(exc)))
        except UnserializableResultError as exc:  # its message says it all; logged here alone
            logger.error("Request failed: %s", exc)
            return _failure(call.request_id, exc)
        except Exception as exc:
            outcome, error = str(_log_failure(exc)), type(exc).__name__
            return _failure(call.request_id, exc, traceback.format_exc())
        finally:
            if self.access_log and call.http is None and not self.admin.handles(call.method):
                # A handle call's access line; an HTTP request has its own at the proxy.
                ms = (time.perf_counter() - started) * 1000
                logger.info(
                    "CALL %s %s %.1fms", call.method, outcome, ms,
                    extra={"access": True, "method": "CALL", "status": outcome,
                           "latency_ms": round(ms, 1)},
                )
            ctx.release_all()
            _context.reset_request(token)
            route = (call.http.scope.get("root_path") or "/") if call.http is not None else ""
            self.recorder.request(route, time.perf_counter() - started, error)

    def _method(self, name: str) -> Any:
        method = getattr(self.instance, name, None)
        if method is None or not callable(method):
            raise MethodNotFoundError(self.spec.deployment_id.name, name)
        return method

    async def _invoke(self, conn: Connection, key: tuple[int, int], call: Call) -> Result:
        """A handle's call: the method's value, or its generator's items streamed (Ray's rules:
        ``stream=True`` needs a generator, and a generator needs ``stream=True``)."""
        method = self._method(call.method)
        args, kwargs = pickle.loads(call.payload) if call.payload else ((), {})
        value = await _run(method, args, kwargs)
        if call.stream:
            if not _streams.is_generator(value):
                raise TypeError(
                    f"Called method '{call.method}' with `handle.options(stream=True)` but it "
                    f"did not return a generator."
                )
            await _streams.pump(value, self._outbox(conn, key).put)
            return Result(call.request_id, True, _streams.NONE)
        if _streams.is_generator(value):
            await _streams.close(value)
            raise TypeError(
                f"Method '{call.method}' returned a generator. You must use "
                f"`handle.options(stream=True)` to call generators on a deployment."
            )
        return self._success(call, value)

    async def _serve_http(
        self, conn: Connection, key: tuple[int, int], call: Call
    ) -> Result | None:
        """An HTTP request: a whole response is one Result; a streamed one goes out through the
        outbox as it is produced (and ``None`` here: it was answered as it ended)."""
        assert call.http is not None
        request = to_starlette(call.http)
        asgi = getattr(self.instance, "__modelplex_asgi__", None)
        if asgi is None:
            value = await _run(self._method(call.method), (request,), {})
            streams = _streams.streams_over_http(value)
            if not streams and getattr(value, "background", None) is None:
                return self._success(call, await render(value))  # the fast path
        outbox = self._outbox(conn, key)
        sink = _streams.HTTPSink(
            outbox, lambda whole: outbox.answer(self._success(call, whole))
        )
        if asgi is not None:  # @serve.ingress: the app answers, streaming or not
            await asgi(request.scope, request.receive, sink.send)
        elif streams:
            await _streams.stream_http(value, sink)
        else:  # a Response with background tasks: answered before they run, as uvicorn does
            await value(request.scope, request.receive, sink.send)
        if not sink.complete:
            if sink.streaming:  # the app returned mid-body: end the stream where it is
                outbox.answer(Result(call.request_id, True, _streams.NONE))
            else:
                raise RuntimeError("the ASGI app returned without completing its response")
        return None

    def _success(self, call: Call, value: Any) -> Result:
        try:
            return Result(call.request_id, True, _streams.dumps(value))
        except Exception as exc:
            error = UnserializableResultError(
                f"the return value of {self.spec.deployment_id.name}.{call.method}, of type "
                f"{type(value).__qualname__}, cannot be serialized: {exc}"
            )
            logger.error("%s", error)
            return _failure(call.request_id, error)


def _log_failure(exc: Exception) -> int:
    """A client's error (4xx) is one WARNING line, without a traceback: a misconfigured client
    must not flood the logs. Anything else is an ERROR with its traceback, once: the requests
    a failed load fails get one line each. Returns the status."""
    status = http_status_for(exc)
    if 400 <= status < 500:
        first = str(exc).strip().splitlines()[:1]
        logger.warning("Request failed (%d): %s", status, ": ".join([type(exc).__name__, *first]))
    elif getattr(exc, "_modelplex_logged", False):  # a failed load, logged with its traceback
        logger.error("Request failed: %s: %s (see the load's traceback above)",
                     type(exc).__name__, exc)
    else:
        logger.exception("Request failed: %s: %s", type(exc).__name__, exc)
    return status


def _failure(request_id: int, exc: BaseException, tb: str = "") -> Result:
    """Send the exception as itself if it survives a round trip, else as a RemoteError."""
    try:
        payload = cloudpickle.dumps(exc, protocol=5)
        pickle.loads(payload)
    except Exception:
        payload = cloudpickle.dumps(RemoteError(type(exc).__qualname__, str(exc), tb))
    return Result(request_id, False, payload, tb)


async def _run(method: Any, args: tuple, kwargs: dict) -> Any:
    """Call a request's method: async ones on the user loop, sync ones in a thread (so they may
    block), generator functions directly (making the generator runs none of its code)."""
    if (inspect.iscoroutinefunction(method)
            or inspect.iscoroutinefunction(getattr(method, "__call__", None))):
        value = await method(*args, **kwargs)
    elif inspect.isasyncgenfunction(method) or inspect.isgeneratorfunction(method):
        value = method(*args, **kwargs)
    else:
        value = await asyncio.to_thread(method, *args, **kwargs)
    if inspect.isawaitable(value):
        value = await value
    return value


async def _call(method: Any, *args: Any) -> Any:
    """A lifecycle method of the user's (reconfigure, check_health), sync or async; on the user
    loop, a sync one in a thread as requests' sync methods are."""
    if inspect.iscoroutinefunction(method):
        return await method(*args)
    value = await asyncio.to_thread(method, *args)
    if inspect.isawaitable(value):
        value = await value
    return value


async def _construct(cls: type, args: tuple, kwargs: dict) -> Any:
    # Constructed on the user loop so __init__ can use asyncio (create tasks, get the loop).
    return cls(*args, **kwargs)


def _decrement(counts: dict[str, int], key: str) -> None:
    if counts.get(key, 1) <= 1:
        counts.pop(key, None)
    else:
        counts[key] -= 1


def _watch_parent(stdin: Any) -> None:
    """Exit as soon as the parent goes away (its end of our stdin closes)."""
    try:
        while stdin.read(65536):
            pass
    finally:
        os._exit(0)


def _read_spec(stdin: Any) -> ReplicaSpec:
    header = stdin.read(8)
    if len(header) != 8:
        raise SystemExit("modelplex replica: no spec on stdin")
    (size,) = struct.unpack(">Q", header)
    return pickle.loads(stdin.read(size))


def run_replica(spec: ReplicaSpec) -> int:
    """Serve until stopped; the exit code says whether the replica ended cleanly.

    Shared by every backend: the local one calls it in a fresh process, the Ray one in an actor.
    """
    for path in reversed(spec.sys_path):
        if path not in sys.path:
            sys.path.insert(0, path)
    configure_replica_logging(
        str(spec.deployment_id), spec.replica_id, spec.log_dir, spec.logging_config,
        spec.deployment_id.app,
    )
    _streams.install()
    if spec.node_id:  # a backend with several nodes per filesystem: one disk cache per node
        _disk_cache.configure(node_id=spec.node_id)
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    found = _metrics.for_process(spec.metrics, spec.node_id)

    async def run() -> None:
        await Replica(spec, found[0] if found else None).run()

    try:
        loop.run_until_complete(run())
        return 0
    except BaseException:  # the log file and the console must say why a replica died
        logger.exception("Replica %s crashed.", spec.replica_id)
        return 1
    finally:
        if found is not None:
            _metrics.process_ended(found[1])
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()


def main() -> None:
    # Ctrl-C in a terminal reaches the whole process group. The driver owns this process's
    # life (StopReplica, then its stdin closing), so leave the interrupt to it: it drains the
    # replicas and unloads their models in order instead of every replica dying at once.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stdin = sys.stdin.buffer
    spec = _read_spec(stdin)
    threading.Thread(target=_watch_parent, args=(stdin,), name="modelplex-parent", daemon=True).start()
    os._exit(run_replica(spec))


if __name__ == "__main__":
    main()
