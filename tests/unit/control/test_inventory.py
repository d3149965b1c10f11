"""The node's inventory: given values win; else the affinity, CUDA_VISIBLE_DEVICES, NVML,
nvidia-smi, in that order. The environment and the driver are fakes."""

from __future__ import annotations

import pytest

from modelplex._config import NodeResources
from modelplex._control.inventory import _count_smi, _cpu_quota, detect, visible_devices

SMI = (
    "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-1b2c)\n"
    "GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-3d4e)\n"
    "  MIG 1g.10gb Device 0: (UUID: MIG-5f6a)\n"
)


def run(given=NodeResources(), environ=None, **fakes):
    defaults = {"affinity": lambda: 8, "nvml": lambda: None, "smi": lambda: None}
    return detect(given, environ=environ or {}, **{**defaults, **fakes})


def test_cpus_come_from_the_affinity_capped_by_a_cgroup_quota():
    assert run().cpus == 8
    assert run(cpu_quota=lambda: 2.5).cpus == 2  # a container's --cpus=2.5: 2 whole CPUs
    assert run(cpu_quota=lambda: 0.5).cpus == 1
    assert run(NodeResources(num_cpus=3), cpu_quota=lambda: 1).cpus == 3  # given wins


def test_cuda_visible_devices_is_read_first_and_names_the_ids():
    assert run(environ={"CUDA_VISIBLE_DEVICES": "2,3"}, nvml=lambda: 8).gpu_ids == ("2", "3")
    assert run(environ={"CUDA_VISIBLE_DEVICES": ""}, nvml=lambda: 8).gpu_ids == ()
    assert run(environ={"CUDA_VISIBLE_DEVICES": "GPU-1b2c"}).gpu_ids == ("GPU-1b2c",)


def test_without_it_nvml_then_nvidia_smi_then_none():
    assert run(nvml=lambda: 4, smi=lambda: SMI).gpu_ids == ("0", "1", "2", "3")
    assert run(smi=lambda: SMI).gpu_ids == ("0", "1")
    assert run().gpu_ids == ()


def test_given_gpus_win_and_take_the_first_visible_devices():
    assert run(NodeResources(num_gpus=4)).gpu_ids == ("0", "1", "2", "3")  # no GPU needed
    assert run(NodeResources(num_gpus=0), nvml=lambda: 8).gpu_ids == ()
    got = run(NodeResources(num_gpus=1), environ={"CUDA_VISIBLE_DEVICES": "5,6"})
    assert got.gpu_ids == ("5",)
    with pytest.raises(ValueError, match=r"num_gpus=3 but CUDA_VISIBLE_DEVICES='5,6' names 2"):
        run(NodeResources(num_gpus=3), environ={"CUDA_VISIBLE_DEVICES": "5,6"})


def test_custom_resources_are_only_ever_given():
    assert run(NodeResources(resources={"accel": 2})).resources == {"accel": 2.0}
    assert run().resources == {}


@pytest.mark.parametrize(
    "value, ids",
    [("0,1", ("0", "1")), (" 1 , 0 ", ("1", "0")), ("0,-1,1", ("0",)), ("NoDevFiles", ()),
     ("", ())],
)
def test_visible_devices_reads_as_cuda_does(value, ids):
    assert visible_devices(value) == ids


def test_smi_listing_counts_gpus_not_mig_lines():
    assert _count_smi(SMI) == 2 and _count_smi("") == 0 and _count_smi(None) == 0


def test_cgroup_quota(tmp_path):
    path = tmp_path / "cpu.max"
    path.write_text("max 100000\n")
    assert _cpu_quota(str(path)) is None
    path.write_text("250000 100000\n")
    assert _cpu_quota(str(path)) == 2.5
    assert _cpu_quota(str(tmp_path / "absent")) is None


@pytest.mark.parametrize(
    "kwargs, text",
    [
        ({"num_cpus": -1}, "num_cpus must be >= 0"),
        ({"num_gpus": 1.5}, "num_gpus must be an int"),
        ({"resources": {"GPU": 1}}, "use num_cpus and num_gpus"),
        ({"resources": {"accel": "2"}}, r"resources\['accel'\] must be a number"),
        ({"resources": [("accel", 1)]}, "resources must be a dict"),
    ],
)
def test_bad_inventory_values_are_named(kwargs, text):
    with pytest.raises((TypeError, ValueError), match=text):
        NodeResources(**kwargs)
