"""Config deploys: the pure plan, and building an application with a config's overrides."""

from __future__ import annotations

import sys
import textwrap

import pytest

from modelplex._deploy.plan import build, plan, with_overrides
from modelplex._errors import ConfigError
from modelplex._deploy.schema import parse_config


def config(*apps):
    return parse_config({"applications": list(apps)})


def entry(name, import_path="m:app", **fields):
    return {"name": name, "route_prefix": f"/{name}", "import_path": import_path, **fields}


def test_plan_keeps_updates_builds_and_deletes():
    old = config(
        entry("same"), entry("scaled"), entry("recoded"), entry("gone"),
        entry("args", "m:builder", args={"v": 1}),
    )
    deployed = {a.name: a for a in old.applications}
    new = config(
        entry("same"),
        entry("scaled", deployments=[{"name": "M", "num_replicas": 3}]),
        entry("recoded", "m:other_app"),
        entry("args", "m:builder", args={"v": 2}),
        entry("fresh"),
    )
    live = ["same", "scaled", "recoded", "gone", "args", "by_serve_run"]
    steps = plan(deployed, live, new)
    assert steps.keep == ("same",)
    assert steps.update == ("scaled",)
    assert steps.build == ("recoded", "args", "fresh")
    assert steps.delete == ("gone", "by_serve_run")  # declarative: whatever deployed it


def test_plan_builds_an_entry_that_is_no_longer_running():
    old = config(entry("a"))
    steps = plan({"a": old.applications[0]}, [], config(entry("a")))
    assert steps.build == ("a",) and steps.keep == ()


APP = """
    import modelplex as serve

    @serve.deployment(num_replicas=2, autoscaling_config=None)
    class Inner:
        @serve.multiplexed(max_num_models_per_replica=4)
        async def get_model(self, model_id):
            return model_id

    @serve.deployment
    class Outer:
        def __init__(self, inner, greeting="hello"):
            self.greeting = greeting

    app = Outer.bind(Inner.bind())

    def builder(args):
        return Outer.bind(Inner.bind(), args["greeting"])

    not_an_app = 3
"""


@pytest.fixture
def module(tmp_path, monkeypatch):
    name = f"cfg_app_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(APP))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_build_then_override_by_deployment_name(module):
    (app,) = config(entry("a", f"{module}:app", deployments=[
        {"name": "Inner", "autoscaling_config": {"min_replicas": 1, "max_replicas": 3}},
        {"name": "Outer", "max_ongoing_requests": 9},
    ])).applications
    built = build(app, "applications[0]", reload=False)
    assert built.ingress == "Outer"
    assert built.model_limits == {"Inner": 4}
    specs = {s.config.name: s.config for s in with_overrides(built, app, "applications[0]")}
    assert specs["Inner"].autoscaling_config.max_replicas == 3
    assert specs["Outer"].max_ongoing_requests == 9 and specs["Outer"].num_replicas == 1
    # a count in the config ends autoscaling, as Deployment.options does
    (app,) = config(entry("a", f"{module}:app", deployments=[
        {"name": "Inner", "num_replicas": 5}])).applications
    (inner, _) = with_overrides(built, app, "applications[0]")
    assert (inner.config.num_replicas, inner.config.autoscaling_config) == (5, None)


def test_a_builder_takes_the_args(module):
    (app,) = config(entry("a", f"{module}:builder", args={"greeting": "hi"})).applications
    assert build(app, "applications[0]", reload=True).ingress == "Outer"


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"import_path": "no_such_module_here:app"},
         "applications[0].import_path: cannot import 'no_such_module_here': ModuleNotFoundError: "),
        ({"import_path": "{module}:nothing"}, "applications[0].import_path: module '{module}' has no 'nothing'"),
        ({"import_path": "{module}:not_an_app"},
         "applications[0].import_path: {module}:not_an_app must be an application or a builder"),
        ({"import_path": "{module}:app", "args": {"x": 1}},
         "applications[0].args: {module}:app is an application, not a builder function"),
        ({"import_path": "{module}:builder", "args": {}},
         "applications[0].args: the builder {module}:builder raised KeyError: 'greeting'"),
    ],
)
def test_build_errors_name_the_entry(module, fields, message):
    fields = {k: v.format(module=module) if isinstance(v, str) else v for k, v in fields.items()}
    (app,) = config(entry("a", **fields)).applications
    with pytest.raises(ConfigError) as info:
        build(app, "applications[0]", reload=False)
    assert info.value.errors[0].startswith(message.format(module=module))


def test_overrides_of_unknown_deployments_or_loaders_are_refused(module):
    (app,) = config(entry("a", f"{module}:app", deployments=[
        {"name": "Middle"}, {"name": "Outer", "max_num_models_per_replica": 2},
    ])).applications
    with pytest.raises(ConfigError) as info:
        with_overrides(build(app, "applications[3]", reload=False), app, "applications[3]")
    assert info.value.errors == [
        "applications[3].deployments[0].name: application 'a' has no deployment 'Middle' "
        "(it has Inner, Outer)",
        "applications[3].deployments[1].max_num_models_per_replica: deployment 'Outer' has no "
        "@serve.multiplexed loader",
    ]
