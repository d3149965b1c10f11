"""The user's gRPC services, read from ``grpc_options.grpc_servicer_functions``.

Each is a generated ``add_<Service>Servicer_to_server(servicer, server)``. Called here with a
stand-in servicer and a stand-in server, it says which methods the service has, whether each
streams, and how its request messages deserialize; the proxy then serves every method itself
(``grpc_proxy``), sending it to the deployment method of the same name.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Iterable

__all__ = ["Method", "collect", "import_servicer"]


@dataclass(frozen=True)
class Method:
    service: str  # "package.Service"
    name: str  # "Method": the deployment method a call runs
    request_streaming: bool
    response_streaming: bool
    request_deserializer: Callable[[bytes], Any] | None

    @property
    def path(self) -> str:
        return f"/{self.service}/{self.name}"


def import_servicer(path: str) -> Callable:
    """The function at ``module.attr``; errors name the path and what to check."""
    module_name, _, attr = path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            f"{path} can't be imported! Please make sure there are no typos in "
            f"grpc_servicer_functions, and that the generated modules are importable where "
            f"modelplex runs ({exc})."
        ) from exc
    function = getattr(module, attr, None)
    if not callable(function):
        raise ValueError(
            f"{path} is not a callable function! Please make sure the function is imported "
            f"correctly."
        )
    return function


class _AnyServicer:
    """The servicer a generated function reads its methods from: any name is a method. The
    proxy replaces every handler, so these never run."""

    def __getattr__(self, name: str) -> Callable:
        def never(*args: Any) -> None:  # pragma: no cover - replaced before serving
            raise NotImplementedError(name)

        return never


class _Collector:
    """The server a generated function registers on: keeps each service's method handlers."""

    def __init__(self) -> None:
        self.services: dict[str, dict[str, Any]] = {}

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        self.services[service] = dict(handlers)

    def add_generic_rpc_handlers(self, generic_handlers: Iterable[Any]) -> None:
        # Older generated code registers only this; its handler keys are "/service/method".
        for handler in generic_handlers:
            service = handler.service_name()
            if service in self.services:
                continue
            methods = getattr(handler, "_method_handlers", {})
            self.services[service] = {key.rsplit("/", 1)[-1]: h for key, h in methods.items()}


def collect(paths: Iterable[str]) -> list[Method]:
    """Every method of every service the servicer functions at ``paths`` add."""
    collector = _Collector()
    for path in paths:
        import_servicer(path)(_AnyServicer(), collector)
    return [
        Method(service, name, bool(h.request_streaming), bool(h.response_streaming),
               h.request_deserializer)
        for service, handlers in collector.services.items()
        for name, h in handlers.items()
    ]
