"""``serve.status()`` and ``GET /-/status``: applications, their deployments, each deployment's
replicas, and the models each replica holds. One document for the CLI, the live page and Python.

The controller says what it knows itself (replica phases, pids, the routers' reports of the last
minute: hit rate, load times, ongoing and queued requests). Each running replica answers a probe
through the driver's router with its node, pid, running requests and models, as
``serve.list_models`` does. A replica that does not answer in time is still listed, without them.
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass
from typing import Any

from . import _admin
from ._admin import ModelStatus, ReplicaProbe
from ._errors import ReplicasNotReadyError
from ._messages import DeploymentID
from ._scaler import STATS_WINDOW_S

_PROBE_TIMEOUT_S = 2.0
_READY_WAIT_S = 0.5  # how long a first status waits for the driver's router to dial replicas


@dataclass(frozen=True)
class ReplicaStatus:
    replica_id: str
    state: str  # "starting", "running" or "stopping"
    node: str | None  # the node it runs on (a Ray node id, or the host name); None until it runs
    pid: int | None
    ongoing: int | None  # requests running in it; None when it did not answer
    queued: int  # requests waiting at routers for its deployment (not yet on any replica)
    models: tuple[ModelStatus, ...] = ()


@dataclass(frozen=True)
class DeploymentStatus:
    name: str
    status: str  # "HEALTHY" (its target met) or "UPDATING", as Ray Serve says
    target_replicas: int
    ongoing: int  # over its replicas, as the routers count them
    queued: int
    # Over the last ``ServeStatus.window_s`` seconds, from the routers' reports:
    requests: int
    hit_rate: float | None  # share of requests placed on a replica holding their model
    loads: int
    load_p50_s: float | None
    load_p99_s: float | None
    replicas: tuple[ReplicaStatus, ...] = ()


@dataclass(frozen=True)
class ApplicationStatus:
    name: str
    status: str  # "RUNNING" or "DEPLOYING"
    route_prefix: str
    ingress: str
    deployments: dict[str, DeploymentStatus]


@dataclass(frozen=True)
class ServeStatus:
    """What ``serve.status()`` returns and ``GET /-/status`` sends as JSON."""

    applications: dict[str, ApplicationStatus]
    window_s: float = STATS_WINDOW_S


async def collect(controller: Any, registry: Any) -> ServeStatus:
    apps: dict[str, ApplicationStatus] = {}
    for prefix, (name, ingress) in sorted(controller.routes().items()):
        _, deployment_ids = controller.deployments(name)
        deployments = await asyncio.gather(
            *(_deployment(controller, registry, d) for d in deployment_ids)
        )
        found = {d.name: d for d in deployments if d is not None}
        healthy = all(d.status == "HEALTHY" for d in found.values())
        apps[name] = ApplicationStatus(
            name, "RUNNING" if healthy else "DEPLOYING", prefix, ingress.name, found
        )
    return ServeStatus(apps)


async def _deployment(
    controller: Any, registry: Any, deployment_id: DeploymentID
) -> DeploymentStatus | None:
    seen = controller.observe(deployment_id)
    if seen is None:
        return None
    probes = await _probe(registry.router(deployment_id), [
        r.replica_id for r in seen.replicas if r.phase == "running"
    ])
    stats = seen.stats
    replicas = []
    for r in seen.replicas:
        probe = probes.get(r.replica_id)
        replicas.append(ReplicaStatus(
            r.replica_id, r.phase,
            probe.node if probe else None,
            probe.pid if probe else r.pid,
            probe.ongoing if probe else None,
            stats.queued,
            probe.models if probe else (),
        ))
    return DeploymentStatus(
        deployment_id.name, "HEALTHY" if seen.settled else "UPDATING", seen.target_replicas,
        stats.ongoing, stats.queued, stats.requests, stats.hit_rate, stats.loads,
        stats.load_p50_s, stats.load_p99_s, tuple(replicas),
    )


async def _probe(router: Any, replica_ids: list[str]) -> dict[str, ReplicaProbe]:
    if not replica_ids:
        return {}
    try:
        await router.wait_ready(_READY_WAIT_S)
    except ReplicasNotReadyError:
        pass  # probe those it reaches; the others are listed without what they hold

    async def one(replica_id: str) -> ReplicaProbe | None:
        try:
            return await asyncio.wait_for(
                router.call_replica(replica_id, _admin.PROBE), _PROBE_TIMEOUT_S
            )
        except Exception:  # gone, stopping, or busy past the time-out
            return None

    results = await asyncio.gather(*(one(r) for r in replica_ids))
    return {r: p for r, p in zip(replica_ids, results) if p is not None}


def status_dict(status: ServeStatus) -> dict[str, Any]:
    return dataclasses.asdict(status)


# ---- the CLI's text ----------------------------------------------------------------------------


def render(doc: dict[str, Any]) -> str:
    """The status document as ``modelplex status`` prints it."""
    apps = doc.get("applications") or {}
    if not apps:
        return "no applications\n"
    window = f"{doc.get('window_s', STATS_WINDOW_S):g}s"
    out: list[str] = []
    for name, app in apps.items():
        out.append(f"{name}  {app['status']}  route {app['route_prefix']}  ingress {app['ingress']}")
        for dname, d in app["deployments"].items():
            running = sum(r["state"] == "running" for r in d["replicas"])
            out.append(
                f"  {dname}  {d['status']}  replicas {running}/{d['target_replicas']}  "
                f"ongoing {d['ongoing']}  queued {d['queued']}  last {window}: "
                f"requests {d['requests']}  hit rate {_pct(d['hit_rate'])}  loads {d['loads']}  "
                f"load p50 {_secs(d['load_p50_s'])}  p99 {_secs(d['load_p99_s'])}"
            )
            rows = [("REPLICA", "STATE", "NODE", "PID", "ONGOING", "QUEUED")]
            models: list[list[tuple[str, ...]]] = []
            for r in d["replicas"]:
                rows.append((
                    r["replica_id"], r["state"], _node(r["node"]), _dash(r["pid"]),
                    _dash(r["ongoing"]), str(r["queued"]),
                ))
                models.append([
                    (m["model_id"], _model_state(m), _bytes(m["size_bytes"]),
                     _secs(m["idle_s"]), str(m["in_use"]))
                    for m in r["models"]
                ])
            widths = _widths(rows)
            out.append("    " + _row(rows[0], widths))
            for row, held in zip(rows[1:], models):
                out.append("    " + _row(row, widths))
                if held:
                    head = ("MODEL", "STATE", "SIZE", "IDLE", "IN USE")
                    model_widths = _widths([head, *held])
                    out.append("      " + _row(head, model_widths))
                    out.extend("      " + _row(m, model_widths) for m in held)
    return "\n".join(out) + "\n"


def _model_state(model: dict[str, Any]) -> str:
    return "pinned" if model.get("pinned") and model["state"] == "loaded" else model["state"]


def _widths(rows: list[tuple[str, ...]]) -> list[int]:
    return [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]


def _row(cells: tuple[str, ...], widths: list[int]) -> str:
    return "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()


def _dash(value: Any) -> str:
    return "-" if value is None else str(value)


def _node(node: str | None) -> str:
    if node is None:
        return "-"
    return node[:12] if len(node) > 16 else node  # Ray's node ids are 56 hex digits


def _pct(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.0f}%"


def _secs(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f}ms" if value < 1 else f"{value:.1f}s"


def _bytes(size: int | None) -> str:
    if size is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f}{unit}" if unit == "B" else f"{size:.1f}{unit}"
        size /= 1024
    return str(size)
