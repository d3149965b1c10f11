"""The seed's model composition: Upstream calls a multiplexed Downstream through a handle."""

from __future__ import annotations

import starlette.requests

import modelplex as serve
from modelplex import DeploymentHandle


@serve.deployment
class Downstream:
    def __call__(self):
        return serve.get_multiplexed_model_id()


@serve.deployment
class Upstream:
    def __init__(self, downstream: DeploymentHandle):
        self._h = downstream

    async def __call__(self, request: starlette.requests.Request):
        return await self._h.options(multiplexed_model_id="bar").remote()


app = Upstream.bind(Downstream.bind())

if __name__ == "__main__":
    import requests

    serve.run(app)
    resp = requests.get("http://localhost:8000")
    print(resp.text)
    serve.shutdown()
