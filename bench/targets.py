"""Start and stop the systems under test, each in a driver process of its own.

A ``Target`` names a system (modelplex with a backend, Ray Serve, or bare uvicorn);
``Server`` runs ``bench.driver`` for it in a new session, waits for its READY line, and on
exit shuts it down politely, then kills whatever it started that is still alive (Ray leaves
raylets, GCS and workers behind if its driver dies first).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass

__all__ = ["ROOT", "Server", "SkipTarget", "Target", "cpu_seconds", "free_port", "ray_available"]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class SkipTarget(Exception):
    """The system cannot run here (not installed, or a backend that does not exist yet)."""


@dataclass(frozen=True)
class Target:
    system: str  # "modelplex", "ray" or "uvicorn"
    backend: str = "local"  # modelplex only: "local" or "ray"
    policy: str | None = None  # modelplex only: eviction_policy, None = the default (LRU)
    root: str | None = None  # modelplex only: another checkout to run (``--baseline``)
    metrics: bool = True  # modelplex only: False runs it with MODELPLEX_METRICS=0
    access_log: bool = True  # modelplex only: False turns the deployment's access log off

    @property
    def label(self) -> str:
        if self.system == "modelplex":
            base = " (baseline)" if self.root else ""
            policy = f" {self.policy}" if self.policy else " lru"
            off = " metrics off" if not self.metrics else ""
            off += " access log off" if not self.access_log else ""
            return f"modelplex[{self.backend}]{base}{policy}{off}"
        return "Ray Serve lru" if self.system == "ray" else self.system


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ray_available() -> str | None:
    """None if ``from ray import serve`` works, else why not."""
    proc = subprocess.run([sys.executable, "-c", "from ray import serve"], capture_output=True,
                          text=True, check=False)
    return None if proc.returncode == 0 else proc.stderr.strip().splitlines()[-1]


def _stat(pid: int | str) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state is [0], ppid [1])."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def descendants(pid: int) -> dict[int, str]:
    """Every process below ``pid``, with its start time (so a reused pid is never killed)."""
    tree: dict[int, list[tuple[int, str]]] = {}
    for entry in os.listdir("/proc"):
        fields = _stat(entry) if entry.isdigit() else None
        if fields is not None:
            tree.setdefault(int(fields[1]), []).append((int(entry), fields[19]))
    found: dict[int, str] = {}
    todo = [pid]
    while todo:
        for child, started in tree.get(todo.pop(), ()):
            if child not in found:
                found[child] = started
                todo.append(child)
    return found


def cpu_seconds(pid: int) -> float:
    """User and system CPU of ``pid`` and every process below it (those alive now)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in [pid, *descendants(pid)]:
        fields = _stat(p)
        if fields is not None:
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


def _kill_if_same(pid: int, started: str) -> None:
    fields = _stat(pid)
    if fields is not None and fields[0] != "Z" and fields[19] == started:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class Server:
    """A running driver; use as a context manager. ``ready`` holds its startup figures."""

    def __init__(self, target: Target, app: str, app_kwargs: dict, log_path: str,
                 timeout_s: float = 180.0, driver_options: dict | None = None,
                 python_path: tuple[str, ...] = ()) -> None:
        self.target = target
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        config = {"system": target.system, "backend": target.backend, "port": self.port,
                  "app": app, "app_kwargs": app_kwargs, **(driver_options or {})}
        # A baseline runs wholly from its own checkout (its bench.driver and its modelplex).
        root = target.root or ROOT
        # python_path: generated modules (a gRPC service's) that the system's processes import.
        env = dict(os.environ, PYTHONPATH=os.pathsep.join((root, *python_path)),
                   RAY_USAGE_STATS_ENABLED="0", RAY_SERVE_LOG_TO_STDERR="0")
        if not target.metrics:
            env["MODELPLEX_METRICS"] = "0"
        self._log = open(log_path, "a")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "bench.driver", json.dumps(config)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True,
            cwd=root, env=env, start_new_session=True,
        )
        self._started: dict[int, str] = {}
        self.ready: dict = {}
        watchdog = threading.Timer(timeout_s, self._proc.kill)  # a driver stuck starting
        watchdog.start()
        try:
            self._wait_ready(log_path)
        except BaseException:
            self.close()
            raise
        finally:
            watchdog.cancel()

    @property
    def pid(self) -> int:
        """The driver's process id: the system's processes are below it."""
        return self._proc.pid

    def _line(self) -> list[str]:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            if line.startswith("BENCH "):
                return line.split(" ", 3)[1:]
        raise RuntimeError("the driver exited")

    def _wait_ready(self, log_path: str) -> None:
        try:
            kind, *rest = self._line()
        except RuntimeError:
            raise RuntimeError(f"{self.target.label} failed to start; see {log_path}") from None
        if kind == "SKIP":
            raise SkipTarget(" ".join(rest))
        if kind != "READY":
            raise RuntimeError(f"{self.target.label}: unexpected {kind} {rest}")
        self.ready = {"startup_s": float(rest[0]), **json.loads(rest[1] if len(rest) > 1 else "{}")}
        self._started = descendants(self._proc.pid)

    def command(self, command: dict) -> dict:
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps(command) + "\n")
        self._proc.stdin.flush()
        kind, *rest = self._line()
        if kind != "RESULT":
            raise RuntimeError(f"{self.target.label}: unexpected {kind}")
        return json.loads(" ".join(rest))

    def close(self, timeout_s: float = 60.0) -> None:
        proc = self._proc
        started = {**self._started, **descendants(proc.pid)}
        if proc.poll() is None:
            try:
                assert proc.stdin is not None
                proc.stdin.write(json.dumps({"cmd": "stop"}) + "\n")
                proc.stdin.close()
            except (BrokenPipeError, OSError):
                pass
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                pass
        # Whatever the driver started and left behind, by process id and by its session.
        if proc.poll() is None:
            proc.kill()
        for pid, when in started.items():
            _kill_if_same(pid, when)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        self._log.close()

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
