"""Which waiting model id gets the next free slot: weighted fair queuing across model ids.

Each model id is a *flow* (requests without one are the flow ""). ``Fairness`` keeps a
virtual-time counter per flow, the service it has had divided by its weight, after VTC (Sheng
et al., OSDI '24) and start-time fair queuing:

* Service is slot time. A request is charged its flow's estimated slot seconds when it gets a
  slot: the running mean of what the flow's requests took (``finished`` teaches it), so a
  tenant whose requests run long gets fewer of them. Charged up front and never taken back,
  a counter only grows, and a flow lifted below another stays below it until served.
* Of the flows waiting, the one with the lowest counter goes first (``order``). The caller
  skips a flow it cannot place now (its holders busy, its cap reached) and offers the slot to
  the next, so the policy is work-conserving: a lone tenant gets the whole pool, and a slot
  stays idle only while no waiting request can use it.
* A flow that becomes active (nothing of it waiting or running before) is lifted to the
  virtual time of the service under way: the counter of the flow served last, and no higher
  than the lowest waiting flow's. An idle tenant thus cannot bank credit and then take the
  pool, and a newcomer is at most one request behind the least served.

Between two backlogged flows of equal weight the charges differ by at most one request's (VTC's
bound), and the slot time by as much plus the estimates' error.

``fifo`` keeps arrival order grouped by model id: flows in the order they started waiting,
each drained in turn (the order before fairness existed).

Pure: time comes in as ``now`` arguments, so tests script arrivals in milliseconds. Memory is
bounded: the flows waiting or running, plus ``max_idle`` idle flows whose counters still
matter (one at or below the virtual time is forgotten at once: a newcomer would start there).
"""

from __future__ import annotations

import heapq
import itertools
from collections import OrderedDict
from typing import Iterator, Mapping

from .._config import TenantPolicy

__all__ = ["Fairness"]

# How fast a flow's slot-time estimate follows what its requests take (per request).
COST_ALPHA = 0.2
# The least a request is charged: a slot is never free, and weights need a charge to divide.
MIN_COST_S = 0.001
# A flow not measured yet is charged the deployment's mean, and before the deployment measured
# any request, the least: a guess that is too high would stay in the counters for good.
DEFAULT_COST_S = MIN_COST_S
# Idle flows whose counters are kept (beyond those waiting or running).
MAX_IDLE_FLOWS = 4096
# Service shares (``shares``) are over recent slot time, halving every this many seconds.
SHARE_HALF_LIFE_S = 10.0


class _Flow:
    __slots__ = ("counter", "queued", "running", "seq", "version", "cost")

    def __init__(self) -> None:
        self.counter = 0.0  # service received / weight, plus lifts
        self.queued = 0  # requests waiting
        self.running = 0  # requests holding a slot
        self.seq = 0  # when it last started waiting: the fifo order, and fair's tie-break
        self.version = 0  # bumped whenever its place in the order changes
        self.cost: float | None = None  # estimated slot seconds of one request, once measured


