"""The node's artifact cache settings, read once from the environment into one frozen object.

Every replica process on a node reads the same variables (the local backend passes the
driver's environment on), so they agree on the directory and its budget without talking.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, replace
from typing import Any, Mapping, Union

__all__ = ["DEFAULT_CACHE_DIR", "StorageConfig", "Validate", "check_validate"]

DEFAULT_CACHE_DIR = os.path.join("~", ".cache", "modelplex", "artifacts")

# "always": ask the store before each use; a number: trust a copy checked that many seconds ago.
Validate = Union[str, float]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def check_validate(value: Any, name: str = "validate") -> Validate:
    if value == "always":
        return "always"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
        raise ValueError(f"{name} must be 'always' or a number of seconds >= 0, got {value!r}")
    return float(value)


def _check_seconds(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
        raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class StorageConfig:
    """Where the node's artifacts live and how they are kept.

    ``max_bytes`` bounds the artifacts on disk (None: only the disk bounds them); the least
    recently used ones that no live replica holds in memory go first. ``node_id`` is set by a
    backend that may run several nodes on one filesystem (Ray), so each gets its own directory.
    """

    cache_dir: str = DEFAULT_CACHE_DIR
    max_bytes: int | None = None
    validate: Validate = "always"
    offline_ok: bool = True
    deadline_s: float = 30.0  # how long an unreachable store is retried before a 503
    progress_min_bytes: int = 8 << 20  # downloads this big log their progress
    node_id: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.cache_dir, str) or not self.cache_dir:
            raise ValueError(f"cache_dir must be a non-empty path, got {self.cache_dir!r}")
        if self.max_bytes is not None and (
            isinstance(self.max_bytes, bool) or not isinstance(self.max_bytes, int)
            or self.max_bytes < 1
        ):
            raise ValueError(f"max_bytes must be an int >= 1 or None, got {self.max_bytes!r}")
        object.__setattr__(self, "validate", check_validate(self.validate))
        if not isinstance(self.offline_ok, bool):
            raise ValueError(f"offline_ok must be a bool, got {self.offline_ok!r}")
        object.__setattr__(self, "deadline_s", _check_seconds(self.deadline_s, "deadline_s"))
        if isinstance(self.progress_min_bytes, bool) or not isinstance(self.progress_min_bytes, int):
            raise ValueError(f"progress_min_bytes must be an int, got {self.progress_min_bytes!r}")
        if not isinstance(self.node_id, str):
            raise ValueError(f"node_id must be a string, got {self.node_id!r}")

    @property
    def directory(self) -> str:
        """The directory this node uses: ``cache_dir``, or a per-node directory in it."""
        root = os.path.abspath(os.path.expanduser(self.cache_dir))
        if not self.node_id:
            return root
        return os.path.join(root, "node-" + re.sub(r"[^A-Za-z0-9_.-]", "_", self.node_id)[:64])

    def with_node(self, node_id: str) -> "StorageConfig":
        return replace(self, node_id=node_id)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "StorageConfig":
        """``MODELPLEX_CACHE_DIR``, ``MODELPLEX_CACHE_MAX_BYTES``, ``MODELPLEX_CACHE_VALIDATE``
        ("always" or seconds), ``MODELPLEX_CACHE_OFFLINE_OK`` (1/0), ``MODELPLEX_FETCH_DEADLINE_S``
        and ``MODELPLEX_NODE_ID``; a bad value raises ``ValueError`` naming the variable."""
        env = os.environ if environ is None else environ
        kwargs: dict[str, Any] = {}
        if env.get("MODELPLEX_CACHE_DIR"):
            kwargs["cache_dir"] = env["MODELPLEX_CACHE_DIR"]
        raw = env.get("MODELPLEX_CACHE_MAX_BYTES", "").strip()
        if raw:
            kwargs["max_bytes"] = _parse(raw, int, "MODELPLEX_CACHE_MAX_BYTES")
        raw = env.get("MODELPLEX_CACHE_VALIDATE", "").strip()
        if raw:
            kwargs["validate"] = (
                "always" if raw == "always" else _parse(raw, float, "MODELPLEX_CACHE_VALIDATE")
            )
        raw = env.get("MODELPLEX_CACHE_OFFLINE_OK")
        if raw is not None:
            if raw.strip().lower() not in _TRUE | _FALSE:
                raise ValueError(f"MODELPLEX_CACHE_OFFLINE_OK must be 1 or 0, got {raw!r}")
            kwargs["offline_ok"] = raw.strip().lower() in _TRUE
        raw = env.get("MODELPLEX_FETCH_DEADLINE_S", "").strip()
        if raw:
            kwargs["deadline_s"] = _parse(raw, float, "MODELPLEX_FETCH_DEADLINE_S")
        kwargs["node_id"] = env.get("MODELPLEX_NODE_ID", "")
        try:
            return cls(**kwargs)
        except ValueError as exc:
            raise ValueError(f"modelplex storage environment: {exc}") from None


def _parse(raw: str, kind: type, name: str) -> Any:
    try:
        return kind(raw)
    except ValueError:
        raise ValueError(f"{name} must be {'an integer' if kind is int else 'a number'}, got {raw!r}") from None
