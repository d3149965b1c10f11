"""The async shell around the routing policy: one ``Router`` per deployment per process.

It keeps a connection to each replica of its deployment, counts its own requests in flight on
each, learns what each replica holds from the replica's pushes, and asks the pure policy in
``_routing`` where each request goes. Requests the policy cannot place yet wait in a FIFO
queue that is re-examined whenever something changes (a reply, a push, a new replica set) and
on a short tick while anything waits, so waiting time can add up toward a spill.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import pickle
import random
import threading
import time
from collections import deque
from typing import Any, Callable, Protocol

import cloudpickle

from ._errors import BackPressureError, RemoteError, RemoteTraceback, ReplicaDiedError
from ._messages import (
    Call,
    DeploymentID,
    HTTPRequest,
    ModelsUpdate,
    Touch,
    ReplicaInfo,
    ReplicaSet,
    Result,
    Cancel,
)
from ._routing import Choice, Reason, ReplicaState, SpillMeter, choose_replica
from ._transport import Connection, ConnectionClosed, connect

logger = logging.getLogger("modelplex.router")

_TICK_S = 0.01
# How often a router reminds a busy holder that requests wait for one of its models.
_REMIND_S = 0.05
_CONNECT_TIMEOUT_S = 5.0
_SEND_ATTEMPTS = 3


def _encode_args(args: tuple, kwargs: dict) -> bytes:
    try:
        return cloudpickle.dumps((args, kwargs), protocol=5)
    except Exception as exc:
        raise TypeError(f"the arguments of this call cannot be serialized: {exc}") from exc


class ReplicaDirectory(Protocol):
    """Where a router learns the replicas of a deployment (the controller, near or far)."""

    async def watch(self, deployment_id: DeploymentID, known_version: int) -> ReplicaSet: ...


class _Replica:
    """A router's view of one replica and its connection."""

    def __init__(self, info: ReplicaInfo) -> None:
        self.info = info
        self.conn: Connection | None = None
        self.ongoing = 0
        self.inflight: dict[int, asyncio.Future] = {}
        self.loaded: dict[str, float] = {}
        self.loading: frozenset[str] = frozenset()
        self.sent_loads: dict[str, int] = {}  # model id -> requests sent that will load it
        self.reminded: dict[str, float] = {}  # model id -> when we last sent Touch for it
        self.has_room = True
        self.routable = False  # connected and still in the published set
        self.dead = False

    def state(self) -> ReplicaState:
        loading = self.loading
        if self.sent_loads:
            loading = loading | frozenset(self.sent_loads)
        return ReplicaState(
            replica_id=self.info.replica_id,
            ongoing=self.ongoing,
            max_ongoing=self.info.max_ongoing,
            loaded=frozenset(self.loaded),
            loading=loading,
            has_model_room=self.has_room,
        )

    def holds(self, model_id: str) -> bool:
        return model_id in self.loaded or model_id in self.loading or model_id in self.sent_loads


class _NotSent(Exception):
    """The call never left this process; it is safe to send it elsewhere."""


class _Slot:
    """A request's place on one replica, from placement until its result arrives."""

    __slots__ = ("replica", "model_id", "loads")

    def __init__(self, replica: _Replica, model_id: str, loads: bool) -> None:
        self.replica = replica
        self.model_id = model_id
        self.loads = loads


class _Waiting:
    __slots__ = ("model_id", "future", "last_seen")

    def __init__(self, model_id: str, future: asyncio.Future, now: float) -> None:
        self.model_id = model_id
        self.future = future  # resolves to the _Slot reserved for it
        self.last_seen = now


