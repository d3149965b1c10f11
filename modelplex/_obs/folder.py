"""The instance's metrics folder: one subfolder per node, where every process on it publishes.

Every process of an instance (the driver with its controller, proxy and routers; each replica;
each node proxy) counts in memory (``store.py``) and publishes a snapshot of its figures to
its node's folder, ``<instance dir>/<node id>``, every ``PUBLISH_S`` while they change and
once more as it ends (``publish``). A proxy's scrape merges every snapshot in its node's folder,
its own process's read from memory, so one scrape covers the proxy, the controller and every
replica on that node, on either backend. Counters and histograms add up over processes, those
that ended included (they are monotonic); gauges add up over the processes still alive.

User code's prometheus-client metrics in a replica go to the same folder through
prometheus-client's multiprocess mode (``install``), and the scrape reads them too, with a
``MultiProcessCollector``; their live gauges of a process that ended are dropped
(``mark_process_dead``).
"""

from __future__ import annotations

import glob
import marshal
import os
import re
import shutil
import tempfile
import threading
from typing import Any, Iterator

from .._config import MetricsOptions
from .metrics import Metrics
from .store import Snapshot, Store

__all__ = [
    "PUBLISH_S", "exposition", "for_process", "install", "new_instance_dir", "node_dir",
    "process_ended", "publish", "remove_dir", "uninstall",
]

_MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_PID_FILE = re.compile(r"gauge_live\w*_(\d+)\.db$")
# How stale a scrape may find another process's figures, at most.
PUBLISH_S = 0.25
_SNAPSHOT = re.compile(r"modelplex-(\d+)-\w+\.snapshot$")


def new_instance_dir() -> str:
    return tempfile.mkdtemp(prefix="modelplex-metrics-")


