"""What a cache's limits say about one load and one model: its time, and its size.

Pure helpers of ``ModelCache``; the counting of models and bytes against ``max_models`` and
``max_bytes`` is ``over_limits``.
"""

from __future__ import annotations

import asyncio
import functools
import numbers
from typing import Any, Awaitable, Callable

from .._errors import ModelLoadTimeoutError

__all__ = ["load_within", "measured_size", "over_limits"]

Sizer = Callable[[Any], "int | None"]


def over_limits(models: int, nbytes: int, max_models: int, max_bytes: int | None) -> bool:
    """``models`` loaded of ``nbytes`` known bytes break ``max_models`` (-1: unbounded) or
    ``max_bytes`` (None: unbounded)."""
    if max_models != -1 and models > max_models:
        return True
    return max_bytes is not None and nbytes > max_bytes


def measured_size(sizer: Sizer, model_id: str, model: Any) -> int | None:
    """The model's size by ``sizer``: an int >= 0, or None when unknown."""
    size = sizer(model)
    if size is None:
        return None
    if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 0:
        raise TypeError(
            f"the model size function returned {size!r} for model '{model_id}'; "
            "it must return an int >= 0 or None"
        )
    return int(size)


async def load_within(
    load: Awaitable[Any], timeout_s: float | None, model_id: str, late: Callable[[Any], None]
) -> Any:
    """``load``'s model, or ``ModelLoadTimeoutError`` once ``timeout_s`` has passed. A loader
    that ignores its cancellation and returns later hands its model to ``late``, which unloads
    it: nobody is left to use it."""
    if timeout_s is None:
        return await load
    # Our own timer rather than wait_for: a TimeoutError raised by the loader itself must
    # reach the caller as it is, not turn into ModelLoadTimeoutError.
    inner = asyncio.ensure_future(load)
    try:
        done, _ = await asyncio.wait({inner}, timeout=timeout_s)
    except BaseException:
        inner.cancel()
        raise
    if inner in done:
        return inner.result()
    inner.cancel()
    inner.add_done_callback(functools.partial(_returned_late, late))
    raise ModelLoadTimeoutError(model_id, timeout_s)


def _returned_late(late: Callable[[Any], None], task: asyncio.Future) -> None:
    if task.cancelled() or task.exception() is not None:
        return
    late(task.result())
