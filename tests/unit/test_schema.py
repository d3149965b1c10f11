"""The config file's schema: Ray Serve's key names, one line per problem naming its place."""

from __future__ import annotations

import pytest

from modelplex._errors import ConfigError, error_response
from modelplex._schema import load_config, parse_config


def errors(config) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(config)
    return info.value.errors


def app(**fields):
    return {"applications": [{"import_path": "pkg.module:app", **fields}]}


def test_a_ray_serve_config_parses_with_its_own_keys():
    config = parse_config({
        "proxy_location": "EveryNode",
        "http_options": {"host": "0.0.0.0", "port": 8123, "request_timeout_s": 30,
                         "max_body_bytes": 1024},
        "logging_config": {"encoding": "TEXT", "log_level": "DEBUG", "enable_access_log": False},
        "applications": [{
            "name": "app1", "route_prefix": "/a", "import_path": "pkg.module.builder",
            "args": {"model": "x"},
            "deployments": [
                {"name": "A", "num_replicas": "auto", "autoscaling_config": {"max_replicas": 4}},
                {"name": "B", "num_replicas": 2, "max_ongoing_requests": 8,
                 "max_queued_requests": 10, "ray_actor_options": {"num_cpus": 0.5},
                 "max_num_models_per_replica": 4},
            ],
        }],
    })
    (entry,) = config.applications
    assert entry.deployments[0].options() == {
        "name": "A", "num_replicas": "auto", "autoscaling_config": {"max_replicas": 4}
    }
    assert entry.deployments[1].options()["ray_actor_options"] == {"num_cpus": 0.5}
    assert config.http_options.options()["port"] == 8123
    assert config.logging_config.log_level == "DEBUG"


def test_autoscaling_checks_are_config_s_own_at_their_path():
    config = {"applications": [{"import_path": "m:a", "deployments": [
        {"name": "A"},
        {"name": "B", "autoscaling_config": {"min_replicas": 2, "max_replicas": 1}},
    ]}]}
    assert errors(config) == [
        "applications[0].deployments[1].autoscaling_config.max_replicas: "
        "must be >= min_replicas (2), got 1"
    ]


@pytest.mark.parametrize(
    "deployment, message",
    [
        ({"num_replicas": 2.0}, "num_replicas: must be an int >= 1 or 'auto', got 2.0"),
        ({"num_replicas": 0}, "num_replicas: must be >= 1, got 0"),
        ({"max_ongoing_requests": "5"}, "max_ongoing_requests: must be an int, got '5'"),
        ({"max_ongoing_requests": 0}, "max_ongoing_requests: must be >= 1, got 0"),
        ({"max_queued_requests": -2}, "max_queued_requests: must be >= 0 or -1 (unbounded), got -2"),
        ({"num_replicas": 3, "autoscaling_config": {}},
         "num_replicas: must be 'auto' or left out when autoscaling_config is set, got 3"),
        ({"ray_actor_options": {"num_cpus": -1}}, "ray_actor_options.num_cpus: must be >= 0, got -1"),
        ({"max_num_models_per_replica": 0},
         "max_num_models_per_replica: must be >= 1 or -1 (unbounded), got 0"),
        ({"autoscaling_config": {"target_ongoing_requests": 0}},
         "autoscaling_config.target_ongoing_requests: must be > 0, got 0.0"),
    ],
)
def test_bad_deployment_values_name_their_key(deployment, message):
    (error,) = errors(app(deployments=[{"name": "A", **deployment}]))
    assert error.replace(">= 0.0", ">= 0") == f"applications[0].deployments[0].{message}"


def test_unknown_keys_list_what_is_allowed():
    (error,) = errors(app(deployments=[{"name": "A", "num_replica": 2}]))
    assert error.startswith("applications[0].deployments[0].num_replica: unknown key (allowed: ")
    assert "num_replicas" in error and "user_config" in error
    assert errors({**app(), "colour": "red"})[0].startswith("colour: unknown key")


@pytest.mark.parametrize(
    "config, path",
    [
        (app(logging_config={"encoding": "JSON"}), "applications[0].logging_config"),
        ({**app(), "logging_config": {"logs_dir": "/x"}}, "logging_config.logs_dir"),
        (app(runtime_env={"pip": ["torch"]}), "applications[0].runtime_env"),
        ({**app(), "http_options": {"ssl_keyfile": "k"}}, "http_options.ssl_keyfile"),
        ({**app(), "grpc_options": {"port": 9000}}, "grpc_options"),
        ({**app(), "http_options": {"management_token": "t"}}, "http_options.management_token"),
    ],
)
def test_ray_keys_modelplex_lacks_are_refused_not_ignored(config, path):
    (error,) = errors(config)
    assert error.startswith(f"{path}: not supported yet: ")


def test_every_problem_is_reported_on_its_own_line():
    found = errors({
        "http_options": {"port": 70000},
        "logging_config": {"log_level": "LOUD"},
        "applications": [
            {"import_path": "nocolon", "route_prefix": "api/"},
            {"name": "", "import_path": "m:b", "args": []},
        ],
    })
    assert found == [
        "applications[0].route_prefix: must start with '/', got 'api/'",
        "applications[0].import_path: must be 'module:attribute' or 'module.attribute', got 'nocolon'",
        "applications[1].name: must be a non-empty string, got ''",
        "applications[1].args: must be a mapping, got []",
        "http_options.port: must be <= 65535, got 70000",
        "logging_config.log_level: must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL (or its "
        "number), got 'LOUD'",
    ]
    response = error_response(ConfigError(found))
    assert response.status == 400 and response.body.decode().splitlines() == found


def test_names_and_route_prefixes_are_unique():
    two = {"applications": [{"import_path": "m:a"}, {"import_path": "m:b", "route_prefix": "/b"}]}
    assert errors(two) == ["applications: two applications have the name 'default'"]
    dup = app(deployments=[{"name": "A"}, {"name": "A"}])
    assert errors(dup) == ["applications[0].deployments: deployment 'A' is listed more than once"]
    assert errors({}) == ["applications: required"]
    assert errors([]) == ["the config must be a mapping with 'applications', got list"]


def test_an_empty_application_list_is_valid():
    assert parse_config({"applications": []}).applications == []


def test_log_level_takes_a_number_too():
    assert parse_config({**app(), "logging_config": {"log_level": 10}}).logging_config.log_level == "DEBUG"


def test_yaml_errors_name_the_file_and_line(tmp_path):
    path = tmp_path / "serve.yaml"
    path.write_text("applications:\n  - import_path: m:a\n   name: x\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    (error,) = info.value.errors
    assert error.startswith(f"{path}: line 3: not valid YAML")
    path.write_text("applications:\n  - import_path: m:a\n    deployments:\n      - name: A\n"
                    "        num_replicas: many\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert info.value.errors == [
        "applications[0].deployments[0].num_replicas: must be an int >= 1 or 'auto', got 'many'"
    ]


def test_lifecycle_keys_are_deployment_options():
    from modelplex._schema import DeploymentSchema

    keys = {
        "user_config": {"threshold": 0.5, "labels": ["a"]},
        "graceful_shutdown_wait_loop_s": 0.5,
        "graceful_shutdown_timeout_s": 5,
        "health_check_period_s": 1,
        "health_check_timeout_s": 2.5,
    }
    assert DeploymentSchema(name="A", **keys).options() == {"name": "A", **keys}
    (error,) = errors(app(deployments=[{"name": "A", "health_check_period_s": -1}]))
    assert error == "applications[0].deployments[0].health_check_period_s: must be > 0, got -1.0"