def node_dir(base: str, node_id: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", node_id) or "local"
    return os.path.join(base, safe)


_saved: list[Any] = []


def install(directory: str) -> None:
    """Make this process's prometheus-client metrics write to ``directory`` (multiprocess mode).

    Set here, not from the environment at import time: prometheus-client may already have been
    imported (by Ray, by user code). Metrics made after this call write to the folder."""
    from prometheus_client import values

    os.makedirs(directory, exist_ok=True)
    _saved.append((values.ValueClass, os.environ.get(_MULTIPROC_ENV)))
    os.environ[_MULTIPROC_ENV] = directory
    values.ValueClass = values.MultiProcessValue()


def uninstall() -> None:
    """Undo the last ``install`` (the driver's shutdown; tests start several instances), and
    stop what this process publishes."""
    from prometheus_client import values

    for publisher in list(_publishers):
        publisher.stop()
    if not _saved:
        return
    value_class, env = _saved.pop()
    values.ValueClass = value_class
    if env is None:
        os.environ.pop(_MULTIPROC_ENV, None)
    else:
        os.environ[_MULTIPROC_ENV] = env


def process_ended(directory: str, pid: int | None = None) -> None:
    """Drop the live gauges of a process that ended (this one by default: its last snapshot
    keeps its counters and leaves its gauges out)."""
    from prometheus_client import multiprocess

    if pid is None:
        for publisher in [p for p in _publishers if p.directory == directory]:
            publisher.stop(ended=True)
    try:
        multiprocess.mark_process_dead(os.getpid() if pid is None else pid, directory)
    except OSError:
        pass


def for_process(options: MetricsOptions | None, node_id: str) -> "tuple[Metrics, str] | None":
    """In a replica or node proxy: write to this node's folder; the families and the folder."""
    if options is None or not options.enabled:
        return None
    directory = node_dir(options.directory, node_id)
    install(directory)
    metrics = Metrics(options)
    publish(metrics.store, directory)
    return metrics, directory


class Publisher:
    """Writes ``store``'s snapshot to ``directory`` every ``PUBLISH_S`` when it changed, from
    a thread of its own: the request path never waits on a file."""

    def __init__(self, store: Store, directory: str) -> None:
        self.store = store
        self.directory = directory
        self._path = os.path.join(directory, f"modelplex-{os.getpid()}-{os.urandom(4).hex()}.snapshot")
        self._last = b""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="modelplex-metrics", daemon=True)

    def start(self) -> None:
        os.makedirs(self.directory, exist_ok=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(PUBLISH_S):
            self.write()

    def write(self, *, gauges: bool = True) -> None:
        data = marshal.dumps(self.store.snapshot(gauges=gauges))
        if data == self._last:
            return
        try:
            with open(self._path + ".tmp", "wb") as f:
                f.write(data)
            os.replace(self._path + ".tmp", self._path)
            self._last = data
        except OSError:
            pass  # the folder is gone (the instance is shutting down)

    def stop(self, *, ended: bool = False) -> None:
        """Stop publishing; ``ended``: a last snapshot, without gauges (this process ends)."""
        if self in _publishers:
            _publishers.remove(self)
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(5)
        if ended:
            self.write(gauges=False)


_publishers: list[Publisher] = []


def publish(store: Store, directory: str) -> Publisher:
    """Publish ``store`` to ``directory`` (this node's folder) until ``uninstall`` or
    ``process_ended``; a scrape in this process reads it from memory."""
    publisher = Publisher(store, directory)
    _publishers.append(publisher)
    publisher.start()
    return publisher


def remove_dir(directory: str) -> None:
    shutil.rmtree(directory, ignore_errors=True)


def _sweep(directory: str) -> None:
    """Drop live gauges of processes no longer alive (a replica killed without stopping)."""
    pids = set()
    for path in glob.glob(os.path.join(directory, "gauge_live*_*.db")):
        match = _PID_FILE.search(os.path.basename(path))
        if match:
            pids.add(int(match.group(1)))
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            process_ended(directory, pid)
        except OSError:
            pass  # alive, someone else's


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        pass  # someone else's: alive
    return True


def _snapshots(directory: str) -> Iterator[tuple[Snapshot, bool]]:
    """(snapshot, whether its process is alive) for every process on the node; this
    process's own from memory, fresher than its file."""
    mine = [p.store for p in _publishers if p.directory == directory]
    for store in mine:
        yield store.snapshot(), True
    for path in glob.glob(os.path.join(directory, "modelplex-*.snapshot")):
        match = _SNAPSHOT.search(os.path.basename(path))
        if match is None:
            continue
        pid = int(match.group(1))
        if pid == os.getpid() and mine:
            continue
        try:
            with open(path, "rb") as f:
                snapshot = marshal.loads(f.read())
        except (OSError, EOFError, ValueError, TypeError):
            continue  # replaced or removed as we read: the next scrape has it
        yield snapshot, _alive(pid)


def merge(snapshots: Iterator[tuple[Snapshot, bool]]) -> Snapshot:
    """Counters and histograms summed over processes; gauges over the live ones."""
    merged: Snapshot = {}
    for snapshot, alive in snapshots:
        for name, (kind, doc, labelnames, bounds, values) in snapshot.items():
            if kind.startswith("gauge") and not alive:
                continue
            into = merged.setdefault(name, (kind, doc, tuple(labelnames), tuple(bounds), {}))[4]
            for labels, value in values.items():
                labels = tuple(labels)
                before = into.get(labels)
                if kind == "histogram":
                    counts, total = value
                    if before is not None:
                        counts = tuple(a + b for a, b in zip(before[0], counts))
                        total += before[1]
                    into[labels] = (tuple(counts), total)
                elif kind == "gauge_max":
                    into[labels] = value if before is None else max(before, value)
                else:
                    into[labels] = value + (before or 0.0)
    return merged


class _Collector:
    """The merged figures as prometheus-client metric families, for ``generate_latest``."""

    def __init__(self, merged: Snapshot) -> None:
        self._merged = merged

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )
        from prometheus_client.utils import floatToGoString

        for name, (kind, doc, labelnames, bounds, values) in sorted(self._merged.items()):
            if kind == "histogram":
                family = HistogramMetricFamily(name, doc, labels=labelnames)
                les = [floatToGoString(b) for b in bounds] + ["+Inf"]
                for labels, (counts, total) in values.items():
                    cumulative, buckets = 0, []
                    for le, count in zip(les, counts):
                        cumulative += count
                        buckets.append((le, cumulative))
                    family.add_metric(list(labels), buckets, total)
            else:
                make = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
                family = make(name, doc, labels=labelnames)
                for labels, value in values.items():
                    family.add_metric(list(labels), value)
            yield family


def exposition(directory: str) -> tuple[bytes, str]:
    """The text format of everything this node's processes published to ``directory`` (and
    what user code wrote there with prometheus-client): body and content type."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    _sweep(directory)
    registry = CollectorRegistry()
    registry.register(_Collector(merge(_snapshots(directory))))
    MultiProcessCollector(registry, path=directory)
    return generate_latest(registry), CONTENT_TYPE_LATEST
