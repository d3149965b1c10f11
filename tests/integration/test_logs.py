"""Logs over real processes: the access line in the terminal of ``modelplex run`` and in the
proxy's file, JSON lines, ``log_level`` and ``enable_access_log`` per deployment, and a client
error logged as one WARNING line."""

from __future__ import annotations

import glob
import json
import os
import re
import signal
import subprocess
import sys
import textwrap

import requests

from modelplex._obs.log_dirs import log_root

from ..conftest import ROOT, free_port, start_cli, wait_until
from .models import make_echo

APP = textwrap.dedent('''
    import modelplex as serve

    @serve.deployment
    class Model:
        @serve.multiplexed(max_num_models_per_replica=2)
        async def get_model(self, model_id):
            return model_id

        async def __call__(self, request):
            return await self.get_model(serve.get_multiplexed_model_id())

    app = Model.bind()
''')


def stop(proc: subprocess.Popen) -> str:
    """SIGTERM, as a terminal's Ctrl-C would; the rest of its output."""
    try:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    return output


def log_dir(proc: subprocess.Popen) -> str:
    """The run's log folder: ``session_<time>_<pid>`` under <tmp>/modelplex-logs."""
    [folder] = glob.glob(os.path.join(log_root(), f"session_*_{proc.pid}"))
    return folder


def get(url: str, model_id: str | None = None) -> requests.Response:
    headers = {"serve_multiplexed_model_id": model_id} if model_id else {}
    return requests.get(url, headers=headers, timeout=30)


def test_access_lines_in_the_terminal_and_the_proxy_file_and_a_client_error_is_one_warning(tmp_path):
    proc, url = start_cli(tmp_path, APP, "--port", str(free_port()))
    try:
        assert get(url, "1").status_code == 200
        assert get(url).status_code == 400
    finally:
        output = stop(proc)
    lines = output.splitlines()
    # INFO <date> <time> <deployment> <replica> <request id> <route> <file:line> - GET / 200 <ms> model_id=1
    access = [l for l in lines if re.search(r" \w+\.py:\d+ - GET / ", l)]
    assert len(access) == 2, output
    ok = access[0].split()
    assert ok[0] == "INFO" and ok[3] == "default_Model" and ok[4].startswith("default_Model#")
    assert ok[6] == "/" and ok[8:11] == ["-", "GET", "/"] and ok[11] == "200"
    assert re.fullmatch(r"\d+\.\dms", ok[12]) and ok[13] == "model_id=1"
    # The replica that served it, and the request id its own lines show.
    loading = next(l for l in lines if "Loading model '1'." in l).split()
    assert loading[4] == ok[4] and loading[5] == ok[5] and re.fullmatch(r"[0-9a-f]{10}", ok[5])
    bad = access[1].split()
    assert bad[11] == "400" and bad[13] == "model_id=-" and bad[4] == ok[4]
    # The 400: one WARNING line, with its request id, and no traceback anywhere.
    failed = [l for l in lines if "Request failed" in l]
    assert len(failed) == 1 and failed[0].startswith("WARNING ") and "MissingModelIdError" in failed[0]
    assert failed[0].split()[5] == bad[5]
    assert "Traceback" not in output
    # The same access lines in the proxy's file, next to the replica's.
    folder = log_dir(proc)
    files = os.listdir(folder)
    assert "proxy.log" in files and any(f.startswith("replica_default_Model_") for f in files)
    proxy_lines = open(os.path.join(folder, "proxy.log")).read().splitlines()
    assert [l.split()[3:] for l in proxy_lines if " - GET / " in l] == [l.split()[3:] for l in access]


CONFIG = """
http_options: {{port: {port}}}
logging_config: {{encoding: JSON, additional_log_standard_attrs: [name]}}
applications:
- {{name: loud, route_prefix: /loud, import_path: cli_app:app}}
- name: quiet
  route_prefix: /quiet
  import_path: cli_app:app
  deployments:
  - {{name: Model, logging_config: {{log_level: WARNING}}}}  # JSON from the top level
- name: silent
  route_prefix: /silent
  import_path: cli_app:app
  deployments:
  - {{name: Model, logging_config: {{enable_access_log: false}}}}
"""


