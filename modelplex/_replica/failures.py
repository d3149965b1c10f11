"""Failed loads: when to try a model again, and whose traceback is already in the log."""

from __future__ import annotations

from .._errors import ModelLoadBackoffError

__all__ = ["LoadFailures", "mark_logged", "was_logged"]

_LOGGED = "_modelplex_logged"


class LoadFailures:
    """Back off from a model whose loader keeps failing, as ModelMesh expires load failures.

    The first failure is retried by the next request at once (a passing fault should cost one
    request); from the second failure in a row, requests in the backoff window fail at once
    with ``ModelLoadBackoffError`` instead of calling the loader again: 0.5 s, doubling up to
    30 s. A success forgets the history."""

    FIRST_S = 0.5
    MAX_S = 30.0

    def __init__(self) -> None:
        self._state: dict[str, tuple[int, float, BaseException]] = {}

    def record(self, model_id: str, exc: BaseException, now: float) -> None:
        count = self._state.get(model_id, (0, 0.0, exc))[0] + 1
        delay = 0.0 if count < 2 else min(self.MAX_S, self.FIRST_S * 2 ** (count - 2))
        self._state[model_id] = (count, now + delay, exc)
        if len(self._state) > 10_000:  # bounded: forget the oldest
            self._state.pop(next(iter(self._state)))

    def check(self, model_id: str, now: float) -> None:
        state = self._state.get(model_id)
        if state is not None and now < state[1]:
            count, until, exc = state
            raise ModelLoadBackoffError(model_id, count, until - now, exc)

    def clear(self, model_id: str) -> None:
        self._state.pop(model_id, None)


def mark_logged(exc: BaseException) -> None:
    """Its traceback is in the log already: the requests it fails say so in one line each."""
    try:
        setattr(exc, _LOGGED, True)
    except AttributeError:  # an exception type without a __dict__
        pass


def was_logged(exc: BaseException) -> bool:
    return bool(getattr(exc, _LOGGED, False))
