"""The backend seam: choosing a backend, validating its options, and keeping Ray out of the
rest of the package (``import modelplex`` must not import Ray, and no Ray type leaks)."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

import modelplex as serve
from modelplex._control.backends import ProxyInfo, make_backend
from modelplex._control.backends.local import LocalBackend
from modelplex._driver.cli import main as cli_main
from modelplex._config import ClusterOptions, DeploymentConfig

PACKAGE = pathlib.Path(serve.__file__).parent


def test_import_modelplex_does_not_import_ray():
    code = "import sys, modelplex; assert 'ray' not in sys.modules, 'ray was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_only_the_ray_backend_module_mentions_ray():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "ray.py" and path.parent.name == "backends":
            continue
        for line in path.read_text().splitlines():
            stripped = line.strip()
            if stripped.startswith(("import ray", "from ray")):
                offenders.append(f"{path.relative_to(PACKAGE)}: {stripped}")
    assert offenders == []


def test_default_backend_is_local_processes():
    backend = make_backend(ClusterOptions())
    assert isinstance(backend, LocalBackend)
    assert backend.listen_host == "127.0.0.1"


@pytest.mark.parametrize(
    "kwargs, text",
    [
        ({"cluster": "k8s"}, "'k8s'"),
        ({"cluster": "local", "address": "auto"}, "needs cluster='ray'"),
        ({"cluster": "ray", "address": ""}, "address"),
        ({"proxy_location": "everywhere"}, "'everywhere'"),
    ],
)
def test_cluster_options_are_validated(kwargs, text):
    with pytest.raises(ValueError, match=text):
        ClusterOptions(**kwargs)


def test_start_validates_before_starting_anything():
    with pytest.raises(ValueError, match="'k8s'"):
        serve.start(cluster="k8s")
    from modelplex._driver import runtime as _runtime

    assert _runtime.current_runtime() is None


@pytest.mark.parametrize(
    "options, error, text",
    [
        ({"num_cpu": 1}, ValueError, "'num_cpu'"),
        ({"num_gpus": -1}, ValueError, "num_gpus"),
        ({"memory": "1G"}, ValueError, "memory"),
        ({"resources": ["zone_a"]}, TypeError, "resources"),
        (["num_cpus"], TypeError, "ray_actor_options"),
    ],
)
def test_ray_actor_options_are_validated_when_declared(options, error, text):
    with pytest.raises(error, match=text):
        DeploymentConfig(name="d", ray_actor_options=options)


def test_ray_actor_options_with_ray_serve_keys_are_accepted():
    options = {"num_cpus": 0.5, "num_gpus": 0, "memory": 2**30, "resources": {"zone_a": 1}}
    assert DeploymentConfig(name="d", ray_actor_options=options).ray_actor_options == options


def test_proxy_info_url():
    assert ProxyInfo("n", "127.0.0.1", 8000).url == "http://127.0.0.1:8000"
    assert ProxyInfo("n", "::1", 8000).url == "http://[::1]:8000"


def test_cli_rejects_a_bad_proxy_location(capsys):
    with pytest.raises(SystemExit):
        cli_main(["run", "m:app", "--proxy-location", "nowhere"])
    assert "nowhere" in capsys.readouterr().err


def test_how_a_replica_ended_is_said_plainly():
    from types import SimpleNamespace

    from modelplex._control.replicas import _how_it_ended

    plain = SimpleNamespace(exit_reason=None)
    assert _how_it_ended(plain, 1) == "exited with code 1"
    assert _how_it_ended(plain, -9) == "was killed by SIGKILL"
    assert _how_it_ended(plain, None) == "exited with code None"
    told = SimpleNamespace(exit_reason="ended with its Ray actor (ActorDiedError: node gone)")
    assert _how_it_ended(told, None) == told.exit_reason


def test_driver_logging_keeps_a_level_the_application_set():
    import logging

    from modelplex._obs.logging import configure_driver_logging

    driver = logging.getLogger("modelplex")
    saved = (driver.handlers[:], driver.level, driver.propagate)
    driver.handlers.clear()
    driver.setLevel(logging.WARNING)
    try:
        configure_driver_logging()
        assert driver.level == logging.WARNING
    finally:
        driver.handlers[:] = saved[0]
        driver.setLevel(saved[1])
        driver.propagate = saved[2]


@pytest.mark.parametrize(
    "kwargs, text",
    [
        ({"num_gpus": 1.5}, "num_gpus must be an int"),
        ({"num_cpus": -2}, "num_cpus must be >= 0"),
        ({"resources": {"GPU": 2}}, "use num_cpus and num_gpus"),
    ],
)
def test_start_checks_the_node_inventory_before_starting_anything(kwargs, text):
    with pytest.raises((TypeError, ValueError), match=text):
        serve.start(**kwargs)
    from modelplex._driver import runtime as _runtime

    assert _runtime.current_runtime() is None


def test_the_local_backend_places_on_the_given_inventory(monkeypatch):
    from modelplex._config import NodeResources

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    backend = make_backend(ClusterOptions(), NodeResources(num_cpus=3, num_gpus=2, resources={"a": 1}))
    assert backend.inventory.total() == {"CPU": 3.0, "GPU": 2.0, "a": 1.0}


def test_cli_rejects_resources_that_are_not_a_json_object(capsys):
    with pytest.raises(SystemExit):
        cli_main(["start", "--resources", "accel=2"])
    assert 'must be a JSON object such as {"accel": 2}' in capsys.readouterr().err
