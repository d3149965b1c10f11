"""The replica's management operations, dispatched from their reserved method names."""

from __future__ import annotations

import os

import pytest

from modelplex._errors import NoModelLoaderError
from modelplex._replica.admin import Admin
from modelplex._types import AdminOp, CacheLimits, ReplicaProbe


def admin() -> Admin:
    return Admin("r1", object(), [], node="n1", ongoing=lambda: 3)


async def test_each_wire_name_runs_its_operation():
    a = admin()
    assert all(a.handles(op.value) for op in AdminOp)
    assert not a.handles("predict")
    assert await a.run(AdminOp.LIST.value, ()) == []
    # The replica counts requests only (a probe is management): its count is the probe's.
    assert await a.run(AdminOp.PROBE.value, ()) == ReplicaProbe("n1", os.getpid(), 3, ())
    assert await a.run(AdminOp.UNLOAD.value, ("m",)) is False  # no cache held it
    assert await a.run(AdminOp.UNPIN.value, ("m",)) is True
    assert await a.run(AdminOp.CONFIGURE.value, (2, None)) is True
    assert a.limits == CacheLimits(2, None)
    with pytest.raises(NoModelLoaderError):
        await a.run(AdminOp.PRELOAD.value, ("m",))


async def test_an_unknown_reserved_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="unknown management operation '__modelplex_explode__'"):
        await admin().run("__modelplex_explode__", ())
