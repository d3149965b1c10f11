"""Replica log folders: one per run, ``<tmp>/modelplex-logs/session_<stamp>_<pid>/``.

Each run prunes the folders of old runs when it starts, so a machine that starts modelplex
every few minutes does not fill its temp dir. Pruning keeps the newest folders, never removes
the folder of a run that is still alive (its pid is in the name), and never touches anything
but ``session_*`` folders.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import time
from typing import Callable, Iterable

logger = logging.getLogger("modelplex")

# A second run of one process within the same second gets a ".N" suffix.
_SESSION = re.compile(r"session_(\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2})_(\d+)(?:\.(\d+))?")


def log_root() -> str:
    # Not "<tmp>/modelplex": run from the temp dir, that folder would shadow the package.
    return os.path.join(tempfile.gettempdir(), "modelplex-logs")


def session_name(now: float, pid: int) -> str:
    return f"session_{time.strftime('%Y-%m-%d_%H-%M-%S', time.localtime(now))}_{pid}"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except PermissionError:  # another user's process
        return True
    except (ProcessLookupError, OverflowError):
        return False
    return True


def sessions_to_prune(names: Iterable[str], keep: int, alive: Callable[[int], bool]) -> list[str]:
    """The session names to remove, oldest first: all but the newest ``keep``, the live ones
    excepted. Names that are not ``session_<stamp>_<pid>`` are never chosen."""
    sessions = []
    for name in names:
        match = _SESSION.fullmatch(name)
        if match:
            sessions.append((match.group(1), int(match.group(3) or 0), int(match.group(2)), name))
    sessions.sort(reverse=True)  # newest first: the stamp sorts as the time it names
    old = reversed(sessions[keep:])
    return [name for _, _, pid, name in old if not alive(pid)]


def prune_sessions(root: str, keep: int, alive: Callable[[int], bool] = pid_alive) -> list[str]:
    """Remove old session folders under ``root``; return the paths removed."""
    try:
        with os.scandir(root) as entries:
            names = [e.name for e in entries if e.is_dir(follow_symlinks=False)]
    except OSError:
        return []
    removed = []
    for name in sessions_to_prune(names, keep, alive):
        path = os.path.join(root, name)
        try:
            shutil.rmtree(path)
        except OSError as exc:  # another user's folder, or a file still open elsewhere
            logger.debug("Could not remove the old log folder %s: %s", path, exc)
            continue
        removed.append(path)
    return removed


def new_session_dir(keep: int, root: str | None = None) -> str:
    """Make this run's log folder, then prune the older ones to the newest ``keep`` runs,
    this one included."""
    root = root or log_root()
    base = os.path.join(root, session_name(time.time(), os.getpid()))
    path, n = base, 1
    os.makedirs(root, exist_ok=True)
    while True:  # a folder of its own, even for a second run in the same second
        try:
            os.mkdir(path)
            break
        except FileExistsError:
            n += 1
            path = f"{base}.{n}"
    prune_sessions(root, keep)
    return path
