"""The default backend: each replica is an OS process on this machine.

The replica reads its spec from stdin and keeps stdin open for its whole life: when the parent
dies, for any reason, the pipe closes and the replica exits. That is how no replica outlives the
process that called ``serve.run``, without relying on signals that a SIGKILL never sends.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import struct
import sys

from .._specs import ProxyInfo, ProxySpec, ReplicaSpec

_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


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


class LocalBackend:
    name = "local"
    listen_host = "127.0.0.1"
    node_id = "local"

    async def start(self, spec: ReplicaSpec) -> LocalReplicaProcess:
        env = dict(os.environ)
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
