"""``ray.serve.grpc_util``'s names that modelplex has, at the same import path: the context a
gRPC method gets as its ``grpc_context`` argument."""

from ._replica.grpc_calls import RayServegRPCContext

__all__ = ["RayServegRPCContext"]
