"""The gRPC server under the gRPC proxy: grpc's asyncio server on the proxy's own loop.

Every method is registered with the proxy's handler and no response serializer (the replica
serialized it), keeping the service's request deserializer, as Ray's ``gRPCGenericServer``.
The port is bound without ``SO_REUSEPORT``, so a port in use is a ``PortInUseError`` rather
than two servers sharing it; port 0 picks one.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import grpc

from .._config import gRPCOptions
from .._errors import PortInUseError
from .grpc_codes import SERVICE
from .grpc_proxy import GRPCProxy
from .grpc_services import Method, collect

__all__ = ["GRPCServer"]

logger = logging.getLogger("modelplex.proxy")

_STOP_GRACE_S = 5.0


class GRPCServer:
    def __init__(
        self, proxy: GRPCProxy, options: gRPCOptions, host: str, max_message_bytes: int
    ) -> None:
        self._proxy = proxy
        self._options = options
        self._host = host
        self._max_message_bytes = max_message_bytes
        self._server: Any = None
        self.port: int | None = None

    async def start(self) -> None:
        methods = collect(self._options.grpc_servicer_functions)
        server = grpc.aio.server(options=[
            ("grpc.so_reuseport", 0),
            ("grpc.max_send_message_length", self._max_message_bytes),
            ("grpc.max_receive_message_length", self._max_message_bytes),
        ])
        services: dict[str, dict[str, grpc.RpcMethodHandler]] = {
            SERVICE: {
                "ListApplications": grpc.unary_unary_rpc_method_handler(self._proxy.list_applications),
                "Healthz": grpc.unary_unary_rpc_method_handler(self._proxy.healthz),
            }
        }
        for method in methods:
            services.setdefault(method.service, {})[method.name] = self._handler(method)
        for service, handlers in services.items():
            server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
            register = getattr(server, "add_registered_method_handlers", None)
            if register is not None:  # grpcio >= 1.63: found without a lookup per call
                register(service, handlers)
        if self._options.enable_reflection:
            _enable_reflection(server, sorted(set(services) - {SERVICE}))
        host = f"[{self._host}]" if ":" in self._host else self._host
        try:
            port = server.add_insecure_port(f"{host}:{self._options.port}")
        except RuntimeError:
            port = 0
        if not port:
            raise PortInUseError(self._host, self._options.port, "grpc_options")
        await server.start()
        self._server, self.port = server, port
        logger.info("gRPC proxy listening on %s:%d (%s).", self._host, port,
                    ", ".join(sorted(services)))

    def _handler(self, method: Method) -> grpc.RpcMethodHandler:
        if method.request_streaming:
            behaviour = functools.partial(self._proxy.unsupported, method)
            make = (grpc.stream_stream_rpc_method_handler if method.response_streaming
                    else grpc.stream_unary_rpc_method_handler)
            return make(_drain_requests(behaviour))
        if method.response_streaming:
            return grpc.unary_stream_rpc_method_handler(
                functools.partial(self._proxy.server_stream, method),
                request_deserializer=method.request_deserializer,
            )
        return grpc.unary_unary_rpc_method_handler(
            functools.partial(self._proxy.unary, method),
            request_deserializer=method.request_deserializer,
        )

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(_STOP_GRACE_S)
            self._server = None


def _drain_requests(behaviour: Any) -> Any:
    async def handler(request_iterator: Any, context: Any) -> bytes:
        return await behaviour(None, context)

    return handler


def _enable_reflection(server: Any, services: list[str]) -> None:
    """grpc's reflection service, advertising the user's services (as Ray's, without its own
    built-in one, whose descriptors modelplex does not ship)."""
    try:
        from grpc_reflection.v1alpha import reflection
    except ImportError:
        logger.warning(
            "gRPC reflection needs grpcio-reflection (pip install 'modelplex[grpc]'); serving "
            "without it. Set grpc_options.enable_reflection=False to silence this."
        )
        return
    reflection.enable_server_reflection([*services, reflection.SERVICE_NAME], server)