def test_json_logs_log_level_and_access_log_per_deployment(tmp_path):
    (tmp_path / "cli_app.py").write_text(APP)
    port = free_port()
    (tmp_path / "serve.yaml").write_text(CONFIG.format(port=port))
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelplex._driver.cli", "run", "serve.yaml"], cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=ROOT), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )
    head = []
    try:
        for line in proc.stdout:
            head.append(line)
            if line.startswith("modelplex: serving "):
                break
        url = f"http://127.0.0.1:{port}"
        for app in ("loud", "quiet", "silent"):
            assert get(f"{url}/{app}", "1").status_code == 200
            assert get(f"{url}/{app}").status_code == 400
    finally:
        output = "".join(head) + stop(proc)
    records = []
    for line in output.splitlines():
        if line.startswith("modelplex: ") or "Started modelplex" in line:
            continue  # the CLI's own prints, and the line before the config applies
        records.append(json.loads(line))  # every log line in the terminal is one JSON object
    def by_app(app: str) -> list[dict]:  # the replica's lines
        return [r for r in records if r.get("application") == app and r["name"] != "modelplex.access"]

    access = {r["route"]: r for r in records if r.get("name") == "modelplex.access" and r.get("status") == 200}
    loading = next(r for r in by_app("loud") if r["message"] == "Loading model '1'.")
    assert loading["levelname"] == "INFO" and loading["name"] == "modelplex.replica"
    hit = access["/loud"]
    assert hit["message"].startswith("GET /loud 200 ") and hit["model_id"] == "1"
    assert (hit["replica"], hit["request_id"], hit["deployment"]) == (
        loading["replica"], loading["request_id"], "loud_Model"
    )
    # log_level WARNING: the quiet replica's INFO lines are gone, its WARNING stays.
    assert {r["levelname"] for r in by_app("quiet")} == {"WARNING"}, by_app("quiet")
    assert "/quiet" in access
    # enable_access_log: false silences the proxy's line for that application.
    assert "/silent" not in access and any(r.get("route") == "/silent" for r in by_app("silent"))
    # The replicas' files: JSON line by line too.
    folder = log_dir(proc)
    replica_files = [f for f in os.listdir(folder) if f.startswith("replica_")]
    assert len(replica_files) == 3
    for name in replica_files:
        for line in open(os.path.join(folder, name)).read().splitlines():
            assert isinstance(json.loads(line), dict)
    assert any(json.loads(l)["message"] == "Loading model '1'."
               for l in open(os.path.join(folder, f"replica_{loading['replica'].replace('#', '_')}.log")))


def replica_log(deployment: str) -> str:
    from modelplex._driver import runtime as _runtime

    folder = _runtime.current_runtime().log_dir
    return "".join(
        open(os.path.join(folder, f)).read()
        for f in sorted(os.listdir(folder)) if f.startswith(f"replica_default_{deployment}_")
    )


def test_logging_config_in_code_level_and_handle_call_access_lines(serve_instance):
    import modelplex as serve

    Chatty = make_echo(1, name="Chatty", logging_config={"log_level": "INFO"})
    handle = serve.run(Chatty.options(logging_config={"log_level": "WARNING"}).bind())
    assert handle.options(multiplexed_model_id="1").remote().result() == "1"
    assert requests.get(serve_instance.url).status_code == 400
    quiet = replica_log("Chatty")
    assert "Loading model '1'." not in quiet and "CALL __call__" not in quiet
    assert quiet.count("\n") == 1 and quiet.startswith("WARNING ") and "MissingModelIdError" in quiet

    handle = serve.run(Chatty.bind())  # INFO: the handle call's own access line
    assert handle.options(multiplexed_model_id="2").remote().result() == "2"
    def call_line() -> str | None:  # access lines leave within _obs/access_log.ACCESS_FLUSH_S
        return next((l for l in replica_log("Chatty").splitlines() if "CALL __call__" in l), None)

    line = wait_until(call_line, timeout=5, message="the handle call's access line never came")
    assert line.startswith("INFO ") and re.search(r" - CALL __call__ OK \d+\.\dms model_id=2$", line)
