"""``modelplex status`` as a real command against a real instance, and ``/-/status``, the live
page's routes and their token over HTTP."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import textwrap
import time

import requests

from ..conftest import free_port, wait_until
from .test_config_cli import _env, cli, serve_cli

APP = """
    import asyncio
    import modelplex as serve

    @serve.deployment(num_replicas=2)
    class Models:
        @serve.multiplexed(max_num_models_per_replica=3)
        async def get_model(self, model_id):
            await asyncio.sleep(0.05)
            return model_id

        async def __call__(self, request):
            return await self.get_model(serve.get_multiplexed_model_id())

    app = Models.bind()
"""

TOKEN = "status-token"


def test_status_command_and_routes(tmp_path):
    (tmp_path / "status_app.py").write_text(textwrap.dedent(APP))
    port = free_port()
    address = ("--address", f"http://127.0.0.1:{port}")
    token = {"MODELPLEX_MANAGEMENT_TOKEN": TOKEN}
    proc, url = serve_cli(tmp_path, "run", "status_app:app", "--port", str(port), **token)
    try:
        for model in ("m1", "m2", "m3", "m1"):
            r = requests.get(url, headers={"serve_multiplexed_model_id": model}, timeout=30)
            assert r.status_code == 200, r.text

        def document():
            done = cli(tmp_path, "status", "--json", *address, **token)
            assert done.returncode == 0, done.stderr
            doc = json.loads(done.stdout)
            deployment = doc["applications"]["default"]["deployments"]["Models"]
            return doc if deployment["requests"] >= 4 else None  # routers report every 0.5s

        started = time.perf_counter()
        doc = wait_until(document, timeout=10)
        app = doc["applications"]["default"]
        assert (app["status"], app["route_prefix"], app["ingress"]) == ("RUNNING", "/", "Models")
        deployment = app["deployments"]["Models"]
        assert deployment["status"] == "HEALTHY" and deployment["target_replicas"] == 2
        assert deployment["hit_rate"] == 0.25  # m1 twice: one hit in four
        assert deployment["loads"] == 3 and 0.05 <= deployment["load_p50_s"] < 1.0
        replicas = deployment["replicas"]
        assert [r["state"] for r in replicas] == ["running", "running"]
        assert all(isinstance(r["pid"], int) and r["node"] for r in replicas)
        assert all(r["ongoing"] == 0 and r["queued"] == 0 for r in replicas)
        held = sorted(m["model_id"] for r in replicas for m in r["models"])
        assert held == ["m1", "m2", "m3"]
        model = next(m for r in replicas for m in r["models"] if m["model_id"] == "m1")
        assert (model["state"], model["in_use"], model["pinned"]) == ("loaded", 0, False)
        assert model["idle_s"] >= 0 and model["load_s"] >= 0.05

        # The text: applications, deployments, replicas, and under each its models.
        text = cli(tmp_path, "status", *address, **token)
        assert text.returncode == 0, text.stderr
        node, *lines = text.stdout.splitlines()
        assert node.startswith("node  CPU ") and " free  GPU " in node  # the local backend's
        print(f"\nmodelplex status ({time.perf_counter() - started:.2f}s to the first full document):")
        print(text.stdout)
        assert lines[0] == "default  RUNNING  route /  ingress Models"
        assert lines[1].startswith("  Models  HEALTHY  replicas 2/2  ongoing 0  queued 0")
        assert "hit rate 25%" in lines[1] and "load p50 " in lines[1]
        assert lines[2].split() == ["REPLICA", "STATE", "NODE", "PID", "ONGOING", "QUEUED"]
        holding = sum(bool(r["models"]) for r in replicas)
        assert sum(line.split()[:1] == ["MODEL"] for line in lines) == holding
        assert any(line.split()[:2] == ["m1", "loaded"] for line in lines)

        # --watch redraws in place until Ctrl-C.
        watch = subprocess.Popen(
            [sys.executable, "-m", "modelplex._driver.cli", "status", "--watch", *address],
            cwd=tmp_path, env=_env(**token), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        time.sleep(2.6)
        watch.send_signal(signal.SIGINT)
        out, err = watch.communicate(timeout=30)
        assert watch.returncode == 0, err
        assert out.startswith(b"\x1b[2J\x1b[H") and out.count(b"\x1b[H") >= 2
        assert out.count(b"default  RUNNING") == out.count(b"\x1b[H")

        # The token: the command says what is wrong in one line; the routes answer 401.
        refused = cli(tmp_path, "status", *address)
        assert (refused.returncode, refused.stdout) == (1, "")
        assert refused.stderr.count("\n") == 1 and "Bearer" in refused.stderr, refused.stderr
        for route in ("/-/status", "/-/dashboard", "/-/events"):
            assert requests.get(f"{url}/-/{route[3:]}", timeout=10).status_code == 401
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert requests.get(f"{url}/-/status", headers=auth, timeout=10).json()["applications"]
        # A browser brings the token once in the address; the page keeps it in a cookie.
        with requests.Session() as browser:
            page = browser.get(f"{url}/-/dashboard?token={TOKEN}", timeout=10)
            assert page.status_code == 200 and "EventSource" in page.text
            cookie = page.headers["set-cookie"]
            assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/-/" in cookie
            with browser.get(f"{url}/-/events", stream=True, timeout=10) as events:
                assert events.headers["content-type"] == "text/event-stream"
                first = next(line for line in events.iter_lines() if line)
                assert json.loads(first[len(b"data: "):])["status"]["applications"]["default"]
            # The cookie never authorizes a change: deploys and model management need the header.
            assert browser.get(f"{url}/-/applications", timeout=10).status_code == 401
            assert browser.post(f"{url}/-/models/unload", json={"model_id": "m1"},
                                timeout=10).status_code == 401
        assert requests.get(f"{url}/-/status?token=wrong", timeout=10).status_code == 401
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        finally:
            proc.kill()


def test_status_says_what_is_in_flight_every_load_and_the_requests_latencies(serve_instance):
    """Through ``/-/status``: ongoing is what runs now (status probes are not requests), loads
    are counted from the replicas' own events, request latencies are apart from load times, and
    requests without a model id are neither hits nor misses."""
    import concurrent.futures

    import modelplex as serve

    @serve.deployment(num_replicas=2, max_ongoing_requests=8)
    class Timed:
        @serve.multiplexed(max_num_models_per_replica=2)
        async def get_model(self, model_id: str) -> str:
            await asyncio.sleep(0.3)
            return model_id

        async def __call__(self, request) -> str:
            model_id = serve.get_multiplexed_model_id()
            if model_id:
                await self.get_model(model_id)
            await asyncio.sleep(float(request.query_params.get("hold", "0.05")))
            return model_id or "none"

    serve.run(Timed.bind())
    url = serve_instance.url

    def status() -> dict:
        doc = requests.get(f"{url}/-/status", timeout=10).json()
        return doc["applications"]["default"]["deployments"]["Timed"]

    def get(model: str | None, **params: str) -> str:
        headers = {"serve_multiplexed_model_id": model} if model else {}
        r = requests.get(url, headers=headers, params=params, timeout=30)
        assert r.status_code == 200, r.text
        return r.text

    for _ in range(5):  # one miss, four hits
        assert get("a") == "a"
    for _ in range(5):
        assert get(None) == "none"
    with concurrent.futures.ThreadPoolExecutor(6) as pool:  # 6 new ids on 2 x 2 slots at once
        assert sorted(pool.map(get, [f"m{i}" for i in range(6)])) == [f"m{i}" for i in range(6)]
    deployment = wait_until(lambda: (lambda d: d if d["requests"] >= 16 else None)(status()),
                            timeout=10, message="the routers' reports never arrived")
    assert deployment["loads"] == 7  # a, m0..m5: every load, the evicted ones included
    assert deployment["hit_rate"] == round(4 / 11, 4)  # the 5 without a model id left out
    assert 0.29 <= deployment["load_p50_s"] < 0.6
    assert 0.04 <= deployment["latency_p50_s"] < 0.2  # the requests', not the loads'
    assert deployment["latency_p99_s"] >= 0.3  # the cold ones waited for their load
    assert deployment["ongoing"] == 0 and all(r["ongoing"] == 0 for r in deployment["replicas"])

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        held = pool.submit(get, "a", hold="2")
        busy = wait_until(lambda: (lambda d: d if d["ongoing"] == 1 else None)(status()),
                          timeout=5, message="the request in flight was never seen")
        assert sum(r["ongoing"] for r in busy["replicas"]) == 1
        assert held.result() == "a"
    assert status()["ongoing"] == 0  # at once: each replica's own count, not a report's
