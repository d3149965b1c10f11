"""The placement policy on one node: fractions pack on one device, whole devices, custom
resources, release, and the words for "not now" and "never"."""

from __future__ import annotations

import pytest

from modelplex._config import DeploymentConfig
from modelplex._control.resources import (
    Assignment,
    Inventory,
    Ledger,
    Request,
    Wait,
    fits_together,
    never_fits,
    request_of,
)

NODE = Inventory(cpus=4, gpu_ids=("0", "1", "2", "3"), resources={"accel": 2})


def place(ledger: Ledger, holder: str, request: Request) -> Assignment:
    got = ledger.fit(request)
    assert isinstance(got, Assignment), got
    ledger.hold(holder, got)
    return got


def test_fractions_pack_on_one_device_before_opening_another():
    ledger = Ledger(NODE)
    half = Request(gpus=0.5)
    ids = [place(ledger, f"r{i}", half).gpu_ids(NODE) for i in range(3)]
    assert ids == [("0",), ("0",), ("1",)]  # two halves share device 0; the third opens 1


def test_a_fraction_goes_where_it_fits_most_tightly():
    ledger = Ledger(NODE)
    place(ledger, "a", Request(gpus=0.75))  # device 0: 0.25 left
    place(ledger, "b", Request(gpus=0.5))  # device 1: 0.5 left
    assert place(ledger, "c", Request(gpus=0.25)).gpu_ids(NODE) == ("0",)
    assert place(ledger, "d", Request(gpus=0.5)).gpu_ids(NODE) == ("1",)


def test_fixed_point_keeps_tenths_exact():
    ledger = Ledger(Inventory(cpus=1, gpu_ids=("0",)))
    for i in range(10):
        place(ledger, f"r{i}", Request(gpus=0.1))  # ten tenths fill one device exactly
    assert ledger.fit(Request(gpus=0.1)) == Wait("0.1 GPU: at most 0 free on one of 1 GPU")


def test_whole_devices_take_free_devices_lowest_first_and_skip_shared_ones():
    ledger = Ledger(NODE)
    place(ledger, "shared", Request(gpus=0.5))  # device 0 is partly used
    got = place(ledger, "two", Request(gpus=2))
    assert got.gpu_ids(NODE) == ("1", "2") and got.assigned() == {"GPU": 2.0}
    assert ledger.fit(Request(gpus=2)) == Wait("2 GPU: 1 of 4 free")


def test_device_ids_are_the_inventory_s_own():
    node = Inventory(cpus=2, gpu_ids=("GPU-aaaa", "5"))
    assert place(Ledger(node), "r", Request(gpus=2)).gpu_ids(node) == ("GPU-aaaa", "5")


def test_custom_resources_and_cpus_are_pools():
    ledger = Ledger(NODE)
    place(ledger, "a", Request(cpus=1.5, resources={"accel": 1}))
    place(ledger, "b", Request(cpus=1.5, resources={"accel": 1}))
    assert ledger.fit(Request(resources={"accel": 1})) == Wait("1 accel: 0 of 2 free")
    assert ledger.fit(Request(cpus=2)) == Wait("2 CPU: 1 of 4 free")
    both = ledger.fit(Request(cpus=2, resources={"accel": 1}))
    assert both == Wait("2 CPU: 1 of 4 free; 1 accel: 0 of 2 free")
    assert ledger.available() == {"CPU": 1.0, "GPU": 4.0, "accel": 0.0}


def test_release_gives_it_back_and_is_idempotent():
    ledger = Ledger(NODE)
    place(ledger, "a", Request(gpus=4))
    assert isinstance(ledger.fit(Request(gpus=1)), Wait)
    ledger.release("a")
    ledger.release("a")
    ledger.release("never-placed")
    assert place(ledger, "b", Request(gpus=4)).gpu_ids(NODE) == ("0", "1", "2", "3")
    with pytest.raises(ValueError, match="already holds"):
        ledger.hold("b", Assignment())


def test_a_fit_can_be_tried_as_if_some_had_let_go():
    ledger = Ledger(NODE)
    for name in ("old1", "old2", "old3", "old4"):
        place(ledger, name, Request(gpus=1))
    assert isinstance(ledger.fit(Request(gpus=1), released=["old2"]), Assignment)


def test_never_fits_names_the_resource_the_request_and_the_total():
    assert str(never_fits(NODE, Request(gpus=5))) == "5 GPU, and the node has 4"
    assert never_fits(NODE, Request(cpus=8)).resource == "CPU"
    assert never_fits(Inventory(cpus=4), Request(gpus=0.5)).total == 0.0
    short = never_fits(NODE, Request(resources={"tpu": 1}))
    assert (short.resource, short.requested, short.total) == ("tpu", 1.0, 0.0)
    assert never_fits(NODE, Request(cpus=4, gpus=4, resources={"accel": 2})) is None


def test_fits_together_finds_the_first_replica_the_empty_node_cannot_hold():
    assert fits_together(NODE, [Request(gpus=2)] * 2) is None
    assert fits_together(NODE, [Request(gpus=2)] * 3) == (2, Wait("2 GPU: 0 of 4 free"))
    assert fits_together(NODE, [Request(gpus=0.5)] * 8) is None


@pytest.mark.parametrize(
    "options, request_",
    [
        (None, Request(0.0, 0.0, {}, 1)),  # the default: reserves nothing, one thread
        ({"num_cpus": 0}, Request(0.0, 0.0, {}, 1)),
        ({"num_cpus": 0.5}, Request(0.5, 0.0, {}, 1)),
        ({"num_cpus": 2.7}, Request(2.7, 0.0, {}, 2)),  # floor, as Ray's OMP_NUM_THREADS
        ({"num_cpus": 4, "num_gpus": 0.25, "resources": {"accel": 1, "zero": 0}},
         Request(4.0, 0.25, {"accel": 1.0}, 4)),
    ],
)
def test_request_of_ray_actor_options(options, request_):
    assert request_of(options) == request_


@pytest.mark.parametrize(
    "options, text",
    [
        ({"num_gpus": 1.5}, "whole number when more than 1, got 1.5"),
        ({"num_gpus": 0.00001}, "0.0001"),
        ({"resources": {"GPU": 1}}, "use num_cpus and num_gpus"),
        ({"resources": {"accel": -1}}, "accel"),
        ({"runtime_env": {"env_vars": {"A": 1}}}, "dict of strings to strings"),
    ],
)
def test_ray_s_resource_rules_are_checked_when_declared(options, text):
    with pytest.raises((TypeError, ValueError), match=text):
        DeploymentConfig(name="d", ray_actor_options=options)


def test_whole_gpus_above_one_are_accepted():
    assert DeploymentConfig(name="d", ray_actor_options={"num_gpus": 2.0}).ray_actor_options
