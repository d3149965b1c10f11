"""The node's disk tier: artifacts fetched from object stores, shared by every replica process.

(Skeleton: the implementation follows.)
"""

from __future__ import annotations

from ._admin import ArtifactStatus


def local_artifacts() -> list[ArtifactStatus]:
    """This process's node's artifacts, least recently used first."""
    return []


def node_artifacts() -> tuple[str, list[ArtifactStatus]]:
    """(node id, its artifacts): what a replica answers for ``serve.list_artifacts``."""
    return "local", local_artifacts()
