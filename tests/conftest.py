import os
import socket
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, timeout: float = 15.0, interval: float = 0.02, message: str = ""):
    """Poll ``predicate`` until it returns a truthy value; fail with ``message`` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(message or f"condition not met within {timeout}s")
        time.sleep(interval)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); treat it as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start_cli(cwd, source: str, *args: str) -> tuple[subprocess.Popen, str]:
    """Write ``source`` as ``cli_app.py`` in ``cwd`` and run ``modelplex run cli_app:app``;
    return the process and the first URL it says it serves on (the caller stops it)."""
    (cwd / "cli_app.py").write_text(source)
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelplex._driver.cli", "run", "cli_app:app", *args],
        cwd=cwd,
        env=dict(os.environ, PYTHONPATH=ROOT),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if "serving cli_app:app on " in line:
            return proc, line.rsplit(" on ", 1)[1].strip()
    proc.kill()
    proc.wait()
    raise AssertionError("the CLI never said it was serving:\n" + "".join(lines))


def start_on_a_free_port(**options) -> SimpleNamespace:
    """``serve.start`` on a port ``free_port`` found. Between finding it and binding it a
    client's connection may take it as its own ephemeral port: then try another."""
    import modelplex as serve

    for attempt in range(5):
        port = free_port()
        try:
            serve.start(http_options={"port": port}, **options)
        except serve.PortInUseError:
            if attempt == 4:
                raise
            continue
        return SimpleNamespace(port=port, url=f"http://127.0.0.1:{port}")


@pytest.fixture(scope="module")
def cluster_options() -> dict:
    """What ``serve.start`` gets besides its ports: the local backend here; Ray in tests/ray."""
    return {}


@pytest.fixture
def serve_instance():
    import modelplex as serve

    yield start_on_a_free_port()
    serve.shutdown()


def pytest_collection_modifyitems(config, items):
    """``gpu`` tests run only where torch sees a CUDA device (torch is imported only if one
    such test was collected: it takes seconds)."""
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu:
        return
    try:
        import torch

        why = None if torch.cuda.is_available() else "needs a CUDA device"
    except ImportError:
        why = "needs torch and a CUDA device"
    if why is not None:
        for item in gpu:
            item.add_marker(pytest.mark.skip(reason=why))