class Fairness:
    def __init__(
        self,
        policy: TenantPolicy | None = None,
        *,
        default_cost_s: float = DEFAULT_COST_S,
        max_idle: int = MAX_IDLE_FLOWS,
        share_half_life_s: float = SHARE_HALF_LIFE_S,
    ) -> None:
        policy = policy or TenantPolicy()
        self._fair = policy.fair
        self._weights: Mapping[str, float] = policy.weights
        self._flows: dict[str, _Flow] = {}
        self._idle: OrderedDict[str, None] = OrderedDict()  # inactive flows kept, oldest first
        self._heap: list[tuple[tuple[float, ...], int, str]] = []  # (key, version, flow id)
        self._backlogged = 0
        self._seqs = itertools.count()
        self._virtual = 0.0  # the counter of the flow served last, before its charge
        self._mean_cost = default_cost_s
        self._measured = False
        self._max_idle = max_idle
        self._half_life = share_half_life_s
        self._recent: dict[str, tuple[float, float]] = {}  # flow -> (slot seconds, as of)
        self._passing = False

    # ---- policy ------------------------------------------------------------------------------

    @property
    def fair(self) -> bool:
        return self._fair

    def configure(self, policy: TenantPolicy) -> None:
        """New weights or a new mode, in place: counters are kept, the order is rebuilt."""
        if policy.fair == self._fair and policy.weights == self._weights:
            return
        self._fair, self._weights = policy.fair, policy.weights
        if not self._passing:
            self._rebuild()

    def weight(self, flow_id: str) -> float:
        return self._weights.get(flow_id, 1.0)

    # ---- waiting -----------------------------------------------------------------------------

    def queued(self, flow_id: str) -> None:
        """A request of ``flow_id`` started waiting."""
        flow = self._activate(flow_id)
        flow.queued += 1
        if flow.queued == 1:
            flow.seq = next(self._seqs)
            self._backlogged += 1
            self._push(flow_id, flow)

    def unqueued(self, flow_id: str) -> None:
        """A request of ``flow_id`` stopped waiting: placed, refused or gone."""
        flow = self._flows.get(flow_id)
        if flow is None or flow.queued == 0:
            return
        flow.queued -= 1
        if flow.queued == 0:
            self._backlogged -= 1
            flow.version += 1  # out of the order
            self._settle(flow_id, flow)

    # ---- service -----------------------------------------------------------------------------

    def started(self, flow_id: str) -> float:
        """A request of ``flow_id`` got a slot: charge its estimate, and return it."""
        flow = self._activate(flow_id)
        cost = max(MIN_COST_S, self._mean_cost if flow.cost is None else flow.cost)
        self._virtual = flow.counter
        flow.counter += cost / self.weight(flow_id)
        flow.running += 1
        if flow.queued:
            self._push(flow_id, flow)
        return cost

    def finished(self, flow_id: str, seconds: float, now: float) -> None:
        """A request of ``flow_id`` let go of its slot after ``seconds``: its flow's estimate
        learns from it."""
        seconds = max(0.0, seconds)
        self._remember(flow_id, seconds, now)
        if self._measured:
            self._mean_cost += COST_ALPHA * (seconds - self._mean_cost)
        else:
            self._mean_cost, self._measured = seconds, True
        flow = self._flows.get(flow_id)
        if flow is None:
            return
        flow.cost = seconds if flow.cost is None else flow.cost + COST_ALPHA * (seconds - flow.cost)
        flow.running = max(0, flow.running - 1)
        self._settle(flow_id, flow)

    def running(self, flow_id: str) -> int:
        """Requests of ``flow_id`` holding a slot now."""
        flow = self._flows.get(flow_id)
        return flow.running if flow is not None else 0

    def cost(self, flow_id: str) -> float:
        """The slot seconds one more request of ``flow_id`` is expected to take."""
        flow = self._flows.get(flow_id)
        cost = flow.cost if flow is not None and flow.cost is not None else self._mean_cost
        return max(MIN_COST_S, cost)

    # ---- the order ---------------------------------------------------------------------------

    def order(self) -> Iterator[str]:
        """The waiting flows, the one to serve first first.

        A flow the caller starts a request of meanwhile comes again at its new place; a flow
        it passes over does not come again in this pass. Close the iterator when stopping
        early (the flows passed over go back into the order then)."""
        popped: list[tuple[tuple[float, ...], int, str]] = []
        self._passing = True
        try:
            while self._heap:
                entry = heapq.heappop(self._heap)
                if not self._valid(entry):
                    continue
                popped.append(entry)
                yield entry[2]
        finally:
            self._passing = False
            for entry in popped:
                if self._valid(entry):
                    heapq.heappush(self._heap, entry)
            if len(self._heap) > 2 * self._backlogged + 64:
                self._rebuild()

    def counters(self) -> dict[str, float]:
        """Each known flow's counter (for tests and status)."""
        return {flow_id: flow.counter for flow_id, flow in self._flows.items()}

    def shares(self, now: float, top: int = 64) -> dict[str, float]:
        """Each flow's share of the recent slot time (halving every ``share_half_life_s``),
        the ``top`` largest; they add up to 1 with the rest."""
        decayed = {f: self._decayed(f, now) for f in self._recent}
        total = sum(decayed.values())
        if total <= 0:
            return {}
        best = sorted(decayed.items(), key=lambda kv: -kv[1])[:top]
        return {f: value / total for f, value in best if value > 0}

    def __len__(self) -> int:
        """Flows with a counter kept."""
        return len(self._flows)

    # ---- inside ------------------------------------------------------------------------------

    def _key(self, flow: _Flow) -> tuple[float, ...]:
        return (flow.counter, flow.seq) if self._fair else (flow.seq,)

    def _push(self, flow_id: str, flow: _Flow) -> None:
        flow.version += 1
        heapq.heappush(self._heap, (self._key(flow), flow.version, flow_id))

    def _valid(self, entry: tuple[tuple[float, ...], int, str]) -> bool:
        flow = self._flows.get(entry[2])
        return flow is not None and flow.queued > 0 and flow.version == entry[1]

    def _rebuild(self) -> None:
        self._heap = []
        for flow_id, flow in self._flows.items():
            if flow.queued:
                flow.version += 1
                self._heap.append((self._key(flow), flow.version, flow_id))
        heapq.heapify(self._heap)

    def _lowest_waiting(self) -> float | None:
        if not self._fair or self._passing:
            return None
        while self._heap and not self._valid(self._heap[0]):
            heapq.heappop(self._heap)
        return self._heap[0][0][0] if self._heap else None

    def _activate(self, flow_id: str) -> _Flow:
        """The flow, lifted to the virtual time if it was neither waiting nor running."""
        flow = self._flows.get(flow_id)
        if flow is None:
            flow = self._flows[flow_id] = _Flow()
        elif flow.queued or flow.running:
            return flow
        self._idle.pop(flow_id, None)
        floor = self._virtual
        lowest = self._lowest_waiting()
        if lowest is not None:
            floor = min(floor, lowest)
        flow.counter = max(flow.counter, floor)
        return flow

    def _settle(self, flow_id: str, flow: _Flow) -> None:
        """A flow that went idle: forgotten if a newcomer would start where it is, else kept
        among the ``max_idle`` idle flows remembered."""
        if flow.queued or flow.running:
            return
        if flow.counter <= self._virtual:
            del self._flows[flow_id]
            return
        self._idle[flow_id] = None
        self._idle.move_to_end(flow_id)
        while len(self._idle) > self._max_idle:
            oldest, _ = self._idle.popitem(last=False)
            self._flows.pop(oldest, None)

    def _decayed(self, flow_id: str, now: float) -> float:
        value, at = self._recent[flow_id]
        return value * 0.5 ** (max(0.0, now - at) / self._half_life)

    def _remember(self, flow_id: str, seconds: float, now: float) -> None:
        value = self._decayed(flow_id, now) if flow_id in self._recent else 0.0
        self._recent[flow_id] = (value + seconds, now)
        if len(self._recent) > self._max_idle:
            # Keep the busiest quarter: the shares are of the recent slot time.
            kept = sorted(self._recent, key=lambda f: -self._decayed(f, now))[: self._max_idle // 4]
            self._recent = {f: self._recent[f] for f in kept}
