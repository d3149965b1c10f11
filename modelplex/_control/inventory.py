"""What this node has, for the local backend's placement: given values, else detected.

CPUs: the process's CPU affinity, capped by a cgroup v2 quota where one is set (a container's
``--cpus``, as Ray reads it). GPUs: ``CUDA_VISIBLE_DEVICES`` when the driver has it (its
entries are the device ids, UUIDs included), else NVIDIA's driver (NVML, else
``nvidia-smi -L``), else none. Values given to ``serve.start`` win, so a test can say "this
node has 4 GPUs" on a machine without one. Everything the detection reads comes in as an
argument, so its tests fake the environment and the driver.
"""

from __future__ import annotations

import ctypes
import math
import os
import subprocess
from typing import Callable, Mapping

from .._config import NodeResources
from .resources import Inventory

__all__ = ["detect", "detect_node", "visible_devices"]

CUDA_VISIBLE_DEVICES = "CUDA_VISIBLE_DEVICES"
_CGROUP_CPU_MAX = "/sys/fs/cgroup/cpu.max"


def visible_devices(value: str) -> tuple[str, ...]:
    """The device ids ``CUDA_VISIBLE_DEVICES`` names, as CUDA reads it: "" or "NoDevFiles"
    names none, and the list ends at the first invalid (negative) index."""
    ids = []
    for entry in (e.strip() for e in value.split(",")):
        if not entry or entry == "NoDevFiles" or entry.lstrip("-").isdigit() and int(entry) < 0:
            break
        ids.append(entry)
    return tuple(ids)


def detect(
    given: NodeResources,
    *,
    environ: Mapping[str, str],
    affinity: Callable[[], int],
    cpu_quota: Callable[[], float | None] = lambda: None,
    nvml: Callable[[], int | None] = lambda: None,
    smi: Callable[[], str | None] = lambda: None,
) -> Inventory:
    """The node's inventory: ``given`` where it says, the rest detected."""
    if given.num_cpus is not None:
        cpus = float(given.num_cpus)
    else:
        cpus = float(affinity())
        quota = cpu_quota()
        if quota is not None:
            cpus = min(cpus, float(max(1, math.floor(quota))))
    visible = visible_devices(environ[CUDA_VISIBLE_DEVICES]) if CUDA_VISIBLE_DEVICES in environ else None
    if given.num_gpus is not None:
        if visible is None:
            gpu_ids = tuple(str(i) for i in range(given.num_gpus))
        elif given.num_gpus <= len(visible):
            gpu_ids = visible[: given.num_gpus]
        else:
            raise ValueError(
                f"num_gpus={given.num_gpus} but CUDA_VISIBLE_DEVICES="
                f"{environ[CUDA_VISIBLE_DEVICES]!r} names {len(visible)} device(s)"
            )
    elif visible is not None:
        gpu_ids = visible
    else:
        count = nvml()
        if count is None:
            count = _count_smi(smi())
        gpu_ids = tuple(str(i) for i in range(count))
    return Inventory(cpus, gpu_ids, dict(given.resources or {}))


def _count_smi(listing: str | None) -> int:
    """Devices in ``nvidia-smi -L`` output: one "GPU <n>: <name> (UUID: ...)" line each."""
    if not listing:
        return 0
    return sum(1 for line in listing.splitlines() if line.startswith("GPU "))


# ---- the real machine ---------------------------------------------------------------------------


def _affinity() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def _cpu_quota(path: str = _CGROUP_CPU_MAX) -> float | None:
    """A cgroup v2 CPU limit as a number of CPUs ("200000 100000" is 2), or None."""
    try:
        with open(path) as f:
            quota, _, period = f.read().strip().partition(" ")
        if quota == "max":
            return None
        return int(quota) / int(period or 100000)
    except (OSError, ValueError, ZeroDivisionError):
        return None


def _nvml() -> int | None:
    """Devices NVML counts, or None without NVIDIA's driver library."""
    try:
        lib = ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return None
    try:
        if lib.nvmlInit_v2() != 0:
            return None
        count = ctypes.c_uint(0)
        ok = lib.nvmlDeviceGetCount_v2(ctypes.byref(count)) == 0
        lib.nvmlShutdown()
        return count.value if ok else None
    except AttributeError:  # an old driver without the _v2 entry points
        return None


def _smi() -> str | None:
    try:
        done = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def detect_node(given: NodeResources) -> Inventory:
    """This machine's inventory, with ``given`` winning."""
    return detect(
        given, environ=os.environ, affinity=_affinity, cpu_quota=_cpu_quota, nvml=_nvml, smi=_smi
    )
