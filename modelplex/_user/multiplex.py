"""``@serve.multiplexed``: turn a model loader into a per-replica model cache.

The decorator only validates and wraps; the cache itself (``_replica.cache.ModelCache``) is
created lazily, one per decorated loader per deployment instance, on the replica's user loop.
Each model a request fetches is held for that request and released when it ends, so an
eviction never unloads a model under a running request.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import uuid
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from .. import _context
from .._storage import node as _node_storage
from .._aio import running_loop
from .._config import check_load_timeout, check_max_bytes, check_max_models
from .._replica.admin import LOADER_ATTR
from .._replica.cache import ModelCache
from .._errors import MissingModelIdError
from .._replica.eviction import policy_from_name
from .fetch import Warmed
from .._model_ids import validate_model_id

logger = logging.getLogger("modelplex.replica")


@dataclass(frozen=True)
class MultiplexedLoader:
    """What a decorated loader offers the replica's admin (see ``_replica.admin.Loader``),
    kept on the wrapper under ``LOADER_ATTR``; ``@serve.deployment`` records its name."""

    max_models: int  # max_num_models_per_replica: a config's default
    cache_for: Callable[[Any], ModelCache]  # the owner's cache, made on first use
    warm: Callable[[Any, str], Awaitable[bool]]  # the disk tier only


def loader_of(value: Any) -> MultiplexedLoader | None:
    """The loader behind a class attribute, if it is a ``@serve.multiplexed`` one."""
    loader = getattr(value, LOADER_ATTR, None)
    return loader if isinstance(loader, MultiplexedLoader) else None


def _validate_count(value: Any) -> int:
    return check_max_models(value, "max_num_models_per_replica")


def _validate_bytes(value: Any) -> int | None:
    return check_max_bytes(value, "max_memory_bytes")


def _loader_kind(func: Callable) -> str:
    """'method' for ``(self, model_id)``, 'function' for ``(model_id)``."""
    params = [
        p
        for p in inspect.signature(func).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if len(params) == 2:
        return "method"
    if len(params) == 1:
        return "function" if params[0].name not in ("self", "cls") else "missing"
    return "missing"


def multiplexed(
    func: Callable | None = None,
    *,
    max_num_models_per_replica: int = 3,
    max_memory_bytes: int | None = None,
    model_size: Callable[[Any], int] | None = None,
    model_load_timeout_s: float | None = None,
    eviction_policy: str = "lru",
) -> Any:
    """Cache the models a loader returns, at most ``max_num_models_per_replica`` per replica.

    Use bare (``@serve.multiplexed``) or with arguments. The loader takes ``(self, model_id)``
    or ``(model_id)`` and may be async or sync (sync loaders run in a thread).
    ``max_memory_bytes`` also bounds the cache by the models' measured size (numpy ``nbytes``,
    torch parameters and buffers, or ``model_size(model)``); ``eviction_policy`` picks what to
    evict ("lru", the default, or a frequency-aware policy: see docs/multiplexing.md).
    A load that runs past ``model_load_timeout_s`` fails its waiters with
    ``ModelLoadTimeoutError`` and leaves the cache as it was.
    """
    count = _validate_count(max_num_models_per_replica)
    policy_from_name(eviction_policy)  # an unknown name fails here, at decoration time
    max_bytes = _validate_bytes(max_memory_bytes)
    if model_size is not None and not callable(model_size):
        raise TypeError(f"model_size must be callable, got {model_size!r}")
    check_load_timeout(model_load_timeout_s)

    def decorate(loader: Callable) -> Callable:
        if inspect.isclass(loader):
            raise TypeError(
                f"@multiplexed decorates a model loader function or method, not the class "
                f"{loader.__name__!r}"
            )
        if not callable(loader):
            raise TypeError(f"@multiplexed needs a function, got {loader!r}")
        kind = _loader_kind(loader)
        if kind == "missing":
            raise TypeError(
                f"multiplexed loader {loader.__qualname__!r} must take a model id: "
                "(self, model_id) or (model_id)"
            )
        is_async = inspect.iscoroutinefunction(loader)
        attr = f"_modelplex_cache_{loader.__name__}"
        function_cache: list[ModelCache] = []

        def raw_load(owner: Any) -> Callable[[str], Awaitable[Any]]:
            if is_async:
                return (lambda m: loader(owner, m)) if kind == "method" else loader
            bound = functools.partial(loader, owner) if kind == "method" else loader
            return lambda m: asyncio.to_thread(bound, m)  # copies the context: the scope too

        def make_cache(owner: Any) -> ModelCache:
            # Leases on disk artifacts are named per model per cache: two loaders in one
            # replica may load the same id from different artifacts.
            token = uuid.uuid4().hex[:12]
            load = functools.partial(_load_scoped, raw_load(owner), token)

            def build(hooks: _context.CacheHooks) -> ModelCache:
                return ModelCache(
                    load,
                    max_models=count,
                    max_bytes=max_bytes,
                    sizer=model_size,
                    load_timeout_s=model_load_timeout_s,
                    policy=policy_from_name(eviction_policy),
                    logger=logger,
                    on_change=hooks.on_change,
                    wanted=hooks.wanted,
                    events=hooks.events,
                    on_unloaded=lambda m: _node_storage.release_scope(f"{token}/{m}"),
                )

            host = _context.replica_hooks.caches
            return build(_context.CacheHooks()) if host is None else host.new_cache(build)

        def cache_for(owner: Any) -> ModelCache:
            # Runs on the loop that owns the caches (see _acquire), so it needs no lock; a lock
            # in this closure would also stop cloudpickle from shipping the class by value.
            if kind == "method":
                cache = owner.__dict__.get(attr)
                if cache is None:
                    cache = make_cache(owner)
                    owner.__dict__[attr] = cache
                return cache
            if not function_cache:
                function_cache.append(make_cache(None))
            return function_cache[0]

        @functools.wraps(loader)
        def wrapper(*args: Any) -> Any:
            if kind == "method":
                if len(args) != 2:
                    raise TypeError(f"{loader.__qualname__}() takes exactly one model id")
                owner, model_id = args
            else:
                if len(args) != 1:
                    raise TypeError(f"{loader.__qualname__}() takes exactly one model id")
                owner, model_id = None, args[0]
            if model_id == "" or model_id is None:
                raise MissingModelIdError()
            validate_model_id(model_id)
            ctx = _context.current_request()
            coro = _acquire(cache_for, owner, model_id, ctx)
            if running_loop() is not None:
                return coro
            # A sync method (running in a worker thread) asked for a model: run the load on
            # the replica's user loop, where the cache lives, and wait for it here.
            loop = _context.replica_hooks.user_loop
            if loop is None:
                coro.close()
                raise RuntimeError(
                    f"{loader.__qualname__}() must be awaited outside a modelplex replica"
                )
            return asyncio.run_coroutine_threadsafe(coro, loop).result()

        async def warm(owner: Any, model_id: str) -> bool:
            validate_model_id(model_id)
            return await _warm(raw_load(owner), model_id, loader.__qualname__)

        setattr(wrapper, LOADER_ATTR, MultiplexedLoader(count, cache_for, warm))
        return wrapper

    if func is not None:
        return decorate(func)
    return decorate


async def _acquire(
    cache_for: Callable[[Any], ModelCache],
    owner: Any,
    model_id: str,
    ctx: _context.RequestContext | None,
) -> Any:
    model, release = await cache_for(owner).acquire(model_id)
    if ctx is None:
        release()
    else:
        ctx.releases.append(release)
    return model


async def _load_scoped(load: Callable[[str], Awaitable[Any]], token: str, model_id: str) -> Any:
    """Run the loader with its ``LoadScope`` set, so ``serve.fetch`` knows which model holds
    what it fetches; a failed load holds nothing."""
    scope = f"{token}/{model_id}"
    reset = _context.set_load(_context.LoadScope(model_id, scope))
    try:
        return await load(model_id)
    except BaseException:
        _node_storage.release_scope(scope)
        raise
    finally:
        _context.reset_load(reset)


async def _warm(load: Callable[[str], Awaitable[Any]], model_id: str, name: str) -> bool:
    """Run the loader outside any cache until its first ``serve.fetch`` has the artifact on
    disk (``Warmed``): no memory slot, no eviction. False if it never fetched."""
    reset = _context.set_load(_context.LoadScope(model_id, "", disk_only=True))
    try:
        await load(model_id)
    except Warmed:
        logger.info("Warmed the disk tier for model '%s'.", model_id)
        return True
    finally:
        _context.reset_load(reset)
    logger.warning(
        "Loader %s returned model '%s' without calling serve.fetch: nothing to warm on disk; "
        "the model was dropped.", name, model_id,
    )
    return False
