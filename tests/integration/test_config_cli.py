"""Config files and a long-running instance, through the real ``modelplex`` command and HTTP:
build, run, start, deploy, status, shutdown."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading

import requests
import yaml

from ..conftest import ROOT, free_port, pid_alive, wait_until

APP = """
    import os
    import modelplex as serve

    @serve.deployment
    class Echo:
        def __init__(self, version="1"):
            self.version = version

        @serve.multiplexed(max_num_models_per_replica=2)
        async def get_model(self, model_id):
            return model_id

        async def __call__(self, request):
            return {"version": self.version, "pid": os.getpid()}

    app = Echo.bind()

    def builder(args):
        return Echo.bind(str(args["version"]))
"""

TOKEN = "test-token-1"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MODELPLEX_MANAGEMENT_TOKEN"}
    return {**env, "PYTHONPATH": ROOT, **extra}


def cli(cwd, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "modelplex._driver.cli", *args],
        cwd=cwd, env=_env(**env), capture_output=True, text=True, timeout=120,
    )


def serve_cli(cwd, *args: str, **env: str) -> tuple[subprocess.Popen, str]:
    """``modelplex run|start ...`` until it says where it serves; the caller stops it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelplex._driver.cli", *args],
        cwd=cwd, env=_env(**env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("modelplex: serving ") and " on http" in line:
            # keep draining its output so that it never blocks on a full pipe
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            return proc, line.rsplit(" on ", 1)[1].strip()
    proc.kill()
    proc.wait()
    raise AssertionError("the CLI never said it was serving:\n" + "".join(lines))


def write_config(path, port: int, apps: list[dict]) -> str:
    path.write_text(yaml.safe_dump({
        "http_options": {"port": port},
        "logging_config": {"enable_access_log": False},
        "applications": apps,
    }))
    return str(path)


def pids(url: str, count: int) -> set[int]:
    """The pids of the ``count`` replicas behind ``url`` (it answers with its pid)."""
    seen: set[int] = set()

    def all_seen() -> bool:
        r = requests.get(url, timeout=10)
        r.raise_for_status()
        seen.add(r.json()["pid"])
        return len(seen) >= count

    wait_until(all_seen, timeout=30, interval=0, message=f"{url}: saw only {seen}")
    return seen


def test_build_writes_a_config_that_run_serves(tmp_path):
    (tmp_path / "cfg_app.py").write_text(textwrap.dedent(APP))
    built = cli(tmp_path, "build", "cfg_app:app", "-o", "serve.yaml")
    assert built.returncode == 0, built.stderr
    config = yaml.safe_load((tmp_path / "serve.yaml").read_text())
    assert config["applications"] == [{
        "name": "app1", "route_prefix": "/", "import_path": "cfg_app:app", "args": {},
        "deployments": [{"name": "Echo", "num_replicas": 1, "max_ongoing_requests": 5,
                         "max_queued_requests": -1, "max_num_models_per_replica": 2}],
    }]
    # The node's inventory from the file, where the command line does not say otherwise.
    config["node_resources"] = {"num_gpus": 2, "resources": {"accel": 1}}
    (tmp_path / "serve.yaml").write_text(yaml.safe_dump(config))
    port = free_port()
    proc, url = serve_cli(tmp_path, "run", "serve.yaml", "--port", str(port), "--num-gpus", "3")
    try:
        assert url == f"http://127.0.0.1:{port}"
        r = requests.get(url, headers={"serve_multiplexed_model_id": "m"}, timeout=30)
        assert r.json()["version"] == "1"
        total = requests.get(f"{url}/-/status", timeout=10).json()["resources"]["total"]
        assert (total["GPU"], total["accel"]) == (3.0, 1.0)
        status = requests.get(f"{url}/-/applications", timeout=10).json()
        assert status["applications"]["app1"]["import_path"] == "cfg_app:app"
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
    # A bad file: every problem, one line each, exit 1, nothing started.
    (tmp_path / "bad.yaml").write_text(
        "applications:\n- import_path: cfg_app:app\n  deployments:\n  - name: Echo\n"
        "    num_replicas: many\n    max_num_models_per_replica: 0\n"
    )
    bad = cli(tmp_path, "run", "bad.yaml", "--port", str(port))
    assert (bad.returncode, bad.stdout) == (1, "")
    tenants = APP.replace("@serve.deployment", "@serve.deployment(fairness='fifo', "
                          "model_weights={'gold': 4}, max_queued_requests_per_model=5)")
    (tmp_path / "tenant_app.py").write_text(textwrap.dedent(tenants))
    built = cli(tmp_path, "build", "tenant_app:app")
    assert built.returncode == 0, built.stderr
    [entry] = yaml.safe_load(built.stdout)["applications"][0]["deployments"]
    assert {k: entry[k] for k in ("fairness", "model_weights", "max_queued_requests_per_model")} == {
        "fairness": "fifo", "model_weights": {"gold": 4.0}, "max_queued_requests_per_model": 5}
    assert "max_ongoing_requests_per_model" not in entry  # a default is not written
    assert bad.stderr.splitlines() == [
        "modelplex: bad.yaml: applications[0].deployments[0].num_replicas: must be an int >= 1 "
        "or 'auto', got 'many'",
        "modelplex: bad.yaml: applications[0].deployments[0].max_num_models_per_replica: "
        "must be >= 1 or -1 (unbounded), got 0",
    ]


def test_start_deploy_update_and_shutdown(tmp_path):
    (tmp_path / "cfg_app.py").write_text(textwrap.dedent(APP))
    port = free_port()
    token = {"MODELPLEX_MANAGEMENT_TOKEN": TOKEN}
    proc, url = serve_cli(tmp_path, "start", "--port", str(port), **token)
    address = ("--address", url)
    stable = {"name": "stable", "route_prefix": "/stable", "import_path": "cfg_app:app"}
    rolled = {"name": "rolled", "route_prefix": "/rolled", "import_path": "cfg_app:builder",
              "args": {"version": 1}, "deployments": [{"name": "Echo", "num_replicas": 2}]}
    try:
        # Nothing runs yet; the instance API needs the token.
        assert requests.get(f"{url}/-/applications", timeout=10).status_code == 401
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert requests.get(f"{url}/-/applications", headers=auth, timeout=10).json() == {
            "applications": {}
        }
        v1 = write_config(tmp_path / "v1.yaml", port, [stable, rolled])
        assert cli(tmp_path, "deploy", v1, *address).returncode == 1  # no token: refused
        deployed = cli(tmp_path, "deploy", v1, *address, **token)
        assert deployed.returncode == 0, deployed.stderr
        assert "application 'rolled' deployed" in deployed.stdout
        stable_pids = pids(f"{url}/stable", 1)
        rolled_pids = pids(f"{url}/rolled", 2)

        # A bad config over HTTP: 400 naming the path, and nothing changed.
        bad = {"applications": [stable, {**rolled, "deployments": [
            {"name": "Echo", "autoscaling_config": {"min_replicas": 2, "max_replicas": 1}}]}]}
        r = requests.put(f"{url}/-/applications", json=bad, headers=auth, timeout=30)
        assert (r.status_code, r.text) == (
            400, "applications[1].deployments[0].autoscaling_config.max_replicas: "
                 "must be >= min_replicas (2), got 1",
        )

        # New code for one application under steady load: every request succeeds.
        results: list[object] = []
        done = threading.Event()

        def load() -> None:
            with requests.Session() as session:
                while not done.is_set():
                    try:
                        r = session.get(f"{url}/rolled", timeout=30)
                        results.append(r.json()["version"] if r.status_code == 200 else r.status_code)
                    except Exception as exc:  # counted, not raised: the thread must go on
                        results.append(repr(exc))

        client = threading.Thread(target=load)
        client.start()
        try:
            wait_until(lambda: len(results) > 20)
            v2 = write_config(tmp_path / "v2.yaml", port, [stable, {**rolled, "args": {"version": 2}}])
            deployed = cli(tmp_path, "deploy", v2, *address, **token)
            after = len(results)
            wait_until(lambda: len(results) > after + 20)
        finally:
            done.set()
            client.join(timeout=30)
        assert deployed.returncode == 0, deployed.stderr
        assert deployed.stdout.splitlines() == [
            "modelplex: application 'stable' unchanged",
            "modelplex: application 'rolled' deployed",
        ]
        failures = [x for x in results if x not in ("1", "2")]
        assert failures == [], failures[:5]
        assert "1" in results[:after] and set(results[after:]) == {"2"}
        assert pids(f"{url}/stable", 1) == stable_pids  # untouched
        new_pids = pids(f"{url}/rolled", 2)
        assert not new_pids & rolled_pids  # rolled out: new replicas
        wait_until(lambda: not any(pid_alive(p) for p in rolled_pids))

        # A count changes in place; an application the config drops is deleted.
        v3 = write_config(tmp_path / "v3.yaml", port, [{
            **rolled, "args": {"version": 2},
            "deployments": [{"name": "Echo", "num_replicas": 3, "max_num_models_per_replica": 5,
                             "model_weights": {"gold": 4}, "max_queued_requests_per_model": 10}],
        }])
        deployed = cli(tmp_path, "deploy", v3, *address, **token)
        assert deployed.returncode == 0, deployed.stderr
        assert deployed.stdout.splitlines() == [
            "modelplex: application 'stable' deleted",
            "modelplex: application 'rolled' updated",
        ]
        assert new_pids < pids(f"{url}/rolled", 3)  # the two kept, one added
        r = requests.post(f"{url}/-/models/weights", headers=auth, timeout=10,
                          json={"app": "rolled", "model_weights": {"gold": 2, "silver": 0.5}})
        assert r.json() == {"model_weights": {"gold": 2.0, "silver": 0.5}}, r.text
        r = requests.post(f"{url}/-/models/weights", headers=auth, timeout=10,
                          json={"app": "rolled", "model_weights": {"gold": -1}})
        assert r.status_code == 400 and "gold" in r.text
        assert requests.get(f"{url}/stable", timeout=10).status_code == 404
        status = cli(tmp_path, "status", "--json", *address, **token)
        deployments = json.loads(status.stdout)["applications"]["rolled"]["deployments"]
        assert list(deployments) == ["Echo"]
        assert [r["state"] for r in deployments["Echo"]["replicas"]] == ["running"] * 3

        stopped = cli(tmp_path, "shutdown", *address, **token)
        assert stopped.returncode == 0, stopped.stderr
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
    wait_until(lambda: not any(pid_alive(p) for p in new_pids | stable_pids), timeout=10)


def test_start_off_loopback_needs_a_token(tmp_path):
    refused = cli(tmp_path, "start", "--host", "0.0.0.0", "--port", str(free_port()))
    assert (refused.returncode, refused.stdout) == (1, "")
    assert refused.stderr == (
        "modelplex: refusing to serve the management API on 0.0.0.0 without a token: set "
        "MODELPLEX_MANAGEMENT_TOKEN (or pass --management-token), or listen on 127.0.0.1\n"
    )


def test_clients_with_nothing_listening_say_so_in_one_line(tmp_path):
    (tmp_path / "c.yaml").write_text("applications: []\n")
    address = f"http://127.0.0.1:{free_port()}"
    for args in (("deploy", "c.yaml"), ("shutdown",), ("status",)):
        done = cli(tmp_path, *args, "--address", address)
        assert (done.returncode, done.stdout) == (1, ""), args
        assert done.stderr.startswith(f"modelplex: nothing answers at {address} ("), done.stderr
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
