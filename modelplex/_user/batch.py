"""``@serve.batch``: gather concurrent calls into one call of a function taking lists.

Ray Serve 2.60's semantics (defaults ``max_batch_size=10``, ``batch_wait_timeout_s=0.01``,
``max_concurrent_batches=1``; ``set_max_batch_size``/``set_batch_wait_timeout_s`` live), with
batches keyed by the request's multiplexed model id from the start:

* Each model id has its own queue, so a batch never mixes ids and, inside the batch function,
  ``serve.get_multiplexed_model_id()`` is the batch's one id.
* ``max_concurrent_batches`` counts per model id: a batch waiting on a cold model's load
  holds up later batches of that model only. (Ray forms one mixed batch, splits it by id and
  runs the parts under one permit, so one cold load stalls every model.)
* Calls that arrive while a model's batches are all in flight wait in its queue and leave
  together, up to ``max_batch_size``, as soon as a batch finishes. (Ray forms the next batch
  while the last one runs, closing it after ``batch_wait_timeout_s``, however small.)

``BatchQueues`` (``_replica/batching.py``) decides which batches leave when; it is pure (time
is an argument). The ``_Batcher`` shell here runs it on the event loop the calls arrive on.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
from dataclasses import dataclass
from typing import Any, Callable

from .. import _context
from .._replica.batching import Batch, BatchQueues, BatchSettings

__all__ = ["batch", "is_batched"]

# uvloop's clock has millisecond steps and a timer may fire just before its deadline by that
# clock: when the timer fires, a batch up to this much younger than the wait is due.
_SLACK_S = 0.001


# ---- the async shell -----------------------------------------------------------------------

_END = object()


@dataclass
class _Call:
    args: tuple
    kwargs: dict
    ctx: _context.RequestContext | None
    future: asyncio.Future | None = None  # a plain batch function's answer
    stream: asyncio.Queue | None = None  # a generator's answers, then _END or an exception
    closed: bool = False  # a stream whose caller stopped listening

    def alive(self) -> bool:
        if self.future is not None:
            return not self.future.done()
        return not self.closed

    def first_arg(self) -> Any:
        if self.args:
            return self.args[0]
        return next(iter(self.kwargs.values()), None)


class _Failed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class _Batcher:
    """The queues of one decorated function on one owner (instance or module), on one loop."""

    def __init__(self, func: Callable, owner: Any, settings: BatchSettings,
                 size_fn: Callable[[list], int] | None) -> None:
        self.loop = asyncio.get_running_loop()
        self._func = func
        self._owner = owner
        self._kind = _kind(func)
        size_of = None
        if size_fn is not None:
            size_of = lambda calls: size_fn([c.first_arg() for c in calls])  # noqa: E731
        self._queues: BatchQueues[_Call] = BatchQueues(settings, alive=_Call.alive,
                                                      size_of=size_of)
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task] = set()
        self._pump_soon = False
        settings.listen(self)

    def submit(self, call: _Call) -> None:
        key = call.ctx.model_id if call.ctx is not None else ""
        self._queues.put(key, call, self.loop.time())
        if not self._pump_soon:  # once per loop pass: calls made together leave together
            self._pump_soon = True
            self.loop.call_soon(self._soon)

    def _soon(self) -> None:
        self._pump_soon = False
        self._pump()

    def poke(self) -> None:
        """A limit changed: look again (from any thread)."""
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._pump)

    def _pump(self, slack_s: float = 0.0) -> None:
        for due in self._queues.take(self.loop.time() + slack_s):
            task = self.loop.create_task(self._run(due), context=contextvars.Context())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        deadline = self._queues.next_deadline()
        if self._timer is not None and (deadline is None or self._timer.when() != deadline):
            self._timer.cancel()
            self._timer = None
        if deadline is not None and self._timer is None:
            self._timer = self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._pump(_SLACK_S)

    async def _run(self, due: Batch[_Call]) -> None:
        calls = due.items
        first = calls[0].ctx
        ctx = _context.RequestContext(
            request_id=first.request_id if first is not None else "",
            model_id=due.key,
            route=first.route if first is not None else "",
        )
        _context.set_request(ctx)  # this task's own context: nothing to reset
        try:
            args, kwargs = _stack(calls, self._func)
            if self._owner is not None:
                args = (self._owner, *args)
            if self._kind == "generator":
                await self._stream(calls, self._func(*args, **kwargs))
            else:
                if self._kind == "async":
                    results = await self._func(*args, **kwargs)
                else:  # a sync batch function runs in a thread, in the batch's context
                    results = await asyncio.to_thread(self._func, *args, **kwargs)
                _check_length(results, len(calls), self._func)
                for call, result in zip(calls, results):
                    if call.alive():
                        call.future.set_result(result)  # type: ignore[union-attr]
        except BaseException as exc:  # every caller gets it, cancellation included
            for call in calls:
                _fail(call, exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            ctx.release_all()
            self._queues.done(due.key)
            if not self.loop.is_closed():
                self._pump()

    async def _stream(self, calls: list[_Call], steps: Any) -> None:
        """Each step the generator yields holds one value per call; ``StopIteration`` (the
        class) as a call's value ends that call's stream, as in Ray."""
        finished = [False] * len(calls)
        try:
            async for step in steps:
                _check_length(step, len(calls), self._func)
                for i, (call, value) in enumerate(zip(calls, step)):
                    if finished[i]:
                        continue
                    if value is StopIteration or value is StopAsyncIteration or call.closed:
                        finished[i] = True
                        call.stream.put_nowait(_END)  # type: ignore[union-attr]
                    else:
                        call.stream.put_nowait(value)  # type: ignore[union-attr]
                if all(finished):
                    break
        finally:
            await steps.aclose()
        for call, done in zip(calls, finished):
            if not done:
                call.stream.put_nowait(_END)  # type: ignore[union-attr]


def _fail(call: _Call, exc: BaseException) -> None:
    if call.future is not None:
        if not call.future.done():
            call.future.set_exception(exc)
    elif call.stream is not None:
        call.stream.put_nowait(_Failed(exc))


def _check_length(results: Any, expected: int, func: Callable) -> None:
    try:
        got = len(results)
    except TypeError:
        raise TypeError(
            f"batch function {func.__qualname__} must return a list with one result per call; "
            f"it returned {type(results).__qualname__}"
        ) from None
    if got != expected:
        raise TypeError(
            f"batch function {func.__qualname__} returned {got} results for a batch of "
            f"{expected} calls; it must return one result per call, in order"
        )


def _stack(calls: list[_Call], func: Callable) -> tuple[tuple, dict]:
    """One list per argument: ``f(a, b=x)`` and ``f(c, b=y)`` become ``f([a, c], b=[x, y])``."""
    shape = (len(calls[0].args), tuple(calls[0].kwargs))
    for call in calls:
        if (len(call.args), tuple(call.kwargs)) != shape:
            raise TypeError(
                f"calls batched into {func.__qualname__} must pass the same arguments the same "
                f"way: one call passed {len(call.args)} positional and {sorted(call.kwargs)} by "
                f"keyword, another {shape[0]} positional and {sorted(shape[1])} by keyword"
            )
    args = tuple([call.args[i] for call in calls] for i in range(shape[0]))
    kwargs = {name: [call.kwargs[name] for call in calls] for name in shape[1]}
    return args, kwargs


def _kind(func: Callable) -> str:
    if inspect.isasyncgenfunction(func):
        return "generator"
    return "async" if inspect.iscoroutinefunction(func) else "sync"


# ---- the decorator -------------------------------------------------------------------------


def batch(
    _func: Callable | None = None,
    /,
    max_batch_size: int = 10,
    batch_wait_timeout_s: float = 0.01,
    max_concurrent_batches: int = 1,
    batch_size_fn: Callable[[list], int] | None = None,
) -> Any:
    """Gather concurrent calls of a function or method taking lists into one call.

    Callers pass one item and get one result; the function receives a list per argument and
    returns one result per call, in order (or, an async generator, yields such lists). A batch
    leaves when it has ``max_batch_size`` calls (or ``batch_size_fn`` of its items reaches
    that), or ``batch_wait_timeout_s`` after its oldest call arrived. Calls are batched per
    multiplexed model id; ``max_concurrent_batches`` applies per model id.
    An exception from the function reaches every caller in the batch.
    """
    if _func is not None and not callable(_func):
        raise TypeError("@serve.batch can only be used to decorate functions or methods.")
    settings = BatchSettings(max_batch_size, batch_wait_timeout_s, max_concurrent_batches)
    if batch_size_fn is not None and not callable(batch_size_fn):
        raise TypeError(f"batch_size_fn must be a callable or None, got {batch_size_fn!r}")

    def decorate(func: Callable) -> Callable:
        if inspect.isclass(func) or not callable(func):
            raise TypeError("@serve.batch can only be used to decorate functions or methods.")
        signature = inspect.signature(func)
        attr = f"_modelplex_batcher_{func.__name__}"
        function_batcher: list[_Batcher] = []

        def batcher_for(owner: Any) -> _Batcher:
            loop = asyncio.get_running_loop()
            if owner is not None:
                found = owner.__dict__.get(attr)
                if found is None or found.loop is not loop:
                    found = owner.__dict__[attr] = _Batcher(func, owner, settings, batch_size_fn)
                return found
            if not function_batcher or function_batcher[0].loop is not loop:
                function_batcher[:] = [_Batcher(func, None, settings, batch_size_fn)]
            return function_batcher[0]

        def split(args: tuple, kwargs: dict) -> tuple[Any, tuple]:
            owner = args[0] if args and _is_method_call(args[0], func) else None
            signature.bind(*args, **kwargs)  # a call that cannot fit fails now, alone
            return owner, (args[1:] if owner is not None else args)

        if inspect.isasyncgenfunction(func):

            @functools.wraps(func)
            def stream_wrapper(*args: Any, **kwargs: Any) -> Any:
                owner, args = split(args, kwargs)
                return _listen(batcher_for, owner, args, kwargs)

            wrapper: Callable = stream_wrapper
        else:

            @functools.wraps(func)
            async def batch_wrapper(*args: Any, **kwargs: Any) -> Any:
                owner, args = split(args, kwargs)
                batcher = batcher_for(owner)
                future = batcher.loop.create_future()
                batcher.submit(_Call(args, kwargs, _context.current_request(), future=future))
                return await future

            wrapper = batch_wrapper

        # As in Ray: reachable from an instance, ``self.method.set_max_batch_size(4)``.
        target: Any = wrapper
        target.set_max_batch_size = settings.set_max_batch_size
        target.set_batch_wait_timeout_s = settings.set_batch_wait_timeout_s
        target._get_max_batch_size = lambda: settings.max_batch_size
        target._get_batch_wait_timeout_s = lambda: settings.batch_wait_timeout_s
        target._modelplex_batch_settings = settings
        return wrapper

    return decorate(_func) if _func is not None else decorate


def is_batched(value: Any) -> bool:
    """A ``@serve.batch`` function (what ``@serve.deployment`` records of a class)."""
    return isinstance(getattr(value, "_modelplex_batch_settings", None), BatchSettings)


def _is_method_call(first: Any, func: Callable) -> bool:
    """``first`` is ``self``: its attribute of this name is this function, wrapped (Ray's test)."""
    try:
        bound = getattr(first, func.__name__, None)
    except Exception:
        return False
    return getattr(bound, "__wrapped__", None) is func


async def _listen(batcher_for: Callable[[Any], _Batcher], owner: Any, args: tuple,
                  kwargs: dict) -> Any:
    call = _Call(args, kwargs, _context.current_request(), stream=asyncio.Queue())
    batcher_for(owner).submit(call)
    try:
        while True:
            value = await call.stream.get()  # type: ignore[union-attr]
            if value is _END:
                return
            if isinstance(value, _Failed):
                raise value.exc
            yield value
    finally:
        call.closed = True

