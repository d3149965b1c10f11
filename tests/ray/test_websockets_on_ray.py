"""WebSockets again, with replicas as Ray actors: the local tests, imported; only the
``cluster_options`` fixture differs (see conftest.py)."""

from __future__ import annotations

from ..integration.test_websockets import (  # noqa: F401
    test_a_socket_goes_to_a_holder_of_its_model_and_talks_both_ways,
    test_close_codes_cross_both_ways,
    test_the_model_is_in_use_while_the_socket_is_open,
    ws_serve,
)
