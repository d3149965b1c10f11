"""Running an object's ``__del__`` once, on purpose, and never again.

A model's ``__del__`` (and the deployment's own) frees what it holds: the replica runs it when
it unloads the model or stops, awaited if it is async, else in a thread. Afterwards the garbage
collector must not run it a second time, so the object gets a class whose ``__del__`` does
nothing: a subclass of its own (``isinstance`` still holds), made once per class.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

__all__ = ["disarm_finalizer", "finalize"]

_DISARMED = "_modelplex_disarmed"

_disarmed_classes: dict[type, type] = {}


async def finalize(obj: Any) -> None:
    """Run ``obj``'s ``__del__`` (unless it has none or it already ran), then disarm it, even
    if it raised."""
    cls = type(obj)
    finalizer = getattr(cls, "__del__", None)
    if finalizer is None or getattr(cls, _DISARMED, False):
        return
    try:
        if inspect.iscoroutinefunction(finalizer):
            await finalizer(obj)
        else:
            await asyncio.to_thread(finalizer, obj)
    finally:
        disarm_finalizer(obj)


def disarm_finalizer(obj: Any) -> None:
    """Give ``obj`` a class whose ``__del__`` does nothing, so the GC won't run it again."""
    cls = type(obj)
    try:
        safe = _disarmed_classes.get(cls)
        if safe is None:
            namespace = {
                "__del__": _no_finalizer,
                "__slots__": (),  # same layout, or __class__ assignment is refused
                "__module__": cls.__module__,
                "__qualname__": cls.__qualname__,
                _DISARMED: True,
            }
            safe = type(cls)(cls.__name__, (cls,), namespace)
            _disarmed_classes[cls] = safe
        # Past any __setattr__ override (frozen dataclasses, torch modules).
        object.__setattr__(obj, "__class__", safe)
    except Exception:
        pass  # e.g. extension types: nothing more we can do


def _no_finalizer(self: Any) -> None:
    """Stands in for a ``__del__`` that already ran."""
