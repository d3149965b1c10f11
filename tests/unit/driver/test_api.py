"""The public surface: exactly the names we mean to export, and validation at the edges."""

from __future__ import annotations

import asyncio
import importlib

import pytest

import modelplex
import modelplex as serve
from modelplex._config import DeploymentConfig, HTTPOptions
from modelplex._model_ids import model_id_from_headers, validate_model_id
from modelplex._user.build import build_app

EXPORTED = {
    "list_artifacts",
    "fetch",
    "StorageUnavailableError",
    "StorageAccessDeniedError",
    "ModelNotFoundError",
    "DiskCacheFullError",
    "ArtifactStatus",
    "Application",
    "ApplicationNotFoundError",
    "ApplicationStatus",
    "BackPressureError",
    "BadRequestError",
    "ClientDisconnectedError",
    "ConfigError",
    "Deployment",
    "DeploymentFailedError",
    "DeploymentHandle",
    "DeploymentNotFoundError",
    "DeploymentResponse",
    "DeploymentResponseGenerator",
    "DeploymentStatus",
    "HTTPOptions",
    "HeadersTooLargeError",
    "InsufficientResourcesError",
    "MethodNotFoundError",
    "MissingModelIdError",
    "ModelCacheClosedError",
    "ModelIdError",
    "ModelLoadBackoffError",
    "ModelLoadTimeoutError",
    "ModelStatus",
    "ModelTooLargeError",
    "ModelplexError",
    "NoModelLoaderError",
    "PayloadTooLargeError",
    "PortInUseError",
    "ProxyInfo",
    "RemoteError",
    "ReplicaDiedError",
    "ReplicaContext",
    "ReplicaStatus",
    "ReplicasNotReadyError",
    "RequestTimeoutError",
    "RouteNotFoundError",
    "ServeStatus",
    "ShuttingDownError",
    "UnauthorizedError",
    "UnserializableArgumentsError",
    "UnserializableResultError",
    "batch",
    "configure_multiplexing",
    "delete",
    "deployment",
    "get_app_handle",
    "get_deployment_handle",
    "get_multiplexed_model_id",
    "get_replica_context",
    "ingress",
    "list_models",
    "list_proxies",
    "multiplexed",
    "pin_model",
    "preload_model",
    "run",
    "set_model_weights",
    "shutdown",
    "start",
    "status",
    "unload_model",
    "unpin_model",
}


# Ray Serve's public modules, at the same paths (``from modelplex.handle import ...``).
MODULES = {
    "config": {"AutoscalingConfig", "HTTPOptions", "gRPCOptions"},
    "grpc_util": {"RayServegRPCContext"},
    "exceptions": {name for name in EXPORTED if name.endswith("Error")},
    "handle": {"DeploymentHandle", "DeploymentResponse", "DeploymentResponseGenerator"},
}


def test_public_names_are_exactly_the_curated_ones():
    assert set(modelplex.__all__) == EXPORTED
    public = {name for name in vars(modelplex) if not name.startswith("_")}
    assert public == EXPORTED | set(MODULES)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_ray_module_paths_export_what_modelplex_has(module):
    mod = importlib.import_module(f"modelplex.{module}")
    assert set(mod.__all__) == MODULES[module]
    assert {n for n in vars(mod) if not n.startswith("_")} == MODULES[module]
    from modelplex._replica import grpc_calls

    for name in MODULES[module]:  # the same objects as at the top level or where they live
        home = next(m for m in (modelplex, modelplex._config, grpc_calls) if hasattr(m, name))
        assert getattr(mod, name) is getattr(home, name)


def test_ray_style_imports():
    from modelplex.config import AutoscalingConfig, HTTPOptions
    from modelplex.exceptions import BackPressureError, ModelplexError
    from modelplex.handle import DeploymentHandle, DeploymentResponse

    assert issubclass(BackPressureError, ModelplexError)
    assert DeploymentHandle is modelplex.DeploymentHandle
    assert DeploymentResponse is modelplex.DeploymentResponse
    assert modelplex.exceptions.BackPressureError is BackPressureError
    config = modelplex.deployment(autoscaling_config=AutoscalingConfig(max_replicas=3))(
        type("Model", (), {})
    ).config
    assert config.autoscaling_config.max_replicas == 3
    assert HTTPOptions(port=1).port == 1


def test_import_does_not_start_anything():
    from modelplex._driver import runtime as _runtime

    assert _runtime.current_runtime() is None


@pytest.mark.parametrize(
    "kwargs, error, text",
    [
        ({"max_num_models_per_replica": "3"}, TypeError, "max_num_models_per_replica"),
        ({"max_num_models_per_replica": 0}, ValueError, "got 0"),
        ({"max_num_models_per_replica": -2}, ValueError, "got -2"),
        ({"max_num_models_per_replica": True}, TypeError, "True"),
        ({"max_memory_bytes": 0}, ValueError, "max_memory_bytes"),
        ({"eviction_policy": "fifo"}, ValueError, "fifo"),
        ({"model_load_timeout_s": 0}, ValueError, "model_load_timeout_s"),
        ({"model_load_timeout_s": float("nan")}, ValueError, "nan"),
        ({"model_load_timeout_s": "5"}, ValueError, "'5'"),
    ],
)
def test_multiplexed_rejects_bad_counts(kwargs, error, text):
    with pytest.raises(error, match=text):
        serve.multiplexed(**kwargs)


