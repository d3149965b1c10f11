"""The quick-start demo: the seed's multiplexed deployment serving real requests on :8000.

It writes seven model files, serves ``ModelInferencer`` with two replicas of three model slots
each, sends requests for models 1..7 and 1 again (seven models do not fit in six slots: watch
the ``Loading model`` and ``Unloading model`` lines) and keeps serving until Ctrl-C. ``--once``
stops after the scripted requests.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading

import requests

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import modelplex as serve  # noqa: E402
from inferencer import ModelInferencer  # noqa: E402
from make_models import make_models  # noqa: E402


MODELS = 7  # more than the 2 replicas x 3 slots (max_num_models_per_replica) hold


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--once", action="store_true", help="exit after the scripted requests")
    args = parser.parse_args()

    root = make_models(tempfile.mkdtemp(prefix="modelplex-models-"), count=MODELS)
    try:
        serve_demo(root, args)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def serve_demo(root, args) -> None:
    serve.start(http_options={"port": args.port})
    app = ModelInferencer.options(num_replicas=2).bind(str(root))
    serve.run(app)
    url = f"http://127.0.0.1:{args.port}/"
    for model_id in [*map(str, range(1, MODELS + 1)), "1"]:
        resp = requests.get(url, headers={"serve_multiplexed_model_id": model_id}, timeout=30)
        print(f"model {model_id}: HTTP {resp.status_code} {resp.text}", flush=True)
    if args.once:
        serve.shutdown()
        return
    print(
        f"\nServing on {url}. Try:\n"
        f"  curl -H 'serve_multiplexed_model_id: 3' {url}\n"
        "Press Ctrl-C to stop.",
        flush=True,
    )
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()


if __name__ == "__main__":
    main()
