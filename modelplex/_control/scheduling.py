"""The node's ledger in the controller: what a deploy must pass first, which pending replicas
fit now, and what each replica holds until its process ends.

Only for a backend that places replicas itself (the local one, which has an ``Inventory``);
with Ray every call here is a no-op and Ray's scheduler decides. The decisions are the pure
policy's (``resources``); this keeps the ledger, builds each replica's ``Placement`` and says
once, at WARNING, what a pending replica waits for.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterable, Mapping

from .._errors import InsufficientResourcesError
from .._specs import DeploymentSpec, Placement
from .reconcile import Phase
from .resources import Assignment, Inventory, Ledger, Request, fits_together, never_fits, request_of
from .state import Deployment, Replica

__all__ = ["Scheduler", "check_runtime_env"]

logger = logging.getLogger("modelplex.controller")

# The runtime_env keys the local backend applies; Ray applies them all.
LOCAL_RUNTIME_ENV = frozenset({"env_vars"})


def check_runtime_env(deployment: str, options: Mapping[str, Any] | None) -> None:
    """The local backend sets ``env_vars`` and nothing else: any other key is an error, not
    silently ignored."""
    runtime_env = (options or {}).get("runtime_env") or {}
    other = sorted(set(runtime_env) - LOCAL_RUNTIME_ENV)
    if other:
        raise ValueError(
            f"deployment {deployment!r}: ray_actor_options['runtime_env'] has "
            f"{', '.join(map(repr, other))}, which the local backend does not apply (it takes "
            "only 'env_vars'); install what the deployment needs where modelplex runs, or run "
            "it on Ray (cluster='ray')"
        )


def _env_vars(options: Mapping[str, Any] | None) -> dict[str, str]:
    return dict(((options or {}).get("runtime_env") or {}).get("env_vars") or {})


class Scheduler:
    def __init__(self, inventory: Inventory | None) -> None:
        self.inventory = inventory
        self._ledger = Ledger(inventory) if inventory is not None else None

    @property
    def active(self) -> bool:
        return self._ledger is not None

    def check(self, specs: Iterable[DeploymentSpec]) -> None:
        """Before a deploy changes anything: ``runtime_env`` keys, a replica that asks for
        more than the node has, and an application whose replicas cannot all fit at once."""
        if self._ledger is None or self.inventory is None:
            return
        specs = list(specs)
        together: list[tuple[str, Request]] = []
        for spec in specs:
            config = spec.config
            check_runtime_env(config.name, config.ray_actor_options)
            request = request_of(config.ray_actor_options)
            short = never_fits(self.inventory, request)
            if short is not None:
                raise InsufficientResourcesError(
                    config.name, short.resource, short.requested, short.total
                )
            together += [(config.name, request)] * config.initial_replicas
        found = fits_together(self.inventory, [request for _, request in together])
        if found is not None:
            index, wait = found
            name, request = together[index]
            count = sum(1 for n, _ in together if n == name)
            nth = sum(1 for n, _ in together[: index + 1] if n == name)
            raise InsufficientResourcesError(
                name, wait.resource, request.amounts().get(wait.resource, 0.0),
                self.inventory.total().get(wait.resource, 0.0),
                f"the application's replicas do not fit on the node together: replica {nth} "
                f"of {count} would wait forever for {wait.reason}",
            )

    def fits_for(self, deployment: Deployment) -> Callable[[frozenset[str]], bool] | None:
        """For ``reconcile``: would the target version's replica fit once these let go?"""
        ledger = self._ledger
        if ledger is None:
            return None
        request = request_of(deployment.spec.config.ray_actor_options)
        return lambda released: isinstance(ledger.fit(request, released), Assignment)

    def place(self, deployments: Iterable[Deployment]) -> list[tuple[Deployment, Replica, Placement]]:
        """The pending replicas that fit now, each holding its share of the node from now on.

        A rollout's replicas go first (the room its old replicas leave is theirs), then the
        others in the order they began to wait; a smaller request may fit ahead of a larger
        one that waits."""
        ledger, inventory = self._ledger, self.inventory
        if ledger is None or inventory is None:
            return []
        queue = []
        for deployment in deployments:
            rolling = any(r.code_version != deployment.code_version for r in deployment.replicas.values())
            for replica in deployment.replicas.values():
                if replica.phase is Phase.PENDING:
                    queue.append((not rolling, replica.since, len(queue), deployment, replica))
        placed = []
        for *_, deployment, replica in sorted(queue, key=lambda q: q[:3]):
            options = replica.spec.config.ray_actor_options
            request = request_of(options)
            got = ledger.fit(request)
            if isinstance(got, Assignment):
                ledger.hold(replica.replica_id, got)
                placement = Placement(
                    got.gpu_ids(inventory), got.assigned(), request.threads, _env_vars(options)
                )
                placed.append((deployment, replica, placement))
                continue
            if not replica.waiting_for:
                logger.warning(
                    "Replica %s is pending: it waits for %s (other replicas serve meanwhile).",
                    replica.replica_id, got.reason,
                )
            replica.waiting_for = got.reason
        return placed

    def release(self, replica_id: str) -> None:
        if self._ledger is not None:
            self._ledger.release(replica_id)

    def resources(self) -> dict[str, dict[str, float]]:
        """The node's ``total`` and ``available``, as Ray names them; {} when Ray places."""
        if self._ledger is None or self.inventory is None:
            return {}
        return {"total": self.inventory.total(), "available": self._ledger.available()}
