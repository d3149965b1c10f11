"""``ray.serve.config``'s names that modelplex has, at the same import path."""

from ._config import AutoscalingConfig, HTTPOptions, gRPCOptions

__all__ = ["AutoscalingConfig", "HTTPOptions", "gRPCOptions"]
