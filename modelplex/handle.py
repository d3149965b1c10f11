"""``ray.serve.handle``'s names that modelplex has, at the same import path."""

from ._user.handle import DeploymentHandle, DeploymentResponse, DeploymentResponseGenerator

__all__ = ["DeploymentHandle", "DeploymentResponse", "DeploymentResponseGenerator"]
