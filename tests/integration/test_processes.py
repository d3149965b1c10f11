"""Replicas are real processes: they log, and they never outlive the process that started them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest
import requests

from ..conftest import free_port, pid_alive, start_cli, wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _start_driver(script: str, port: int) -> subprocess.Popen:
    """Run ``script`` as ``__main__`` of a fresh Python: classes there travel by value."""
    env = dict(os.environ, PYTHONPATH=ROOT, PORT=str(port))
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


DRIVER = """
    import os, sys, threading
    import modelplex as serve

    @serve.deployment(num_replicas=2)
    class Model:
        @serve.multiplexed(max_num_models_per_replica=1)
        async def get_model(self, model_id):
            return model_id

        async def __call__(self, request):
            return {"model": await self.get_model(serve.get_multiplexed_model_id()),
                    "pid": os.getpid()}

    serve.start(http_options={"port": int(os.environ["PORT"])})
    handle = serve.run(Model.bind())
    print("READY", flush=True)
    threading.Event().wait()
"""


def _read_until_ready(proc: subprocess.Popen) -> list[str]:
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.strip() == "READY":
            return lines
    raise AssertionError("driver exited before it was ready:\n" + "".join(lines))


def test_replicas_exit_when_the_driver_is_killed():
    port = free_port()
    proc = _start_driver(DRIVER, port)
    try:
        _read_until_ready(proc)
        url = f"http://127.0.0.1:{port}/"
        pids = set()
        for model in ["1", "2", "3", "4"]:
            r = requests.get(url, headers={"serve_multiplexed_model_id": model}, timeout=30)
            assert r.json()["model"] == model
            pids.add(r.json()["pid"])
        # Both replicas served (the __main__ class travelled by value) and both are alive.
        wait_until(lambda: all(pid_alive(p) for p in pids))
    finally:
        proc.kill()
        proc.wait()
    wait_until(lambda: not any(pid_alive(p) for p in pids), timeout=10,
               message="replicas outlived their driver")


def test_replica_logs_reach_console_and_file():
    port = free_port()
    proc = _start_driver(DRIVER, port)
    try:
        before = "".join(_read_until_ready(proc))
        url = f"http://127.0.0.1:{port}/"
        for model in ["1", "2"]:  # capacity 1: loading 2 unloads 1 if both hit one replica
            requests.get(url, headers={"serve_multiplexed_model_id": model}, timeout=30)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    output = before + output
    assert "Loading model '1'." in output
    assert "Successfully loaded model '1' in" in output
    line = next(l for l in output.splitlines() if "Loading model '1'." in l)
    # level, date, time, deployment, replica id, request id, route
    fields = line.split()
    assert fields[0] == "INFO" and fields[3] == "default_Model"
    assert fields[4].startswith("default_Model#") and fields[5] != "-" and fields[6] == "/"
    log_dirs = [l.split("logs at ")[-1].strip() for l in output.splitlines() if "logs at " in l]
    assert log_dirs, output
    files = os.listdir(log_dirs[0])
    assert any(f.startswith("replica_default_Model_") for f in files)
    text = "".join(open(os.path.join(log_dirs[0], f)).read() for f in files)
    assert "Loading model '1'." in text


def test_cli_serves_until_interrupted(tmp_path):
    port = free_port()
    source = textwrap.dedent("""
        import modelplex as serve

        @serve.deployment
        class Hello:
            @serve.multiplexed(max_num_models_per_replica=2)
            async def get_model(self, model_id):
                return model_id

            async def __call__(self, request):
                return "hello from " + await self.get_model(serve.get_multiplexed_model_id())

        app = Hello.bind()
    """)
    proc, url = start_cli(tmp_path, source, "--port", str(port))
    try:
        assert url == f"http://127.0.0.1:{port}"
        r = requests.get(url, headers={"serve_multiplexed_model_id": "cli"}, timeout=30)
        assert r.text == "hello from cli"
        # Ctrl-C in a terminal signals the whole foreground group, replicas included: the
        # driver alone handles it, and shuts down in order, unloading the model.
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        rest = proc.stdout.read()
        assert "Unloading model 'cli'." in rest, rest
        assert "crashed" not in rest and "Traceback" not in rest, rest
    finally:
        proc.kill()


def _group_members(pgid: int) -> list[int]:
    """Live processes in process group ``pgid``, read from /proc."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(entry))
    return members


def test_cli_on_a_busy_port_says_so_in_one_line(tmp_path):
    (tmp_path / "cli_app.py").write_text(textwrap.dedent("""
        import modelplex as serve

        @serve.deployment
        class Hello:
            async def __call__(self, request):
                return "hello"

        app = Hello.bind()
    """))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.Popen(
            [sys.executable, "-m", "modelplex._driver.cli", "run", "cli_app:app", "--port", str(port)],
            cwd=tmp_path,
            env=dict(os.environ, PYTHONPATH=ROOT),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group: we can see what it leaves behind
        )
        try:
            out, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
    assert (proc.returncode, out) == (1, ""), (out, err)
    assert err == f'modelplex: port {port} is in use (pass --port or http_options={{"port": ...}})\n'
    assert _group_members(proc.pid) == []


def _children() -> set[int]:
    children: set[int] = set()
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/children") as f:
            children.update(int(pid) for pid in f.read().split())
    return {pid for pid in children if pid_alive(pid)}


def test_start_on_a_busy_port_raises_port_in_use_and_leaves_nothing_running():
    import threading

    import modelplex as serve
    from modelplex._driver import runtime as _runtime

    threads, children = set(threading.enumerate()), _children()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(serve.PortInUseError) as info:
            serve.start(http_options={"port": port})
    error = info.value
    assert isinstance(error, OSError) and isinstance(error, serve.ModelplexError)
    assert (error.port, error.host) == (port, "127.0.0.1")
    assert f"Port {port} " in str(error)
    assert _runtime.current_runtime() is None
    assert set(threading.enumerate()) <= threads  # the driver loop's thread stopped
    assert _children() <= children
    serve.start(http_options={"port": free_port()})  # nothing half-started in the way
    serve.shutdown()


def test_starting_modelplex_prunes_old_log_folders(tmp_path, monkeypatch):
    import tempfile

    import modelplex as serve
    from modelplex._driver import runtime as _runtime

    dead = 4194305  # above the kernel's PID_MAX_LIMIT: never a live process
    root = tmp_path / "modelplex-logs"
    old = {day: f"session_2020-01-0{day}_12-00-00_{dead}" for day in (1, 2, 4)}
    old[3] = f"session_2020-01-03_12-00-00_{os.getpid()}"  # a run still alive
    for name in [*old.values(), "notes"]:
        (root / name).mkdir(parents=True)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("MODELPLEX_LOG_RUNS", "2")
    serve.start(http_options={"port": 0})
    try:
        log_dir = _runtime.current_runtime().log_dir
    finally:
        serve.shutdown()
    assert os.path.dirname(log_dir) == str(root)
    # This run and the newest old one are kept, the live one too; the older two go.
    assert sorted(os.listdir(root)) == sorted([os.path.basename(log_dir), old[4], old[3], "notes"])
