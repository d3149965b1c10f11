"""The config file's schema: Ray Serve's key names, one line per problem naming its place."""

from __future__ import annotations

import pytest

from modelplex._errors import ConfigError, error_response
from modelplex._deploy.schema import load_config, parse_config


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
        ({"fairness": "lifo"}, "fairness: must be 'fair' or 'fifo', got 'lifo'"),
        ({"model_weights": {"gold": 0}},
         "model_weights: must give each id a finite number > 0, got 0.0 for 'gold'"),
        ({"model_weights": {"gold": "4"}}, "model_weights.gold: must be a number, got '4'"),
        ({"max_ongoing_requests_per_model": 0},
         "max_ongoing_requests_per_model: must be >= 1 or -1 (unbounded), got 0"),
        ({"max_queued_requests_per_model": -2},
         "max_queued_requests_per_model: must be >= 0 or -1 (unbounded), got -2"),
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
        ({**app(), "http_options": {"management_token": "t"}}, "http_options.management_token"),
    ],
)
def test_ray_keys_modelplex_lacks_are_refused_not_ignored(config, path):
    (error,) = errors(config)
    assert error.startswith(f"{path}: not supported yet: ")


def test_grpc_options_are_ray_s_and_checked_by_grpc_options_own_rules():
    config = parse_config({**app(), "grpc_options": {
        "port": 9100, "grpc_servicer_functions": ["my_pb2_grpc.add_MyServicer_to_server"],
    }})
    assert config.grpc_options.options() == {
        "port": 9100, "grpc_servicer_functions": ["my_pb2_grpc.add_MyServicer_to_server"],
        "enable_reflection": True,
    }
    assert parse_config(app()).grpc_options.options()["grpc_servicer_functions"] == []
    (error,) = errors({**app(), "grpc_options": {"grpc_servicer_functions": ["nodots"]}})
    assert error.startswith("grpc_options.grpc_servicer_functions: must hold import paths"), error
    (error,) = errors({**app(), "grpc_options": {"port": 70000}})
    assert error == "grpc_options.port: must be <= 65535, got 70000"


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
    from modelplex._deploy.schema import DeploymentSchema

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


def test_node_resources_are_modelplex_s_own_top_level_key():
    config = parse_config({**app(), "node_resources": {"num_gpus": 4, "resources": {"accel": 2}}})
    assert config.node_resources.options() == {"num_gpus": 4, "resources": {"accel": 2.0}}
    assert parse_config(app()).node_resources.options() == {}
    assert errors({**app(), "node_resources": {"num_gpus": 1.5}}) == [
        "node_resources.num_gpus: must be an int, got 1.5"
    ]
    assert errors({**app(), "node_resources": {"resources": {"CPU": 2}}}) == [
        "node_resources.resources: must not name 'CPU': use num_cpus and num_gpus for those, as in Ray"
    ]


@pytest.mark.parametrize(
    "options, message",
    [
        ({"num_gpus": 1.5}, "num_gpus: must be a whole number when more than 1, got 1.5"),
        ({"resources": {"GPU": 1}}, "resources: must not name 'GPU': use num_cpus and num_gpus"),
    ],
)
def test_ray_s_resource_rules_hold_in_a_file_too(options, message):
    (error,) = errors(app(deployments=[{"name": "A", "ray_actor_options": options}]))
    assert error.startswith(f"applications[0].deployments[0].ray_actor_options.{message}")


def test_tenant_keys_are_deployment_options():
    from modelplex._deploy.schema import DeploymentSchema

    keys = {"fairness": "fifo", "model_weights": {"gold-tenant": 4.0},
            "max_ongoing_requests_per_model": 2, "max_queued_requests_per_model": 10}
    assert DeploymentSchema(name="A", **keys).options() == {"name": "A", **keys}