class Router:
    def __init__(
        self,
        deployment_id: DeploymentID,
        directory: ReplicaDirectory,
        *,
        secret: bytes,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        default_load_cost_s: float = 1.0,
        max_replicas_per_model: int | None = None,
    ) -> None:
        self.deployment_id = deployment_id
        self._directory = directory
        self._secret = secret
        self._rng = rng or random.Random()
        self._clock = clock
        self._default_load_cost_s = default_load_cost_s
        self._max_replicas_per_model = max_replicas_per_model
        self._replicas: dict[str, _Replica] = {}
        self._version = -1
        self._expected = 0
        self._connecting = 0
        self._max_queued = -1
        self._queue: deque[_Waiting] = deque()
        self._spill = SpillMeter()
        self._load_cost: dict[str, float] = {}
        self._ids = itertools.count(1)
        self._watch_task: asyncio.Task | None = None
        self._tick_task: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self._closed = False

    # ---- public ------------------------------------------------------------------------------

    async def call(
        self,
        method: str,
        args: tuple = (),
        kwargs: dict | None = None,
        *,
        model_id: str = "",
        http: HTTPRequest | None = None,
        trace_id: str = "",
    ) -> Any:
        """Route one request, send it, and return its result (or raise the remote error)."""
        if self._watch_task is None:
            self._watch_task = asyncio.get_running_loop().create_task(self._watch())
        payload = _encode_args(args, kwargs) if (args or kwargs) else b""
        for _ in range(_SEND_ATTEMPTS):
            replica = self._place_now(model_id)
            if replica is None:
                slot = await self._wait_for_replica(model_id)
            else:
                slot = self._reserve(replica, model_id)
            try:
                result = await self._send(slot, method, payload, http, trace_id)
            except _NotSent:
                # The replica died before we could write: nothing ran, so try another one.
                self._fail_replica(slot.replica, "connection lost")
                continue
            return self._decode(result, method)
        raise ReplicaDiedError(slot.replica.info.replica_id, "connection lost")

    async def call_replica(self, replica_id: str, method: str, *args: Any) -> Any:
        """Call one replica directly, bypassing the policy (model management uses this)."""
        replica = self._replicas.get(replica_id)
        if replica is None or not replica.routable:
            raise ReplicaDiedError(replica_id, "it is no longer serving")
        payload = _encode_args(args, {}) if args else b""
        try:
            result = await self._send(self._reserve(replica, ""), method, payload, None, "")
        except _NotSent:
            raise ReplicaDiedError(replica_id, "connection lost") from None
        return self._decode(result, method)

    async def wait_ready(self, timeout_s: float = 30.0) -> list[str]:
        """Wait until every published replica is connected; return their ids."""
        if self._watch_task is None:
            self._watch_task = asyncio.get_running_loop().create_task(self._watch())
        deadline = self._clock() + timeout_s
        while True:
            ready = [r.info.replica_id for r in self._replicas.values() if r.routable]
            if self._version >= 0 and len(ready) >= self._expected:
                return ready
            if self._clock() > deadline:
                raise TimeoutError(f"replicas of {self.deployment_id} not ready in {timeout_s}s")
            await asyncio.sleep(0.01)

    def _decode(self, result: Result, method: str) -> Any:
        try:
            value = pickle.loads(result.payload)
        except Exception as exc:
            raise RemoteError(
                "UnpicklingError",
                f"the result of {self.deployment_id.name}.{method} cannot be unpickled here: "
                f"{type(exc).__name__}: {exc}",
            ) from None
        if result.ok:
            return value
        if result.traceback and isinstance(value, BaseException):
            value.__cause__ = RemoteTraceback(result.traceback)
        raise value

    def replica_models(self) -> dict[str, dict[str, Any]]:
        """What this router believes each replica holds (for status and tests)."""
        return {
            r.info.replica_id: {"loaded": sorted(r.loaded), "loading": sorted(r.state().loading)}
            for r in self._replicas.values()
            if r.routable
        }

    async def close(self) -> None:
        self._closed = True
        for task in (self._watch_task, self._tick_task, *self._tasks):
            if task is not None:
                task.cancel()
        for replica in list(self._replicas.values()):
            self._fail_replica(replica, "router closed")
        while self._queue:
            waiting = self._queue.popleft()
            if not waiting.future.done():
                waiting.future.set_exception(RuntimeError("router closed"))

    # ---- placement ---------------------------------------------------------------------------

    def _states(self) -> list[ReplicaState]:
        return [r.state() for r in self._replicas.values() if r.routable]

    def _choose(self, model_id: str, now: float) -> Choice:
        debt = self._spill.debt(model_id, now) if model_id else 0.0
        cost = self._load_cost.get(model_id, self._default_load_cost_s)
        return choose_replica(
            self._states(),
            model_id,
            rng=self._rng,
            wait_debt_s=debt,
            load_cost_s=cost,
            max_replicas_per_model=self._max_replicas_per_model,
        )

    def _place_now(self, model_id: str) -> _Replica | None:
        if self._queue or self._connecting:
            return None  # keep FIFO order behind those already waiting
        choice = self._choose(model_id, self._clock())
        if choice.replica_id is None:
            return None
        if choice.reason is Reason.SPILL:
            self._spill.reset(model_id)
        return self._replicas[choice.replica_id]

    async def _wait_for_replica(self, model_id: str) -> "_Slot":
        if 0 <= self._max_queued <= len(self._queue):
            raise BackPressureError(str(self.deployment_id), len(self._queue), self._max_queued)
        loop = asyncio.get_running_loop()
        waiting = _Waiting(model_id, loop.create_future(), self._clock())
        self._queue.append(waiting)
        self._drain()
        if not waiting.future.done() and self._tick_task is None:
            self._tick_task = loop.create_task(self._tick())
        try:
            return await waiting.future
        except BaseException:
            future = waiting.future
            if future.done() and not future.cancelled() and future.exception() is None:
                self._release(future.result())  # placed, but the caller left: free the slot
                self._drain()
            elif waiting in self._queue:
                self._queue.remove(waiting)
            raise

    def _drain(self) -> None:
        """Place as many waiting requests as the policy allows, oldest first."""
        if not self._queue or self._connecting:
            # Until every known replica is connected, a cold model's home may be missing from
            # the view, and this router would disagree with the others about where it goes.
            return
        now = self._clock()
        still: deque[_Waiting] = deque()
        while self._queue:
            waiting = self._queue.popleft()
            if waiting.future.done():
                continue
            choice = self._choose(waiting.model_id, now)
            if choice.replica_id is None:
                if choice.reason is Reason.WAIT_SATURATED and waiting.model_id:
                    self._spill.add(waiting.model_id, now - waiting.last_seen, now)
                if choice.reason in (Reason.WAIT_SATURATED, Reason.WAIT_LOADING):
                    self._remind(waiting.model_id, now)
                waiting.last_seen = now
                still.append(waiting)
                continue
            if choice.reason is Reason.SPILL:
                self._spill.reset(waiting.model_id)
            # Reserve now, so the next waiting request sees the slot taken and the load sent.
            replica = self._replicas[choice.replica_id]
            waiting.future.set_result(self._reserve(replica, waiting.model_id))
        self._queue = still

    def _remind(self, model_id: str, now: float) -> None:
        """Requests for ``model_id`` wait on its busy holders: tell them, so that their LRU
        does not drop a model in demand because its requests are queued here, not running."""
        for replica in self._replicas.values():
            if not replica.routable or replica.conn is None or model_id not in replica.loaded:
                continue
            if now - replica.reminded.get(model_id, -_REMIND_S) < _REMIND_S:
                continue
            if len(replica.reminded) > 1024:
                replica.reminded.clear()
            replica.reminded[model_id] = now
            try:
                replica.conn.send_nowait(Touch(model_id))
            except (ConnectionClosed, OSError):
                pass  # the reader notices and fails the replica

    async def _tick(self) -> None:
        try:
            while self._queue:
                await asyncio.sleep(_TICK_S)
                self._drain()
        finally:
            self._tick_task = None

    # ---- sending -----------------------------------------------------------------------------

    def _reserve(self, replica: _Replica, model_id: str) -> "_Slot":
        """Count a request on ``replica`` before it is sent; a model it will load counts as
        held there from this moment, so no other request loads it elsewhere meanwhile."""
        replica.ongoing += 1
        loads = bool(model_id) and model_id not in replica.loaded
        if loads:
            replica.sent_loads[model_id] = replica.sent_loads.get(model_id, 0) + 1
        return _Slot(replica, model_id, loads)

    def _release(self, slot: "_Slot") -> None:
        replica = slot.replica
        replica.ongoing -= 1
        if slot.loads:
            if replica.sent_loads.get(slot.model_id, 1) <= 1:
                replica.sent_loads.pop(slot.model_id, None)
            else:
                replica.sent_loads[slot.model_id] -= 1

    async def _send(
        self, slot: "_Slot", method: str, payload: bytes, http: HTTPRequest | None, trace_id: str
    ) -> Result:
        """Send one call on a reserved slot and wait for its result; the slot ends with it."""
        replica = slot.replica
        request_id = next(self._ids)
        call = Call(request_id, method, payload, slot.model_id, http, trace_id)
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        replica.inflight[request_id] = future
        try:
            if replica.conn is None or replica.dead:
                raise _NotSent()
            try:
                replica.conn.send_nowait(call)
            except (ConnectionClosed, OSError):
                raise _NotSent() from None
            return await future
        except asyncio.CancelledError:
            if replica.conn is not None and not replica.dead:
                try:
                    replica.conn.send_nowait(Cancel(request_id))
                except Exception:  # pragma: no cover - best effort
                    pass
            raise
        finally:
            replica.inflight.pop(request_id, None)
            self._release(slot)
            if not replica.routable and not replica.inflight and replica.conn is not None:
                replica.conn.close()
            self._drain()

    # ---- replica set and connections ----------------------------------------------------------

    async def _watch(self) -> None:
        while not self._closed:
            try:
                replica_set = await self._directory.watch(self.deployment_id, self._version)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("watching replicas of %s failed; retrying", self.deployment_id)
                await asyncio.sleep(0.5)
                continue
            self._apply(replica_set)

    def _apply(self, replica_set: ReplicaSet) -> None:
        if replica_set.version == self._version:
            return
        self._version = replica_set.version
        self._max_queued = replica_set.max_queued
        self._expected = len(replica_set.replicas)
        self._max_replicas_per_model = replica_set.max_replicas_per_model
        current = {info.replica_id: info for info in replica_set.replicas}
        for replica_id, replica in list(self._replicas.items()):
            if replica_id not in current:
                replica.routable = False
                if not replica.inflight and replica.conn is not None:
                    replica.conn.close()
                if not replica.inflight:
                    del self._replicas[replica_id]
        for replica_id, info in current.items():
            if replica_id not in self._replicas:
                replica = _Replica(info)
                self._replicas[replica_id] = replica
                self._spawn(self._connect(replica))
        self._drain()

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self, replica: _Replica) -> None:
        """Connect, then read the replica's messages until the connection ends.

        The replica becomes routable with its first ``ModelsUpdate``, sent as soon as we
        connect: a router that placed requests before knowing what a replica holds would load
        models that are already loaded there. Until then, placement waits (see ``_drain``).
        """
        self._connecting += 1
        try:
            try:
                replica.conn = await connect(
                    replica.info.address, secret=self._secret, timeout_s=_CONNECT_TIMEOUT_S
                )
                first = await asyncio.wait_for(replica.conn.recv(), _CONNECT_TIMEOUT_S)
            finally:
                self._connecting -= 1
            replica.routable = (
                self._replicas.get(replica.info.replica_id) is replica and not self._closed
            )
            self._on_message(replica, first)
            while True:
                self._on_message(replica, await replica.conn.recv())
        except ConnectionClosed:
            pass
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.warning("connection to replica %s failed: %r", replica.info.replica_id, exc)
        finally:
            self._fail_replica(replica, "connection lost")

    def _on_message(self, replica: _Replica, message: object) -> None:
        if isinstance(message, Result):
            future = replica.inflight.get(message.request_id)
            if future is not None and not future.done():
                future.set_result(message)
        elif isinstance(message, ModelsUpdate):
            replica.loaded = dict(message.loaded)
            replica.loading = frozenset(message.loading)
            replica.has_room = message.has_room
            self._load_cost.update(message.loaded)
        self._drain()

    def _fail_replica(self, replica: _Replica, detail: str) -> None:
        replica.dead = True
        replica.routable = False
        if replica.conn is not None:
            replica.conn.close()
        for future in list(replica.inflight.values()):
            if not future.done():
                future.set_exception(ReplicaDiedError(replica.info.replica_id, detail))
        if self._replicas.get(replica.info.replica_id) is replica:
            del self._replicas[replica.info.replica_id]
        self._drain()


class RouterRegistry:
    """The routers of one process, all living on one event loop."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, directory: ReplicaDirectory, secret: bytes
    ) -> None:
        self.loop = loop
        self._directory = directory
        self._secret = secret
        self._routers: dict[DeploymentID, Router] = {}
        self._lock = threading.Lock()  # handles ask from any thread

    def router(self, deployment_id: DeploymentID) -> Router:
        with self._lock:
            router = self._routers.get(deployment_id)
            if router is None:
                router = Router(deployment_id, self._directory, secret=self._secret)
                self._routers[deployment_id] = router
            return router

    async def close(self) -> None:
        routers, self._routers = list(self._routers.values()), {}
        for router in routers:
            await router.close()


_registry: RouterRegistry | None = None


def install_registry(registry: RouterRegistry | None) -> None:
    global _registry
    _registry = registry


def current_registry() -> RouterRegistry | None:
    return _registry
