"""On a real device (marked ``gpu``; skipped without CUDA): the inventory is detected, and a
replica asking for one GPU sees exactly one, whatever the machine has."""

from __future__ import annotations

import ctypes
import os

import pytest

import modelplex as serve
from modelplex._driver.runtime import current_runtime

from ..conftest import start_on_a_free_port

def _cuda_devices() -> int:
    """Devices CUDA's driver API counts in this process (0 without a driver or a device)."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


@serve.deployment(ray_actor_options={"num_gpus": 1})
class CudaCount:
    def __call__(self, request=None) -> tuple[str, int]:
        return os.environ["CUDA_VISIBLE_DEVICES"], _cuda_devices()


@pytest.mark.gpu
def test_on_a_real_device_a_replica_sees_exactly_one():
    if current_runtime() is not None:
        serve.shutdown()
    devices = _cuda_devices()
    if devices == 0:
        pytest.skip("no CUDA device")
    start_on_a_free_port()  # nothing given: the inventory is detected
    try:
        total = serve.status().resources["total"]["GPU"]
        assert total == devices  # CUDA_VISIBLE_DEVICES when set, else NVML or nvidia-smi
        visible, counted = serve.run(CudaCount.bind(), name="cuda").remote().result(timeout_s=120)
        assert counted == 1 and visible
    finally:
        serve.shutdown()
