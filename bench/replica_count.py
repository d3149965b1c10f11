"""How many replicas a system runs, sampled from outside: its replica processes.

Both systems run a replica as a process of its own below the driver (modelplex:
``python -m modelplex._replica``; Ray Serve: a worker titled ``ray::ServeReplica:...``), so
the same sampler counts both, starting and stopping replicas included: what a replica costs
is its process, whatever state the system reports. ``replica_seconds`` and ``stopped`` are
pure functions of the samples.
"""

from __future__ import annotations

import threading
import time

from .targets import descendants

__all__ = ["PATTERNS", "ReplicaSampler", "replica_seconds", "stopped"]

PATTERNS = {"modelplex": "modelplex._replica", "ray": "ServeReplica:"}

Sample = tuple[float, tuple[int, ...]]  # (time.time(), replica pids)


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class ReplicaSampler:
    """Samples the replica processes below ``root_pid`` every ``interval_s`` on a thread."""

    def __init__(self, root_pid: int, pattern: str, interval_s: float = 0.5) -> None:
        self.root_pid, self.pattern, self.interval_s = root_pid, pattern, interval_s
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> Sample:
        pids = tuple(sorted(p for p in descendants(self.root_pid)
                            if self.pattern in _cmdline(p)))
        return time.time(), pids

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(self.sample())
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "ReplicaSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def replica_seconds(samples: list[Sample], start: float, end: float) -> float:
    """The replica count integrated over [start, end], each sample holding until the next."""
    total = 0.0
    for (t, pids), (t_next, _) in zip(samples, samples[1:] + [(end, ())]):
        lo, hi = max(t, start), min(t_next, end)
        if hi > lo:
            total += len(pids) * (hi - lo)
    return total


def stopped(samples: list[Sample], end: float) -> dict[int, float]:
    """Replica pids seen and then gone by ``end``: pid -> when last seen."""
    last_seen: dict[int, float] = {}
    for t, pids in samples:
        for pid in pids:
            last_seen[pid] = t
    still = set(next((pids for t, pids in reversed(samples) if t <= end), ()))
    return {pid: t for pid, t in last_seen.items() if pid not in still and t <= end}
