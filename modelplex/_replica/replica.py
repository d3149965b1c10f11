"""A replica: one process serving one deployment, its life cycle and its control loop.

Two event loops: the control loop (main thread) talks to the controller and accepts routers'
connections, so a slow constructor, a model load or a blocking ``async`` method never stops the
replica from answering health checks or greeting a new router. User code runs on the user loop
(its own thread), and so does each router's connection once greeted: a request is read, run
and answered on one loop, with no hop between threads (two hops cost a third of a no-op
request's time in the replica). What a request does is ``execution``; what the caches hold,
as routers see it, is ``holdings``; what runs here for which router, ``inflight``; the process
around this is ``process``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import os
import socket
import time
import traceback
from typing import Any, Callable, TypeVar

import cloudpickle

from .. import _context
from .._aio import LoopThread
from .._data.remote import RemoteDirectory
from .._data.routers import RouterRegistry, install_registry
from .._data.channel import ConnectionClosed
from .._data.transport import Connection, adopt, connect, start_server
from .._messages import (
    Call,
    Cancel,
    Credit,
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
    SocketIn,
    StopReplica,
    Touch,
)
from .._events import NO_CACHE_EVENTS
from .._obs.metrics import Metrics
from .._obs.recorders import NoReplicaRecorder
from .._specs import Placement, ReplicaSpec
from .._types import ADMIN_PREFIX
from .._storage.stores import close_filesystems
from .admin import Admin
from .cache import ModelCache
from .execution import Executor, failure, run_user
from .finalizer import finalize
from .holdings import Holdings
from .inflight import InFlightCounts
from .model_log import ModelLog, Outgoing
from .outbox import Outboxes, RequestKey

__all__ = ["Replica"]

logger = logging.getLogger("modelplex.replica")

C = TypeVar("C")


class Replica:
    def __init__(self, spec: ReplicaSpec, metrics: Metrics | None = None) -> None:
        self.spec = spec
        self.metrics = metrics
        self.recorder = (
            metrics.replica(spec.deployment_id, spec.replica_id) if metrics
            else NoReplicaRecorder()
        )
        self.replica_id = spec.replica_id
        self.deployment = str(spec.deployment_id)
        self.loop = asyncio.get_running_loop()
        self.user = LoopThread("modelplex-user")
        # Made in ``run``, on the user loop, once the instance is constructed.
        self.instance: Any = None
        self.admin: Admin | None = None
        self.executor: Executor | None = None
        self.caches: list[ModelCache] = []  # user loop only, as everything below
        self.holdings = Holdings(self.replica_id, self.caches)
        # Routers' connections and the requests on them.
        self.conns: set[Connection] = set()
        self.in_flight = InFlightCounts(
            lambda conn, message: conn.send_nowait(message),
            lambda delay, flush: self.user.loop.call_later(delay, flush),
        )
        self.running: dict[RequestKey, asyncio.Task] = {}
        # The replies that stream or are answered before their task ends (an HTTP response
        # with background work), by the same key: credit for their streams arrives here.
        self.outboxes = Outboxes()
        self.ongoing = 0  # requests running here, whoever sent them
        self.managing = 0  # management calls running here (status probes, preloads, ...)
        self.idle = asyncio.Event()  # waited on the user loop
        self.idle.set()
        # The last update computed on the user loop, which owns the caches; the control loop
        # greets new connections with it and never reads a cache itself.
        self.latest_update = ModelsUpdate(self.replica_id, 0, {}, (), True)
        self.stopping = False
        self.outgoing = Outgoing(self.replica_id, self.loop)  # ModelEvents to the controller

    # ---- life cycle --------------------------------------------------------------------------

    async def run(self) -> None:
        _context.install_replica_hooks(self, self.user.loop, self.spec.deployment_id.app)
        registry = RouterRegistry(
            self.loop, RemoteDirectory(self.spec.controller_address, self.spec.secret), self.spec.secret,
            events=self.metrics.router_events if self.metrics else None,
        )
        install_registry(registry)
        control = await connect(self.spec.controller_address, secret=self.spec.secret)
        try:
            cls, args, kwargs = cloudpickle.loads(self.spec.payload)
            replica_id = _context.ReplicaID(self.replica_id, self.spec.deployment_id)
            placement = self.spec.placement or Placement()
            context = _context.ReplicaContext(
                replica_id, None, placement.gpu_ids, dict(placement.assigned)
            )
            _context.replica_context = context
            self.instance = await asyncio.wrap_future(self.user.submit(_construct(cls, args, kwargs)))
            _context.replica_context = dataclasses.replace(context, servable_object=self.instance)
            self.admin = Admin(
                self.replica_id, self.instance, self.caches, loaders=self.spec.interface.loaders,
                node=self.spec.node_id or socket.gethostname(), ongoing=lambda: self.ongoing,
            )
            self.executor = Executor(
                self.instance, self.admin, deployment=self.spec.deployment_id.name,
                recorder=self.recorder, outboxes=self.outboxes,
                ingress=self.spec.interface.ingress,
                access_log=self.spec.logging_config.enable_access_log,
            )
            if self.spec.cache_limits is not None:
                limits, admin = self.spec.cache_limits, self.admin

                async def configure() -> None:  # caches belong to the user loop
                    admin.configure(limits)

                await self._on_user(configure())
            if self.spec.interface.ingress:  # the app's lifespan startup (see _user/ingress.py)
                await self._on_user(self.instance.__modelplex_start__())
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
        self.outgoing.start(control)  # the caches' loads and evictions, from now on as they happen
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
                self.user.submit(self.admin.preload(message.model_id))
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
            await asyncio.wait_for(
                self._on_user(run_user(self.instance.check_health, (), {})), ping.timeout_s
            )
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
        await run_user(method, (user_config,), {})

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
        if self.instance is None:
            return
        if self.spec.interface.ingress:
            try:
                await self._on_user(self.instance.__modelplex_stop__())
            except Exception:
                logger.exception("The ingress app's shutdown failed.")
        try:
            await self._on_user(finalize(self.instance))
        except Exception:
            logger.exception("The deployment's __del__ raised.")

    async def _on_user(self, coro: Any) -> Any:
        """Run ``coro`` on the user loop and wait for it here."""
        return await asyncio.wrap_future(self.user.submit(coro))

    # ---- model caches ------------------------------------------------------------------------

    def new_cache(self, make: Callable[[_context.CacheHooks], C]) -> C:
        """A multiplexed loader's first use (``_context.CacheHost``): its cache, told of this
        replica (on the user loop, which owns the caches) and kept here."""
        events = ModelLog(
            self.metrics.cache_events(self.spec.deployment_id, self.replica_id)
            if self.metrics is not None else NO_CACHE_EVENTS,
            self.outgoing.tell,
        )
        cache = make(_context.CacheHooks(self._models_changed, self.holdings.wanted, events))
        if not isinstance(cache, ModelCache):
            raise TypeError(f"a replica keeps ModelCaches, not {type(cache).__qualname__}")
        self.caches.append(cache)
        if self.admin is not None:
            self.admin.apply_limits(cache)
        self._models_changed()
        return cache

    def _models_changed(self) -> None:
        update = self.holdings.update()
        if self.user.in_thread():
            self._broadcast(update)
        else:
            self.user.loop.call_soon_threadsafe(self._broadcast, update)

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
        self.in_flight.connected(conn)
        try:
            conn.send_nowait(self.holdings.update())  # what changed during the hand-over
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
                elif isinstance(message, SocketIn):
                    inbox = self.executor.inboxes.get((id(conn), message.request_id))
                    if inbox is not None:
                        inbox.put(message.message)
                elif isinstance(message, Touch):
                    self.holdings.touch(message.model_id)
        except ConnectionClosed:
            pass
        finally:
            self.conns.discard(conn)
            self.in_flight.disconnected(conn)
            conn.close()
            # Nobody is left to read what these produce; a stream would wait for credit for ever.
            for key, task in list(self.running.items()):
                if key[0] == id(conn):
                    task.cancel()

    def _dispatch(self, conn: Connection, call: Call) -> None:
        if call.method.startswith(ADMIN_PREFIX):  # management (a status probe): not a request
            self.managing += 1
        else:
            self.ongoing += 1
            self.recorder.ongoing(self.ongoing)
            self.idle.clear()
        if call.model_id:
            self.holdings.arrived(call.model_id)
            self.in_flight.arrived(conn, call.model_id)
        key = (id(conn), call.request_id)
        assert self.executor is not None  # made before the server accepts routers
        task = self.user.loop.create_task(self.executor.execute(conn, key, call))
        self.running[key] = task
        task.add_done_callback(functools.partial(self._reply, conn, key, call))

    def _reply(
        self, conn: Connection, key: RequestKey, call: Call, task: asyncio.Task
    ) -> None:
        self.running.pop(key, None)
        if call.method.startswith(ADMIN_PREFIX):
            self.managing -= 1
        else:
            self.ongoing -= 1
            self.recorder.ongoing(self.ongoing)
            if self.ongoing == 0:
                self.idle.set()
        if call.model_id:
            self.holdings.finished(call.model_id)
            self.in_flight.finished(conn, call.model_id)
        outbox = self.outboxes.pop(key)
        if conn.closed or (outbox is not None and outbox.answered):
            return
        if task.cancelled():
            result = failure(call.request_id, asyncio.CancelledError("request cancelled"))
        else:
            result = task.result()
        conn.send_nowait(result)


async def _construct(cls: type, args: tuple, kwargs: dict) -> Any:
    # Constructed on the user loop so __init__ can use asyncio (create tasks, get the loop).
    return cls(*args, **kwargs)
