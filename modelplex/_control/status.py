"""``serve.status()`` and ``GET /-/status``: applications, their deployments, each deployment's
replicas, and the models each replica holds. One document for the CLI, the live page and Python.

The controller says what it knows itself (replica phases, pids, and the last minute from the
routers' reports and the replicas' events: requests and their latencies, hit rate, loads and
their times, queued requests; ``figures.py``). Each running replica answers a probe through
the driver's router with its node, pid, running requests and models, as ``serve.list_models``
does; their running requests add up to the deployment's. A replica that does not answer in time
is still listed, without them.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Iterable, Protocol

from .._errors import ReplicasNotReadyError
from .._messages import DeploymentID
from .._types import (
    STATS_WINDOW_S,
    AdminOp,
    ApplicationStatus,
    DeploymentStatus,
    ReplicaProbe,
    ReplicaStatus,
    ServeStatus,
)
from .management import ReplicaRouter, Routers

if TYPE_CHECKING:
    from .controller import DeploymentObservation

_PROBE_TIMEOUT_S = 2.0
_READY_WAIT_S = 0.5  # how long a first status waits for the driver's router to dial replicas


class Observed(Protocol):
    """What the status asks of the controller (``_control.controller.Controller``)."""

    def routes(self) -> dict[str, tuple[str, DeploymentID]]: ...

    def deployments(self, app_name: str) -> tuple[DeploymentID, list[DeploymentID]]: ...

    def observe(self, deployment_id: DeploymentID) -> DeploymentObservation | None: ...

    def deployed_at(self, app_name: str) -> float: ...

    def resources(self) -> dict[str, dict[str, float]]: ...




class Proxy(Protocol):
    node_id: str


# Ray's ReplicaState names for the replica phases.
# A replica pending (waiting for room on the node) is STARTING to Ray, whose actor waits too.
_RAY_STATES = {
    "pending": "STARTING", "starting": "STARTING", "running": "RUNNING", "stopping": "STOPPING",
}


async def collect(
    controller: Observed, registry: Routers, proxies: Iterable[Proxy] = ()
) -> ServeStatus:
    apps: dict[str, ApplicationStatus] = {}
    for prefix, (name, ingress) in sorted(controller.routes().items()):
        _, deployment_ids = controller.deployments(name)
        deployments = await asyncio.gather(
            *(_deployment(controller, registry, d) for d in deployment_ids)
        )
        found = {d.name: d for d in deployments if d is not None}
        healthy = all(d.status == "HEALTHY" for d in found.values())
        message = "; ".join(f"{d.name}: {d.message}" for d in found.values() if d.message)
        apps[name] = ApplicationStatus(
            name, "RUNNING" if healthy else "DEPLOYING", prefix, ingress.name, found,
            message, controller.deployed_at(name),
        )
    # A proxy listed is one that started and answers (one that fails to start is dropped).
    return ServeStatus(
        apps, proxies={p.node_id: "HEALTHY" for p in proxies}, resources=controller.resources()
    )


async def _deployment(
    controller: Observed, registry: Routers, deployment_id: DeploymentID
) -> DeploymentStatus | None:
    seen = controller.observe(deployment_id)
    if seen is None:
        return None
    probes = await _probe(registry.router(deployment_id), [
        r.replica_id for r in seen.replicas if r.phase == "running"
    ])
    stats = seen.stats
    running = [r.replica_id for r in seen.replicas if r.phase == "running"]
    # What is in flight now: each replica's own count when every running one answered (routers'
    # reports are up to half a second old); else the reports'.
    ongoing = (
        sum(probes[r].ongoing for r in running)
        if running and all(r in probes for r in running) else stats.ongoing
    )
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
            r.waiting_for,
            r.gpu_ids,
        ))
    states: dict[str, int] = {}
    for r in seen.replicas:
        state = _RAY_STATES.get(r.phase, r.phase.upper())
        states[state] = states.get(state, 0) + 1
    return DeploymentStatus(
        deployment_id.name, "HEALTHY" if seen.settled else "UPDATING", seen.target_replicas,
        ongoing, stats.queued, stats.requests, stats.hit_rate, stats.loads,
        stats.load_p50_s, stats.load_p99_s, tuple(replicas), states, seen.message,
        dict(stats.queues),
        latency_p50_s=stats.latency_p50_s, latency_p99_s=stats.latency_p99_s,
    )


async def _probe(router: ReplicaRouter, replica_ids: list[str]) -> dict[str, ReplicaProbe]:
    if not replica_ids:
        return {}
    try:
        await router.wait_ready(_READY_WAIT_S)
    except ReplicasNotReadyError:
        pass  # probe those it reaches; the others are listed without what they hold

    async def one(replica_id: str) -> ReplicaProbe | None:
        try:
            return await asyncio.wait_for(
                router.call_replica(replica_id, AdminOp.PROBE.value), _PROBE_TIMEOUT_S
            )
        except Exception:  # gone, stopping, or busy past the time-out
            return None

    results = await asyncio.gather(*(one(r) for r in replica_ids))
    return {r: p for r, p in zip(replica_ids, results) if p is not None}


# ---- the CLI's text ----------------------------------------------------------------------------


def render(doc: dict[str, Any]) -> str:
    """The status document as ``modelplex status`` prints it."""
    apps = doc.get("applications") or {}
    if not apps:
        return "no applications\n"
    window = f"{doc.get('window_s', STATS_WINDOW_S):g}s"
    out: list[str] = []
    resources = doc.get("resources") or {}
    if resources:
        free = resources.get("available", {})
        out.append("node  " + "  ".join(
            f"{name} {_num(free.get(name, 0.0))}/{_num(total)} free"
            for name, total in resources.get("total", {}).items()
        ))
    for name, app in apps.items():
        out.append(f"{name}  {app['status']}  route {app['route_prefix']}  ingress {app['ingress']}")
        if app.get("message"):
            out.append(f"  message: {app['message']}")
        for dname, d in app["deployments"].items():
            running = sum(r["state"] == "running" for r in d["replicas"])
            out.append(
                f"  {dname}  {d['status']}  replicas {running}/{d['target_replicas']}  "
                f"ongoing {d['ongoing']}  queued {d['queued']}  last {window}: "
                f"requests {d['requests']}  p50 {_secs(d.get('latency_p50_s'))}  "
                f"p99 {_secs(d.get('latency_p99_s'))}  hit rate {_pct(d['hit_rate'])}  "
                f"loads {d['loads']}  load p50 {_secs(d['load_p50_s'])}  "
                f"load p99 {_secs(d['load_p99_s'])}"
            )
            if d.get("message"):
                out.append(f"    message: {d['message']}")
            queues = d.get("longest_queues") or {}
            if queues:
                out.append("    longest queues: " + "  ".join(
                    f"{model_id or '(no model id)'} {count}" for model_id, count in queues.items()
                ))
            rows = [("REPLICA", "STATE", "NODE", "PID", "GPUS", "ONGOING", "QUEUED")]
            models: list[list[tuple[str, ...]]] = []
            waits: list[str] = []
            for r in d["replicas"]:
                rows.append((
                    r["replica_id"], r["state"], _node(r["node"]), _dash(r["pid"]),
                    ",".join(r.get("gpu_ids") or ()) or "-", _dash(r["ongoing"]), str(r["queued"]),
                ))
                waits.append(r.get("waiting_for") or "")
                models.append([
                    (m["model_id"], _model_state(m), _bytes(m["size_bytes"]),
                     _secs(m["idle_s"]), str(m["in_use"]))
                    for m in r["models"]
                ])
            if all(row[4] == "-" for row in rows[1:]):  # no devices here: no column for them
                rows = [row[:4] + row[5:] for row in rows]
            widths = _widths(rows)
            out.append("    " + _row(rows[0], widths))
            for row, held, wait in zip(rows[1:], models, waits):
                out.append("    " + _row(row, widths))
                if wait:
                    out.append(f"      waiting for {wait}")
                if held:
                    head = ("MODEL", "STATE", "SIZE", "IDLE", "IN USE")
                    model_widths = _widths([head, *held])
                    out.append("      " + _row(head, model_widths))
                    out.extend("      " + _row(m, model_widths) for m in held)
    proxies = doc.get("proxies") or {}
    if proxies:
        out.append("proxies  " + "  ".join(f"{_node(n)} {s}" for n, s in proxies.items()))
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


def _num(value: float) -> str:
    return f"{value:g}"


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
