"""The per-replica model cache behind one ``@multiplexed`` loader.

Rules that keep a replica correct under concurrent requests:

* A request holds a reference to each model it acquired, taken before ``acquire`` first
  awaits, so an eviction never unloads a model under a running request: the model is taken
  out of the index at once ("draining") and unloaded when its last reference is released.
* Concurrent acquires of one id share one load; loads of different ids run concurrently.
  A waiter that is cancelled leaves the shared load running, and its result is cached.
* Eviction runs only after a load succeeds, so a failed load costs the cache nothing. Loads
  in flight do not count toward ``max_models``: while they run, the cache can briefly hold
  more models than its limit.
* With an admission policy (``policy.admission``, e.g. ``TinyLFUPolicy``) a newly loaded
  model may be refused: it is evicted at once, still served to the requests that loaded it,
  and unloaded when they release it, exactly like any evicted model that is in use.
* Unloading a model runs its ``__del__`` exactly once (awaited if async, else in a thread),
  then disarms it so the garbage collector does not run it a second time (``finalizer``).

Everything here runs on one event loop, the one ``acquire`` runs on; only the ``release``
callables may be called from another thread (they hop to the loop).

The file stays longer than most: it is one state machine (loading, loaded, draining, gone)
over three indexes that every method shares. What stands apart lives beside it: the entries
(``entries``), a load's time and a model's size (``limits``), the backoff after failed loads
(``failures``), the unload tasks (``unloads``) and running ``__del__`` once (``finalizer``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable, cast

from .._aio import running_loop
from .._config import check_load_timeout, check_max_bytes, check_max_models
from .._errors import ModelCacheClosedError, ModelLoadTimeoutError, ModelTooLargeError
from .._events import NO_CACHE_EVENTS, CacheEvents
from .entries import DRAINING, GONE, LOADED, Entry, ModelInfo, ModelsSnapshot
from .eviction import AdmissionPolicy, EvictionPolicy, LRUPolicy, default_model_size
from .failures import LoadFailures, mark_logged
from .limits import Sizer, load_within, measured_size, over_limits
from .unloads import Unloads

__all__ = ["ModelCache", "ModelInfo", "ModelsSnapshot"]

Loader = Callable[[str], Awaitable[Any]]
Release = Callable[[], None]

_UNSET: Any = object()


def _retrieve(task: asyncio.Future) -> None:
    # Waiters may all be gone; read the outcome so asyncio does not warn it was never seen.
    if not task.cancelled():
        task.exception()


class ModelCache:
    """Models returned by ``loader``, at most ``max_models`` and ``max_bytes`` of them."""

    def __init__(
        self,
        loader: Loader,
        *,
        max_models: int = 3,
        max_bytes: int | None = None,
        policy: EvictionPolicy | None = None,
        sizer: Sizer | None = None,
        load_timeout_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        logger: logging.Logger | None = None,
        on_change: Callable[[], None] | None = None,
        wanted: Callable[[], frozenset[str]] | None = None,
        on_unloaded: Callable[[str], None] | None = None,
        events: CacheEvents | None = None,
    ) -> None:
        if not callable(loader):
            raise TypeError(f"loader must be callable, got {loader!r}")
        self._loader = loader
        self._max_models = check_max_models(max_models)
        self._max_bytes = check_max_bytes(max_bytes)
        self._policy: EvictionPolicy = policy if policy is not None else LRUPolicy()
        # Optional policy hooks (see ``eviction``), looked up once.
        self._record_access: Callable[[str, float], None] | None = getattr(
            self._policy, "record_access", None
        )
        self._admission = bool(getattr(self._policy, "admission", False))
        self._failures = LoadFailures()
        self._forced: set[str] = set()  # ids to keep on their next load whatever the policy
        self._sizer: Sizer = sizer if sizer is not None else default_model_size
        self._load_timeout_s = check_load_timeout(load_timeout_s, "load_timeout_s")
        self._clock = clock
        self._logger = logger if logger is not None else logging.getLogger("modelplex.replica")
        # The replica's, given when it makes the cache (see ``_context.CacheHooks``): told of
        # every change of what the cache holds; ``wanted`` names the models that requests
        # already on their way here will ask for; ``events`` is told what happens (metrics).
        self._on_change = on_change
        self._wanted = wanted
        self._events: CacheEvents = events if events is not None else NO_CACHE_EVENTS
        self._unloads = Unloads(
            clock=clock, logger=self._logger, events=self._events, on_unloaded=on_unloaded
        )
        self._loaded: dict[str, Entry] = {}  # least to most recently used
        self._loading: dict[str, Entry] = {}
        self._draining: dict[str, Entry] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._drained: asyncio.Event | None = None

    # ---- reading -------------------------------------------------------------------------

    @property
    def max_models(self) -> int:
        return self._max_models

    @property
    def max_bytes(self) -> int | None:
        return self._max_bytes

    @property
    def load_timeout_s(self) -> float | None:
        return self._load_timeout_s

    @property
    def total_bytes(self) -> int:
        """Known bytes of the loaded models (unknown sizes count as 0)."""
        return sum(e.size or 0 for e in self._loaded.values())

    def snapshot(self) -> ModelsSnapshot:
        return ModelsSnapshot(
            tuple(e.info() for e in self._loaded.values()), tuple(self._loading)
        )

    def loaded_ids(self) -> tuple[str, ...]:
        """Loaded ids, least to most recently used (not loading, not draining)."""
        return tuple(self._loaded)

    def __contains__(self, model_id: object) -> bool:
        return model_id in self._loaded

    def __len__(self) -> int:
        return len(self._loaded)

    def __repr__(self) -> str:
        return (
            f"ModelCache(loaded={list(self._loaded)}, loading={list(self._loading)}, "
            f"max_models={self._max_models}, max_bytes={self._max_bytes})"
        )

    # ---- requests ------------------------------------------------------------------------

    async def acquire(self, model_id: str) -> tuple[Any, Release]:
        """The model, loading it if needed, and an idempotent ``release`` for the reference.

        Everything before the first ``await`` runs at once, so the reference is held before
        any other task can evict the model.
        """
        if self._closed:
            raise ModelCacheClosedError(f"the model cache is closed; cannot acquire model '{model_id}'")
        self._loop = asyncio.get_running_loop()
        if self._record_access is not None:
            self._record_access(model_id, self._clock())
        entry = self._loaded.get(model_id)
        if entry is not None:
            self._touch(entry)
            self._events.requested(model_id, True)
            return entry.model, self._hold(entry)
        entry = self._draining.get(model_id)
        if entry is not None:
            release = self._hold(entry)
            self._events.requested(model_id, True)
            self._resurrect(entry)
            return entry.model, release
        self._events.requested(model_id, False)
        entry = self._loading.get(model_id)
        if entry is None:
            self._failures.check(model_id, self._clock())
            entry = self._start_load(model_id)
        entry.hits += 1
        release = self._hold(entry)
        task = cast(asyncio.Task, entry.task)
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            release()
            if task.cancelled() and self._closed:
                raise ModelCacheClosedError(
                    f"the model cache closed while model '{model_id}' was loading"
                ) from None
            raise
        except BaseException:
            release()
            raise
        return entry.model, release

    async def get(self, model_id: str) -> Any:
        """The model, without holding it: for callers outside a request."""
        model, release = await self.acquire(model_id)
        release()
        return model

    def _hold(self, entry: Entry) -> Release:
        entry.refs += 1
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            loop = self._loop
            if loop is not None and running_loop() is not loop:
                loop.call_soon_threadsafe(release)
                return
            released = True
            self._drop(entry)

        return release

    def _drop(self, entry: Entry) -> None:
        entry.refs -= 1
        if entry.refs > 0 or entry.state != DRAINING:
            return
        if self._draining.get(entry.model_id) is entry:
            del self._draining[entry.model_id]
        self._begin_unload(entry)
        if not self._draining and self._drained is not None:
            self._drained.set()

    def touch(self, model_id: str) -> None:
        """Requests for ``model_id`` are waiting elsewhere for this replica: make it the most
        recently used, as if they had run. Recency only: frequency counts real requests."""
        entry = self._loaded.get(model_id)
        if entry is not None:
            self._make_recent(entry)

    def _touch(self, entry: Entry) -> None:
        entry.hits += 1
        self._make_recent(entry)

    def _make_recent(self, entry: Entry) -> None:
        entry.last_used = self._clock()
        self._loaded[entry.model_id] = self._loaded.pop(entry.model_id)  # to the MRU end

    def _resurrect(self, entry: Entry) -> None:
        """An evicted model still in use was asked for again: keep it, no reload."""
        del self._draining[entry.model_id]
        entry.state = LOADED
        self._loaded[entry.model_id] = entry
        entry.last_used = self._clock()
        entry.hits += 1
        self._logger.debug("Model '%s' was evicted but still in use; keeping it.", entry.model_id)
        self._events.kept(entry.model_id)
        self._enforce_with(entry.model_id)
        self._notify()

    # ---- loading -------------------------------------------------------------------------

    def _start_load(self, model_id: str) -> Entry:
        entry = Entry(model_id)
        self._loading[model_id] = entry
        entry.task = asyncio.get_running_loop().create_task(
            self._load(entry), name=f"modelplex-load-{model_id}"
        )
        entry.task.add_done_callback(_retrieve)
        self._notify()
        return entry

    async def _load(self, entry: Entry) -> None:
        model_id = entry.model_id
        self._logger.info("Loading model '%s'.", model_id)
        start = self._clock()
        try:
            model = await load_within(
                self._loader(model_id), self._load_timeout_s, model_id,
                late=lambda model: self._unloads.start(model_id, model),
            )
        except Exception as exc:
            self._logger.exception("Failed to load model '%s'.", model_id)
            mark_logged(exc)
            self._events.load_failed(model_id, isinstance(exc, ModelLoadTimeoutError))
            self._failures.record(model_id, exc, self._clock())
            self._forget_loading(entry)
            raise
        except BaseException:  # cancelled by close()
            self._forget_loading(entry)
            raise
        load_s = self._clock() - start
        self._failures.clear(model_id)
        self._logger.info("Successfully loaded model '%s' in %.1fms.", model_id, load_s * 1000)
        try:
            size = measured_size(self._sizer, model_id, model)
        except Exception:
            self._logger.exception("Failed to measure the size of model '%s'.", model_id)
            self._discard(entry, model)
            raise
        if self._closed:
            self._discard(entry, model)
            raise ModelCacheClosedError(f"the model cache closed while model '{model_id}' was loading")
        if size is not None and self._max_bytes is not None and size > self._max_bytes:
            self._logger.error(
                "Model '%s' needs %d bytes, more than the whole budget of %d bytes; "
                "not caching it.", model_id, size, self._max_bytes,
            )
            self._discard(entry, model)
            raise ModelTooLargeError(model_id, size, self._max_bytes)
        self._install(entry, model, size, load_s)

    def _discard(self, entry: Entry, model: Any) -> None:
        """A model that loaded but will not be cached: unload it, evicting nothing."""
        self._forget_loading(entry)
        self._unloads.start(entry.model_id, model)

    def _forget_loading(self, entry: Entry) -> None:
        entry.state = GONE
        if self._loading.get(entry.model_id) is entry:
            del self._loading[entry.model_id]
            self._notify()

    def _install(self, entry: Entry, model: Any, size: int | None, load_s: float) -> None:
        del self._loading[entry.model_id]
        entry.model = model
        entry.size = size
        entry.load_s = load_s
        entry.last_used = self._clock()
        entry.state = LOADED
        self._loaded[entry.model_id] = entry
        self._events.loaded(entry.model_id, load_s)
        self._enforce_with(entry.model_id)
        self._notify()

    # ---- eviction ------------------------------------------------------------------------

    def _over_limits(self) -> bool:
        return over_limits(len(self._loaded), self.total_bytes, self._max_models, self._max_bytes)

    def admit(self, model_id: str) -> None:
        """Keep ``model_id`` when it next loads, even if an admission policy would refuse it:
        a model an operator preloads or pins is wanted whatever its request count says."""
        self._forced.add(model_id)
        entry = self._draining.get(model_id)
        if entry is not None:
            entry.refs += 1  # resurrect it under protection, then let it go again
            self._resurrect(entry)
            self._drop(entry)

    def _enforce_with(self, model_id: str) -> None:
        """Enforce the limits after ``model_id`` was (re)added: protected from eviction, or
        offered to an admission policy as a candidate like the others."""
        if model_id in self._forced:
            self._forced.discard(model_id)
            self._enforce(protect=frozenset((model_id,)))
        elif self._admission:
            self._enforce(new=model_id)
        else:
            self._enforce(protect=frozenset((model_id,)))

    def _enforce(self, protect: frozenset[str] = frozenset(), new: str | None = None) -> None:
        """Evict until the limits hold; the caller calls ``_notify``.

        Models that requests already sent here are about to use (``wanted``) go last: a
        router that still believes this replica holds a model must not find it just unloaded.
        """
        if not self._over_limits():
            return
        wanted = self._wanted() - {new} if self._wanted is not None else frozenset()
        if wanted - protect:
            self._evict_victims(protect | wanted, new)
        if self._over_limits():
            self._evict_victims(protect, new)
        if self._over_limits():
            self._logger.warning(
                "The model cache holds %d models and %d bytes, over its limits "
                "(max_models=%s, max_bytes=%s): the rest are pinned or just loaded.",
                len(self._loaded), self.total_bytes, self._max_models, self._max_bytes,
            )

    def _evict_victims(self, protect: frozenset[str], new: str | None) -> None:
        views = [e.view() for e in self._loaded.values()]
        if new is None:
            victims = self._policy.victims(
                views, max_models=self._max_models, max_bytes=self._max_bytes, protect=protect
            )
        else:
            victims = cast(AdmissionPolicy, self._policy).victims(
                views, max_models=self._max_models, max_bytes=self._max_bytes, protect=protect,
                new=new,
            )
        for model_id in victims:
            entry = self._loaded.get(model_id)
            if entry is not None and not entry.pinned and model_id not in protect:
                if model_id == new:
                    self._logger.info(
                        "Model '%s' is requested less often than the models cached; not "
                        "keeping it after its requests (%d in use).", model_id, entry.refs,
                    )
                over_count = self._max_models != -1 and len(self._loaded) > self._max_models
                self._evict(entry, "lru" if over_count else "bytes")

    def _evict(self, entry: Entry, reason: str) -> asyncio.Task | None:
        """Out of the index now; unloaded now, or when the last request lets go."""
        del self._loaded[entry.model_id]
        self._events.evicted(entry.model_id, reason)
        if entry.refs == 0:
            return self._begin_unload(entry)
        entry.state = DRAINING
        self._draining[entry.model_id] = entry
        return None

    def _begin_unload(self, entry: Entry) -> asyncio.Task:
        entry.state = GONE
        model, entry.model = entry.model, None
        return self._unloads.start(entry.model_id, model)

    # ---- management ----------------------------------------------------------------------

    def pin(self, model_id: str) -> None:
        """Never evict this model (an explicit ``unload`` still does)."""
        self._loaded_entry(model_id).pinned = True

    def unpin(self, model_id: str) -> None:
        self._loaded_entry(model_id).pinned = False
        before = len(self._loaded)
        self._enforce()
        if len(self._loaded) != before:
            self._notify()

    def _loaded_entry(self, model_id: str) -> Entry:
        entry = self._loaded.get(model_id)
        if entry is None:
            raise KeyError(f"model '{model_id}' is not loaded")
        return entry

    async def unload(self, model_id: str) -> bool:
        """Evict now, pinned or not; wait for the unload unless requests still hold it.

        Returns False when the model is not loaded (including loading or draining).
        """
        entry = self._loaded.get(model_id)
        if entry is None:
            return False
        task = self._evict(entry, "unload_api")
        self._notify()
        if task is not None:
            await asyncio.shield(task)
        return True

    def resize(self, *, max_models: int = _UNSET, max_bytes: int | None = _UNSET) -> None:
        """Change the limits; shrinking evicts at once."""
        new_models = self._max_models if max_models is _UNSET else check_max_models(max_models)
        new_bytes = self._max_bytes if max_bytes is _UNSET else check_max_bytes(max_bytes)
        self._max_models, self._max_bytes = new_models, new_bytes
        self._enforce()
        self._notify()  # also when nothing was evicted: the room left has changed

    async def wait_for_unloads(self) -> None:
        """Wait until every unload started so far (and any it starts) has finished.

        Models still draining are not waited for: their unload has not started.
        """
        await self._unloads.wait()

    async def close(self, timeout_s: float = 30.0, reason: str = "shutdown") -> None:
        """Unload everything; wait up to ``timeout_s`` for models still in use, then unload
        them anyway. Loads in flight are cancelled; their waiters get RuntimeError.
        ``reason`` is why the replica stops, as the eviction metrics tell it."""
        self._closed = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        loads = [e.task for e in self._loading.values() if e.task is not None]
        changed = bool(self._loading or self._loaded)
        for entry in list(self._loading.values()):
            entry.state = GONE
        self._loading.clear()
        for task in loads:
            task.cancel()
        for entry in list(self._loaded.values()):
            self._evict(entry, reason)
        if changed:
            self._notify()
        if loads:
            await asyncio.wait(loads, timeout=max(0.0, deadline - loop.time()))
        if self._draining:
            self._drained = asyncio.Event()
            try:
                await asyncio.wait_for(self._drained.wait(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                pass
            for entry in list(self._draining.values()):
                self._logger.warning(
                    "Model '%s' is still used by %d requests after %.1fs; unloading it anyway.",
                    entry.model_id, entry.refs, timeout_s,
                )
                self._begin_unload(entry)
            self._draining.clear()
        await self.wait_for_unloads()

    # ---- plumbing ------------------------------------------------------------------------

    def _notify(self) -> None:
        self._events.holds(len(self._loaded), self.total_bytes)
        callback = self._on_change
        if callback is None:
            return
        try:
            callback()
        except Exception:
            self._logger.exception("The model cache's on_change callback failed.")
