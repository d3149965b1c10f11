"""The unit tier runs in the process the integration tier ran in: each unit test starts
without the access-line writer a ``serve.start`` there may have left installed (its lines
would go to that run's console rather than through ``logging``, where ``caplog`` reads)."""

from __future__ import annotations

import pytest

from modelplex._obs import logging as _logging


@pytest.fixture(autouse=True)
def _no_access_writer(monkeypatch):
    monkeypatch.setattr(_logging, "_access", None)