def test_multiplexed_rejects_bad_targets():
    with pytest.raises(TypeError, match="must take a model id"):

        @serve.multiplexed
        async def no_id():
            return None

    with pytest.raises(TypeError, match="must take a model id"):

        class C:
            @serve.multiplexed(max_num_models_per_replica=2)
            async def only_self(self):
                return None

    with pytest.raises(TypeError, match="not the class"):

        @serve.multiplexed
        class Loader:
            pass


def test_multiplexed_unbounded_and_function_loader_outside_a_replica():
    loads = []

    @serve.multiplexed(max_num_models_per_replica=-1)
    async def load(model_id):
        loads.append(model_id)
        return f"model {model_id}"

    async def main():
        assert await load("a") == "model a"
        assert await load("a") == "model a"
        with pytest.raises(serve.MissingModelIdError, match="serve_multiplexed_model_id"):
            await load("")

    asyncio.run(main())
    assert loads == ["a"]


def test_multiplexed_method_caches_per_instance():
    class Owner:
        def __init__(self):
            self.loads = 0

        @serve.multiplexed(max_num_models_per_replica=1)
        def get_model(self, model_id):  # a sync loader
            self.loads += 1
            return model_id.upper()

    async def main():
        a, b = Owner(), Owner()
        assert await a.get_model("x") == "X"
        assert await a.get_model("x") == "X"
        assert await b.get_model("x") == "X"
        return a.loads, b.loads

    assert asyncio.run(main()) == (1, 1)


def test_get_multiplexed_model_id_outside_a_request():
    assert serve.get_multiplexed_model_id() == ""


@pytest.mark.parametrize(
    "changes, text",
    [
        ({"num_replicas": 0}, "num_replicas"),
        ({"num_replicas": "2"}, "num_replicas"),
        ({"max_ongoing_requests": 0}, "max_ongoing_requests"),
        ({"max_queued_requests": -5}, "max_queued_requests"),
        ({"graceful_shutdown_timeout_s": 0}, "graceful_shutdown_timeout_s"),
        ({"name": ""}, "name"),
        ({"name": "a#b"}, "name"),
    ],
)
def test_deployment_options_are_validated(changes, text):
    with pytest.raises((TypeError, ValueError), match=text):
        DeploymentConfig(name="d").replace(**changes)


def test_deployment_decorator_forms():
    @serve.deployment
    class A:
        pass

    @serve.deployment(num_replicas=2, name="Bee", max_ongoing_requests=7)
    class B:
        pass

    assert A.name == "A" and A.config.num_replicas == 1
    assert (B.name, B.config.num_replicas, B.config.max_ongoing_requests) == ("Bee", 2, 7)
    assert B.options(num_replicas=3).config.num_replicas == 3
    with pytest.raises(TypeError, match="unknown deployment option"):
        B.options(colour="red")
    with pytest.raises(RuntimeError, match="bind"):
        A()


def test_http_options_validation():
    assert HTTPOptions.from_value({"port": 0}).port == 0
    with pytest.raises(ValueError, match="port"):
        HTTPOptions(port=70000)
    with pytest.raises(TypeError, match="unknown http option"):
        HTTPOptions.from_value({"prot": 1})


def test_build_app_turns_nested_bindings_into_handles():
    @serve.deployment
    class Leaf:
        pass

    @serve.deployment
    class Root:
        def __init__(self, a, b, others):
            pass

    leaf = Leaf.bind()
    specs, ingress = build_app(Root.bind(leaf, Leaf.bind(), others=[leaf]), "app")
    assert ingress == "Root"
    assert sorted(spec.config.name for spec in specs) == ["Leaf", "Leaf_1", "Root"]


@pytest.mark.parametrize(
    "model_id", ["x" * 257, "a\x00b", "tab\there", "new\nline", "\x7f", "\ud800"]
)
def test_bad_model_ids(model_id):
    with pytest.raises(serve.ModelIdError):
        validate_model_id(model_id)


def test_good_model_ids_and_headers():
    assert validate_model_id("x" * 256) == "x" * 256
    assert validate_model_id("customer-42/fine tune ü") == "customer-42/fine tune ü"
    assert model_id_from_headers([(b"serve-multiplexed-model-id", b" 7 ")]) == "7"
    assert model_id_from_headers([(b"other", b"1")]) == ""
    with pytest.raises(serve.ModelIdError, match="UTF-8"):
        model_id_from_headers([(b"serve_multiplexed_model_id", b"\xff")])


def test_lifecycle_options_as_ray_names_and_defaults_them():
    config = DeploymentConfig(name="d")
    assert (config.graceful_shutdown_wait_loop_s, config.graceful_shutdown_timeout_s) == (2.0, 20.0)
    assert config.user_config is None
    mine = {"a": [1, 2]}
    dep = serve.deployment(user_config=mine, graceful_shutdown_wait_loop_s=0.5)(type("M", (), {}))
    mine["a"].append(3)  # the deployment keeps what it was given
    assert dep.config.user_config == {"a": [1, 2]}
    assert dep.options(user_config={"b": 1}).config.user_config == {"b": 1}
    with pytest.raises(ValueError, match="user_config is not JSON-serializable"):
        DeploymentConfig(name="d", user_config={1, 2})
    with pytest.raises(ValueError, match="graceful_shutdown_wait_loop_s must be > 0"):
        DeploymentConfig(name="d", graceful_shutdown_wait_loop_s=0)
