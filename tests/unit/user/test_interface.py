"""What ``@serve.deployment`` records of a class (its ``DeploymentInterface``), how it travels
in the specs, and how the replica's side uses it: the admin finds loaders by the recorded
names, and a new cache gets the replica's hooks when it is made."""

from __future__ import annotations

import pickle

import pytest

import modelplex as serve
from modelplex import _context
from modelplex._errors import NoModelLoaderError
from modelplex._replica.admin import Admin
from modelplex._replica.cache import ModelCache
from modelplex._specs import DeploymentInterface, LoaderSpec
from modelplex._user.build import build_app


@serve.deployment
class Multi:
    @serve.multiplexed(max_num_models_per_replica=2)
    async def load_b(self, model_id: str):
        return f"b:{model_id}"

    @serve.multiplexed(max_num_models_per_replica=5)
    async def load_a(self, model_id: str):
        return f"a:{model_id}"

    @serve.batch(max_batch_size=4)
    async def predict(self, items):
        return items

    def plain(self):
        return None


def test_a_class_records_its_loaders_in_dir_order_and_its_batch_methods():
    interface = Multi.interface
    assert interface == DeploymentInterface(
        loaders=(LoaderSpec("load_a", 5), LoaderSpec("load_b", 2)),
        batch_methods=("predict",),
        ingress=False,
    )
    assert interface.max_models == 5  # the first loader's, as a config's default


def test_functions_and_plain_classes_declare_nothing():
    @serve.deployment
    def hello(request):
        return "hi"

    @serve.deployment
    class Plain:
        def __call__(self):
            return None

    assert hello.interface == Plain.interface == DeploymentInterface()
    assert DeploymentInterface().max_models is None


def test_an_ingress_class_says_so():
    from starlette.applications import Starlette

    @serve.deployment
    @serve.ingress(Starlette())
    class App:
        pass

    assert App.interface.ingress and App.interface.loaders == ()


def test_the_record_survives_options_build_and_pickling():
    spec = build_app(Multi.options(num_replicas=2).bind(), "app")[0][0]
    assert spec.interface == Multi.interface
    assert pickle.loads(pickle.dumps(spec.interface)) == Multi.interface


class Host:
    """A replica, as a new cache sees it: hands out hooks and keeps the cache."""

    def __init__(self) -> None:
        self.caches: list[ModelCache] = []
        self.changes = 0

    def new_cache(self, make):
        cache = make(_context.CacheHooks(on_change=self.changed, wanted=lambda: frozenset()))
        self.caches.append(cache)
        return cache

    def changed(self) -> None:
        self.changes += 1


@pytest.fixture
def hosted():
    host = Host()
    before = _context.replica_hooks
    _context.install_replica_hooks(host, None, "app")
    yield host
    _context.replica_hooks = before


async def test_a_new_cache_gets_the_replicas_hooks_when_it_is_made(hosted):
    instance = Multi.func_or_class()
    assert await instance.load_a("m") == "a:m"
    assert len(hosted.caches) == 1 and "m" in hosted.caches[0]
    assert hosted.changes >= 2  # loading, then loaded: told from the first load on


async def test_the_admin_finds_loaders_by_the_recorded_names(hosted):
    instance = Multi.func_or_class()
    admin = Admin("r1", instance, hosted.caches, loaders=(LoaderSpec("load_b", 2),))
    assert await admin.preload("m1")
    assert [s.model_id for s in admin.models()] == ["m1"]  # load_b's cache alone
    assert await instance.load_b("m1") == "b:m1"

    undeclared = Admin("r1", Multi.func_or_class(), [])  # loaders on the class, none recorded
    with pytest.raises(NoModelLoaderError):
        await undeclared.preload("m1")
