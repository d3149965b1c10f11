"""Placement on one node: does a replica's request fit what the node has left? Pure.

The node's ``Inventory`` (CPUs, GPU device ids, custom resources) and what each replica
holds (a ``Ledger``) give, for one ``Request``, either an ``Assignment`` (how many CPUs count,
which devices with which share, which custom resources) or a ``Wait`` naming what is short.
``never_fits`` and ``fits_together`` say whether a request, or an application's replicas
together, could ever fit on the empty node. No I/O and no clock: the controller's loop
calls this and applies the answer.

Ray's semantics, kept: amounts are fixed point in 1/10000; a GPU is a unit-instance
resource, so a request above 1 takes whole free devices (lowest ids first) and a fraction
below 1 goes to the device it fits most tightly (best fit), so 0.5 + 0.5 share one device
before a third replica opens another; CPUs and custom resources are single pools.
Ray Serve reserves 1 CPU for a replica that names no ``num_cpus``; here such a replica
reserves none (so as many start as before) and runs 1 thread, Ray's count for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from .._config import RESOURCE_UNIT

__all__ = [
    "Assignment", "Inventory", "Ledger", "Request", "Shortfall", "Wait", "fits_together",
    "never_fits", "request_of",
]

UNIT = RESOURCE_UNIT


def _units(amount: float) -> int:
    return int(round(amount * UNIT))


def _amount(units: int) -> float:
    return units / UNIT


def _num(value: float) -> str:
    return f"{value:g}"


@dataclass(frozen=True)
class Inventory:
    """What the node has: CPUs, its GPUs by device id, and custom resources."""

    cpus: float
    gpu_ids: tuple[str, ...] = ()
    resources: Mapping[str, float] = field(default_factory=dict)

    def total(self) -> dict[str, float]:
        """As Ray's ``cluster_resources()`` names them."""
        return {"CPU": float(self.cpus), "GPU": float(len(self.gpu_ids)), **self.resources}


@dataclass(frozen=True)
class Request:
    """What one replica reserves; ``threads`` is what its thread pools get."""

    cpus: float = 0.0
    gpus: float = 0.0
    resources: Mapping[str, float] = field(default_factory=dict)
    threads: int = 1

    def amounts(self) -> dict[str, float]:
        out = {"CPU": self.cpus, "GPU": self.gpus, **self.resources}
        return {k: v for k, v in out.items() if v > 0}


def request_of(options: Mapping[str, Any] | None) -> Request:
    """A replica's request from its (validated) ``ray_actor_options``.

    ``num_cpus`` named: reserved, and the threads follow it (``floor``, at least 1, as Ray
    sets ``OMP_NUM_THREADS``). Not named: nothing reserved, 1 thread."""
    options = options or {}
    cpus = options.get("num_cpus")
    threads = 1 if cpus is None else max(1, math.floor(cpus))
    resources = {k: float(v) for k, v in (options.get("resources") or {}).items() if v > 0}
    return Request(float(cpus or 0.0), float(options.get("num_gpus") or 0.0), resources, threads)


@dataclass(frozen=True)
class Assignment:
    """Where a request went: its CPUs, each device it shares (index into the inventory's
    ``gpu_ids``, share in units) and its custom resources."""

    cpus: int = 0  # units
    gpus: tuple[tuple[int, int], ...] = ()  # (device index, share in units)
    resources: Mapping[str, int] = field(default_factory=dict)  # units

    def gpu_ids(self, inventory: Inventory) -> tuple[str, ...]:
        return tuple(inventory.gpu_ids[i] for i, _ in self.gpus)

    def assigned(self) -> dict[str, float]:
        """What Ray's ``get_assigned_resources()`` would say: only amounts above 0."""
        out: dict[str, float] = {}
        if self.cpus:
            out["CPU"] = _amount(self.cpus)
        if self.gpus:
            out["GPU"] = _amount(sum(share for _, share in self.gpus))
        out.update({k: _amount(v) for k, v in self.resources.items() if v})
        return out


@dataclass(frozen=True)
class Wait:
    """It does not fit now: what is short, e.g. ``"1 accel: 0 of 2 free"``; ``resource`` is
    the first resource short."""

    reason: str
    resource: str = field(default="", compare=False)


@dataclass(frozen=True)
class Shortfall:
    """It can never fit: ``requested`` of ``resource`` against the node's ``total``."""

    resource: str
    requested: float
    total: float

    def __str__(self) -> str:
        return f"{_num(self.requested)} {self.resource}, and the node has {_num(self.total)}"


