"""Placement on the local backend with real replica processes, on a given inventory (4 CPUs,
4 GPUs and 2 "accel", whatever this machine has): each replica's CUDA_VISIBLE_DEVICES and
thread variables, what can never fit, a replica pending in serve.status(), GET /-/status and
`modelplex status`, a rollout whose surge waits, and runtime_env (a real device: test_gpu.py)."""

from __future__ import annotations

import os
import threading

import pytest
import requests

import modelplex as serve
from modelplex._driver.cli import main as cli_main

from ..conftest import start_on_a_free_port, wait_until

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@serve.deployment
class Where:
    """Says what its process was given."""

    def __init__(self, version: str = "v1") -> None:
        self.version = version

    def __call__(self, request=None) -> dict:
        context = serve.get_replica_context()
        try:
            import torch  # part of the test extra once torch is; the check skips without it

            torch_threads = torch.get_num_threads()
        except ImportError:
            torch_threads = None
        return {
            "replica": context.replica_tag,
            "version": self.version,
            "pid": os.getpid(),
            "gpu_ids": list(context.gpu_ids),
            "assigned": dict(context.assigned_resources),
            "torch_threads": torch_threads,
            **{var: os.environ.get(var) for var in ("CUDA_VISIBLE_DEVICES", "MY_VAR", *THREAD_VARS)},
        }


@pytest.fixture(scope="module")
def node():
    saved = {var: os.environ.pop(var, None) for var in (*THREAD_VARS, "CUDA_VISIBLE_DEVICES")}
    try:
        yield start_on_a_free_port(num_cpus=4, num_gpus=4, resources={"accel": 2})
    finally:
        serve.shutdown()
        os.environ.update({k: v for k, v in saved.items() if v is not None})


def every_replica(handle, count: int) -> dict[str, dict]:
    """What each of ``count`` replicas says (calls land on random replicas)."""
    seen: dict[str, dict] = {}
    for _ in range(200):
        answer = handle.remote().result(timeout_s=30)
        seen[answer["replica"]] = answer
        if len(seen) == count:
            return seen
    raise AssertionError(f"reached {len(seen)} of {count} replicas")


def test_each_replica_sees_its_own_devices_and_threads(node):
    whole = Where.options(name="whole", num_replicas=2,
                          ray_actor_options={"num_gpus": 1, "num_cpus": 2})
    halves = Where.options(name="halves", num_replicas=2, ray_actor_options={
        "num_gpus": 0.5, "runtime_env": {"env_vars": {"MY_VAR": "x", "OMP_NUM_THREADS": "3"}}})

    @serve.deployment
    class Both:
        def __init__(self, whole, halves) -> None:
            self.whole, self.halves = whole, halves

    serve.run(Both.bind(whole.bind(), halves.bind()), name="devices", route_prefix="/devices")
    try:
        whole_seen = every_replica(serve.get_deployment_handle("whole", "devices"), 2).values()
        assert sorted(a["CUDA_VISIBLE_DEVICES"] for a in whole_seen) == ["0", "1"]
        for answer in whole_seen:
            assert [answer[v] for v in THREAD_VARS] == ["2", "2", "2"]  # follow num_cpus=2
            assert answer["gpu_ids"] == [answer["CUDA_VISIBLE_DEVICES"]]
            assert answer["assigned"] == {"CPU": 2.0, "GPU": 1.0}
            if answer["torch_threads"] is not None:
                assert answer["torch_threads"] == 2
        # Two halves share one device; no num_cpus: 1 thread; env_vars apply and win.
        halves_seen = every_replica(serve.get_deployment_handle("halves", "devices"), 2).values()
        for answer in halves_seen:
            assert answer["CUDA_VISIBLE_DEVICES"] == "2" and answer["MY_VAR"] == "x"
            assert [answer[v] for v in THREAD_VARS] == ["3", "1", "1"]
            assert answer["assigned"] == {"GPU": 0.5}
        status = serve.status().applications["devices"].deployments["whole"]
        assert sorted(r.gpu_ids for r in status.replicas) == [("0",), ("1",)]
        assert serve.status().resources["available"]["GPU"] == 1.0
    finally:
        serve.delete("devices")


def test_what_can_never_fit_fails_serve_run_at_once(node):
    with pytest.raises(serve.InsufficientResourcesError, match="asks for 5 GPU, and the node has 4"):
        serve.run(Where.options(name="huge", ray_actor_options={"num_gpus": 5}).bind(), name="huge")
    with pytest.raises(ValueError, match="'pip', which the local backend does not apply"):
        serve.run(Where.options(name="pip", ray_actor_options={
            "runtime_env": {"pip": ["torch"]}}).bind(), name="pip")
    assert "huge" not in serve.status().applications


def test_a_replica_that_fits_later_is_pending_everywhere_the_status_shows(node, capsys):
    serve.run(Where.options(name="big", ray_actor_options={"resources": {"accel": 2}}).bind(),
              name="big", route_prefix="/big")
    # The only room is big's: serve.run returns, and the replica waits for it.
    handle = serve.run(Where.options(name="small", ray_actor_options={
        "resources": {"accel": 1}}).bind(), name="small", route_prefix="/small")
    try:
        (replica,) = serve.status().applications["small"].deployments["small"].replicas
        assert (replica.state, replica.waiting_for) == ("pending", "1 accel: 0 of 2 free")
        doc = requests.get(f"{node.url}/-/status", timeout=10).json()
        (seen,) = doc["applications"]["small"]["deployments"]["small"]["replicas"]
        assert (seen["state"], seen["waiting_for"]) == ("pending", "1 accel: 0 of 2 free")
        assert doc["resources"]["available"]["accel"] == 0.0
        assert cli_main(["status", "--address", node.url]) == 0
        assert "waiting for 1 accel: 0 of 2 free" in capsys.readouterr().out
        # A request meanwhile waits at the router for a replica, and is answered once one runs.
        answer = {}
        waiting = threading.Thread(target=lambda: answer.update(handle.remote().result(timeout_s=60)))
        waiting.start()
        serve.delete("big")
        waiting.join(60)
        assert answer.get("version") == "v1"
        (replica,) = serve.status().applications["small"].deployments["small"].replicas
        assert (replica.state, replica.waiting_for) == ("running", "")
    finally:
        serve.delete("small")
        serve.delete("big")


def test_a_rollout_whose_surge_does_not_fit_waits_for_the_old_replica(node):
    every = Where.options(name="all", ray_actor_options={"num_gpus": 4})
    handle = serve.run(every.bind("v1"), name="all", route_prefix="/all")
    try:
        old = handle.remote().result(timeout_s=30)
        handle = serve.run(every.bind("v2"), name="all", route_prefix="/all")  # 8 GPUs for a moment
        new = handle.remote().result(timeout_s=30)
        assert new["version"] == "v2" and new["CUDA_VISIBLE_DEVICES"] == "0,1,2,3"
        wait_until(lambda: not _alive(old["pid"]), message="the old replica did not stop")
    finally:
        serve.delete("all")


def _alive(pid: int) -> bool:
    from ..conftest import pid_alive

    return pid_alive(pid)
