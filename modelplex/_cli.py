"""``modelplex run module:app``: serve an application until Ctrl-C."""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading

from ._config import DEFAULT_HTTP_HOST, DEFAULT_HTTP_PORT


def _load(target: str):
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise SystemExit(f"modelplex: expected MODULE:APP, got {target!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SystemExit(f"modelplex: cannot import {module_name!r}: {exc}") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise SystemExit(f"modelplex: module {module_name!r} has no {attr!r}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="modelplex")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="serve an application until interrupted")
    run.add_argument("target", help="MODULE:APP, e.g. examples.inferencer:entry")
    run.add_argument("--host", default=DEFAULT_HTTP_HOST)
    run.add_argument("--port", type=int, default=DEFAULT_HTTP_PORT)
    run.add_argument("--name", default="default")
    run.add_argument("--route-prefix", default="/")
    run.add_argument(
        "--ray-address",
        metavar="ADDRESS",
        help="run replicas on the Ray cluster at ADDRESS (Ray's address: 'auto' joins the "
        "cluster this node belongs to, 'local' starts a new Ray on this machine)",
    )
    run.add_argument("--proxy-location", choices=["head_node", "every_node"], default="head_node")
    args = parser.parse_args(argv)

    import modelplex as serve

    app = _load(args.target)
    cluster = {}
    if args.ray_address is not None:
        cluster = {"cluster": "ray", "address": args.ray_address}
    try:
        serve.start(
            http_options={"host": args.host, "port": args.port},
            proxy_location=args.proxy_location,
            **cluster,
        )
    except serve.PortInUseError as exc:  # the first thing a new user meets: one line, no traceback
        print(
            f'modelplex: port {exc.port} is in use (pass --port or http_options={{"port": ...}})',
            file=sys.stderr,
        )
        return 1
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.run(app, name=args.name, route_prefix=args.route_prefix)
        for proxy in serve.list_proxies():
            print(f"modelplex: serving {args.target} on {proxy.url}", flush=True)
        stop.wait()
    finally:
        print("modelplex: shutting down", flush=True)
        serve.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
