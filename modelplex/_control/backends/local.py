"""The default backend: each replica is an OS process on this machine.

The replica reads its spec from stdin and keeps stdin open for its whole life: when the parent
dies, for any reason, the pipe closes and the replica exits. That is how no replica outlives the
process that called ``serve.run``, without relying on signals that a SIGKILL never sends.

The controller placed the replica on this node (``spec.placement``); its environment says
so, as Ray sets a worker's: ``CUDA_VISIBLE_DEVICES`` names exactly its devices (none: ""),
the thread pools' variables follow its ``num_cpus`` unless the user set them, and its
``runtime_env`` ``env_vars`` apply last and win.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import struct
import sys
from typing import Mapping

from ..._specs import Placement, ProxyInfo, ProxySpec, ReplicaSpec
from ..resources import Inventory

_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


class LocalReplicaProcess:
    def __init__(self, replica_id: str, proc: asyncio.subprocess.Process) -> None:
        self.replica_id = replica_id
        self._proc = proc
        self.exit_reason: str | None = None  # the exit code says it all

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    async def wait(self) -> int | None:
        return await self._proc.wait()

    def kill(self) -> None:
        if self._proc.returncode is None:
            try:
                self._proc.kill()
            except ProcessLookupError:
                pass
        if self._proc.stdin is not None:
            self._proc.stdin.close()


# OpenMP (torch's intra-op pool reads it at import), MKL and OpenBLAS: one count for all.
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def replica_environ(base: Mapping[str, str], placement: Placement | None) -> dict[str, str]:
    """The environment a replica process starts with: ``base`` (the driver's), then what its
    placement says, then its ``runtime_env`` variables."""
    env = dict(base)
    if placement is None:
        return env
    env["CUDA_VISIBLE_DEVICES"] = ",".join(placement.gpu_ids)
    for var in THREAD_VARS:
        if var not in base:  # the user's own setting wins, as Ray leaves OMP_NUM_THREADS
            env[var] = str(placement.threads)
    env.update(placement.env_vars)
    return env


class LocalBackend:
    name = "local"
    listen_host = "127.0.0.1"
    node_id = "local"

    def __init__(self, inventory: Inventory) -> None:
        self.inventory = inventory

    async def start(self, spec: ReplicaSpec) -> LocalReplicaProcess:
        env = replica_environ(os.environ, spec.placement)
        env["PYTHONPATH"] = os.pathsep.join(
            [_PACKAGE_ROOT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        )
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "modelplex._replica",
            stdin=asyncio.subprocess.PIPE,
            env=env,
            cwd=spec.cwd or None,
        )
        data = pickle.dumps(spec, protocol=5)
        assert proc.stdin is not None
        proc.stdin.write(struct.pack(">Q", len(data)) + data)
        await proc.stdin.drain()
        return LocalReplicaProcess(spec.replica_id, proc)

    async def start_proxies(self, spec: ProxySpec) -> list[ProxyInfo]:
        return []  # one machine: the driver's proxy is the only one

    async def refresh_proxies(self) -> list[ProxyInfo]:
        return []

    async def close(self) -> None:
        return None
