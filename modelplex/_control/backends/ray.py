"""Replicas as Ray actors, for serving beyond one machine.

Ray decides where each replica runs (``ray_actor_options``: ``num_cpus``, ``num_gpus``,
``memory``, ``resources``, as in Ray Serve) and reports its death; everything else is
modelplex's own. The actor runs the same replica code as a local process: it dials the
controller, binds its node's address, and serves requests over modelplex's authenticated
channel, so no request goes through Ray's object store and the speed measured locally holds.

Ray is imported here and nowhere else, and only when this backend is chosen.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

from ..._config import NodeResources
from ..._specs import Placement, ProxyInfo, ProxySpec, ReplicaSpec

# The Ray namespace of a Ray that modelplex starts itself.
_NAMESPACE = "modelplex"

logger = logging.getLogger("modelplex.backend")


class _ReplicaActor:
    """Hosts one replica; ``run`` returns its exit code when the replica ends."""

    def run(self, spec: ReplicaSpec) -> int:
        import ray

        from ..._replica.process import run_replica

        context = ray.get_runtime_context()
        return run_replica(
            dataclasses.replace(
                spec,
                bind_host=ray.util.get_node_ip_address(),
                node_id=context.get_node_id(),
                # What Ray gave it, for serve.get_replica_context(); Ray set the environment.
                placement=Placement(
                    tuple(context.get_accelerator_ids().get("GPU", ())),
                    context.get_assigned_resources(),
                ),
            )
        )


class _ProxyActor:
    """Hosts a node proxy; lives until killed."""

    def __init__(self) -> None:
        self._proxy: Any = None

    def start(self, spec: ProxySpec) -> tuple[str, str, int, int | None]:
        import ray

        from ..._http.node_proxy import NodeProxy

        node_id = ray.get_runtime_context().get_node_id()
        self._proxy = NodeProxy(dataclasses.replace(spec, node_id=node_id))
        port = self._proxy.start()
        return node_id, spec.http_options.host, port, self._proxy.grpc_port

    def stop(self) -> None:
        if self._proxy is not None:
            self._proxy.stop()


class RayReplicaProcess:
    def __init__(self, replica_id: str, actor: Any, done: Any) -> None:
        self.replica_id = replica_id
        self._actor = actor
        self._done = done  # the ObjectRef of run(): ready when the replica ends or its actor dies
        self.exit_reason: str | None = None

    @property
    def pid(self) -> int | None:
        return None  # the replica reports its pid when ready; Ray knows the actor by id

    async def wait(self) -> int | None:
        try:
            return await self._done
        except Exception as exc:  # RayActorError and kin: the actor, its worker or node died
            detail = str(exc).strip().splitlines()
            self.exit_reason = f"ended with its Ray actor ({type(exc).__name__}: " + (
                f"{detail[0][:300]})" if detail else "no detail)"
            )
            return None

    def kill(self) -> None:
        import ray

        try:
            ray.kill(self._actor, no_restart=True)
        except Exception:  # already gone
            pass


class RayBackend:
    name = "ray"

    inventory = None  # Ray places replicas itself

    def __init__(
        self, address: str | None = None, proxy_location: str = "head_node",
        node: NodeResources = NodeResources(),
    ) -> None:
        import ray

        self._ray = ray
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            ray.init(  # the node's inventory, as serve.start took it: Ray's own keywords
                address=address,
                namespace=_NAMESPACE,
                include_dashboard=False,
                logging_level=logging.WARNING,
                **node.options(),
            )
        elif node.given:
            raise ValueError(
                "Ray is already initialized: give num_cpus, num_gpus and resources to its "
                "ray.init, not to serve.start"
            )
        self.listen_host = ray.util.get_node_ip_address()
        self.node_id = ray.get_runtime_context().get_node_id()
        self._proxy_location = proxy_location
        # Not detached: actors belong to this driver, so Ray stops them when it goes away (the
        # cluster's counterpart of the local backend's stdin pipe). No restarts: the
        # controller replaces a dead replica itself, with a new id and a fresh cache.
        self._replica_cls = ray.remote(max_restarts=0, max_task_retries=0)(_ReplicaActor)
        self._proxy_cls = ray.remote(num_cpus=0, max_restarts=0)(_ProxyActor)
        self._proxy_spec: ProxySpec | None = None
        self._node_proxies: dict[str, tuple[Any, ProxyInfo]] = {}  # node id -> (actor, info)

    async def start(self, spec: ReplicaSpec) -> RayReplicaProcess:
        # Validated when the deployment was declared; spread replicas as Ray Serve does.
        options = {"scheduling_strategy": "SPREAD", **(spec.ray_actor_options or {})}
        actor = self._replica_cls.options(**options).remote()
        # Each node's disk is its own: a replica there reads the node's storage settings
        # (MODELPLEX_CACHE_*, set on the node or through runtime_env), not the driver's.
        spec = dataclasses.replace(spec, storage=None)
        return RayReplicaProcess(spec.replica_id, actor, actor.run.remote(spec))

    async def start_proxies(self, spec: ProxySpec) -> list[ProxyInfo]:
        if self._proxy_location != "every_node":
            return []
        self._proxy_spec = spec
        failures = await self._start_node_proxies(self._other_nodes())
        if failures:
            node, cause = failures[0]
            raise RuntimeError(f"cannot start the HTTP proxy on node {node}: {cause}")
        return [info for _, info in self._node_proxies.values()]

    async def refresh_proxies(self) -> list[ProxyInfo]:
        """Follow the cluster: a proxy for each node that joined, none for nodes that left."""
        if self._proxy_spec is None:
            return []
        alive = self._other_nodes()
        for node in [n for n in self._node_proxies if n not in alive]:
            actor, _ = self._node_proxies.pop(node)
            self._kill(actor)
        for node, cause in await self._start_node_proxies(
            [n for n in alive if n not in self._node_proxies]
        ):
            logger.warning("Cannot start the HTTP proxy on node %s yet: %s", node, cause)
        return [info for _, info in self._node_proxies.values()]

    def _other_nodes(self) -> list[str]:
        return [n["NodeID"] for n in self._ray.nodes() if n["Alive"] and n["NodeID"] != self.node_id]

    async def _start_node_proxies(self, nodes: list[str]) -> list[tuple[str, BaseException]]:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        actors = [
            self._proxy_cls.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)
            ).remote()
            for node in nodes
        ]
        started = await asyncio.gather(
            *(actor.start.remote(self._proxy_spec) for actor in actors), return_exceptions=True
        )
        failures = []
        for node, actor, result in zip(nodes, actors, started):
            if isinstance(result, BaseException):
                self._kill(actor)
                failures.append((node, getattr(result, "cause", None) or result))  # unwrap Ray's
            else:
                _, host, port, grpc_port = result
                self._node_proxies[node] = (actor, ProxyInfo(node, host, port, grpc_port))
        return failures

    def _kill(self, actor: Any) -> None:
        try:
            self._ray.kill(actor, no_restart=True)
        except Exception:  # already gone
            pass

    async def close(self) -> None:
        proxies = [actor for actor, _ in self._node_proxies.values()]
        self._node_proxies.clear()
        if proxies:
            stops = [actor.stop.remote() for actor in proxies]
            await asyncio.wait([asyncio.ensure_future(_await(ref)) for ref in stops], timeout=15)
        for actor in proxies:
            self._kill(actor)
        if self._owns_ray:
            self._ray.shutdown()


async def _await(ref: Any) -> Any:
    try:
        return await ref
    except Exception:
        return None