class _Free:
    """What is free, in units: a working copy the fit is tried on."""

    def __init__(self, inventory: Inventory) -> None:
        self.cpus = _units(inventory.cpus)
        self.gpus = [UNIT] * len(inventory.gpu_ids)
        self.resources = {k: _units(v) for k, v in inventory.resources.items()}

    def take(self, a: Assignment, sign: int = -1) -> None:
        self.cpus += sign * a.cpus
        for i, share in a.gpus:
            self.gpus[i] += sign * share
        for name, units in a.resources.items():
            self.resources[name] = self.resources.get(name, 0) + sign * units

    def fit(self, request: Request, inventory: Inventory) -> Assignment | Wait:
        short: list[str] = []
        names: list[str] = []
        cpus = _units(request.cpus)
        if cpus > self.cpus:
            names.append("CPU")
            short.append(
                f"{_num(request.cpus)} CPU: {_num(_amount(max(self.cpus, 0)))} of "
                f"{_num(inventory.cpus)} free"
            )
        gpus, why = self._gpus(_units(request.gpus))
        if why:
            names.append("GPU")
            short.append(why)
        resources = {}
        for name, amount in sorted(request.resources.items()):
            units = _units(amount)
            free = self.resources.get(name, 0)
            if units > free:
                total = inventory.resources.get(name, 0.0)
                names.append(name)
                short.append(f"{_num(amount)} {name}: {_num(_amount(max(free, 0)))} of {_num(total)} free")
            resources[name] = units
        if short:
            return Wait("; ".join(short), names[0])
        return Assignment(cpus, gpus, resources)

    def _gpus(self, units: int) -> tuple[tuple[tuple[int, int], ...], str]:
        if units <= 0:
            return (), ""
        total = len(self.gpus)
        if units >= UNIT:  # whole devices, lowest index first
            wanted = units // UNIT
            whole = [i for i, free in enumerate(self.gpus) if free == UNIT]
            if len(whole) < wanted:
                return (), f"{wanted} GPU: {len(whole)} of {total} free"
            return tuple((i, UNIT) for i in whole[:wanted]), ""
        # A fraction: the device it fits most tightly, the lowest index among equals.
        fitting = [(free - units, i) for i, free in enumerate(self.gpus) if free >= units]
        if not fitting:
            most = max(self.gpus, default=0)
            return (), (
                f"{_num(_amount(units))} GPU: at most {_num(_amount(most))} free on one of "
                f"{total} GPU"
            )
        _, best = min(fitting)
        return ((best, units),), ""


class Ledger:
    """What each replica on the node holds; ``fit`` tries a request against the rest."""

    def __init__(self, inventory: Inventory) -> None:
        self.inventory = inventory
        self._held: dict[str, Assignment] = {}

    def holders(self) -> list[str]:
        return list(self._held)

    def held(self, holder: str) -> Assignment | None:
        return self._held.get(holder)

    def hold(self, holder: str, assignment: Assignment) -> None:
        if holder in self._held:
            raise ValueError(f"{holder} already holds resources")
        self._held[holder] = assignment

    def release(self, holder: str) -> None:
        """Nothing happens for a holder that holds nothing (released twice, or never placed)."""
        self._held.pop(holder, None)

    def _free(self, released: Iterable[str] = ()) -> _Free:
        free = _Free(self.inventory)
        gone = set(released)
        for holder, assignment in self._held.items():
            if holder not in gone:
                free.take(assignment)
        return free

    def fit(self, request: Request, released: Iterable[str] = ()) -> Assignment | Wait:
        """Where ``request`` would go now, as if the ``released`` holders had let go."""
        return self._free(released).fit(request, self.inventory)

    def available(self) -> dict[str, float]:
        """As Ray's ``available_resources()``: what is free, GPUs summed over devices."""
        free = self._free()
        return {
            "CPU": _amount(free.cpus),
            "GPU": _amount(sum(free.gpus)),
            **{k: _amount(v) for k, v in sorted(free.resources.items())},
        }


def never_fits(inventory: Inventory, request: Request) -> Shortfall | None:
    """The first resource ``request`` asks more of than the whole node has, if any."""
    if _units(request.cpus) > _units(inventory.cpus):
        return Shortfall("CPU", request.cpus, inventory.cpus)
    gpus = _units(request.gpus)
    if gpus and (gpus >= UNIT and gpus // UNIT > len(inventory.gpu_ids) or not inventory.gpu_ids):
        return Shortfall("GPU", request.gpus, float(len(inventory.gpu_ids)))
    for name, amount in sorted(request.resources.items()):
        total = inventory.resources.get(name, 0.0)
        if _units(amount) > _units(total):
            return Shortfall(name, amount, total)
    return None


def fits_together(inventory: Inventory, requests: Sequence[Request]) -> tuple[int, Wait] | None:
    """Placed one after another on the empty node, the first of ``requests`` that would not
    fit (its index and why), or None when all do. The same order and rules as the loop's."""
    free = _Free(inventory)
    for i, request in enumerate(requests):
        got = free.fit(request, inventory)
        if isinstance(got, Wait):
            return i, got
        free.take(got)
    return None
