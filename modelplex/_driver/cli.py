"""The ``modelplex`` command.

    modelplex run MODULE:APP | CONFIG.yaml     serve until Ctrl-C (or ``modelplex shutdown``)
    modelplex start [--num-gpus N ...]         an instance with no applications yet
    modelplex build MODULE:APP ... [-o FILE]   write the config for applications
    modelplex deploy CONFIG.yaml               apply a config to a running instance
    modelplex status / shutdown                ask a running instance

``run`` and ``start`` serve the instance API on their HTTP port under ``/-/`` (``_http/routes.py``);
``deploy``, ``status`` and ``shutdown`` are its clients. Every failure the user can fix is
one line (one per problem in a config) and exit status 1, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import ipaddress
import json
import os
import signal
import sys
import threading
import urllib.error
import urllib.request
from typing import Any, Mapping

from .._config import DEFAULT_HTTP_HOST, DEFAULT_HTTP_PORT

TOKEN_ENV = "MODELPLEX_MANAGEMENT_TOKEN"
DEFAULT_ADDRESS = f"http://{DEFAULT_HTTP_HOST}:{DEFAULT_HTTP_PORT}"
# The tenant options `modelplex build` writes when the code sets them.
_TENANT_DEFAULTS = {
    "fairness": "fair", "model_weights": None, "max_ongoing_requests_per_model": -1,
    "max_queued_requests_per_model": -1,
}
_DEPLOY_TIMEOUT_S = 900.0  # a deploy answers once the replicas run; starts may take minutes


class _Fail(Exception):
    """What the user sees: its lines, each prefixed with ``modelplex:``, and exit status 1."""

    def __init__(self, *lines: str) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


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


def _is_config(target: str) -> bool:
    return target.endswith((".yaml", ".yml", ".json")) or (":" not in target and os.path.isfile(target))


def _read_config(path: str):
    from .._errors import ConfigError
    from .._deploy.schema import load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        raise _Fail(*(f"{path}: {e}" if not e.startswith(path) else e for e in exc.errors)) from None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve anywhere


# ---- serving: run and start --------------------------------------------------------------------


def _serve(args: argparse.Namespace, config: Any = None) -> int:
    """Start an instance, deploy what was asked, and serve until a signal or /-/shutdown."""
    import modelplex as serve
    from .._errors import ConfigError
    from .runtime import current_runtime

    http: dict[str, Any] = {}
    grpc: dict[str, Any] | None = None
    proxy_location = args.proxy_location
    if config is not None:
        http = config.http_options.options()
        grpc = config.grpc_options.options()
        proxy_location = proxy_location or {"EveryNode": "every_node"}.get(
            config.proxy_location or "", "head_node"
        )
    for key in ("host", "port"):
        if getattr(args, key) is not None:
            http[key] = getattr(args, key)
    http.setdefault("host", DEFAULT_HTTP_HOST)
    http.setdefault("port", DEFAULT_HTTP_PORT)
    token = args.management_token or os.environ.get(TOKEN_ENV) or None
    if token:
        http["management_token"] = token
    open_api = token is not None or _is_loopback(http["host"])
    if args.command == "start" and not open_api:
        raise _Fail(
            f"refusing to serve the management API on {http['host']} without a token: set "
            f"{TOKEN_ENV} (or pass --management-token), or listen on 127.0.0.1"
        )
    cluster: dict[str, Any] = {}
    if args.ray_address is not None:
        cluster = {"cluster": "ray", "address": args.ray_address}
    node = config.node_resources.options() if config is not None else {}
    for key in ("num_cpus", "num_gpus", "resources"):
        if getattr(args, key) is not None:
            node[key] = getattr(args, key)
    try:
        serve.start(
            http_options=http, grpc_options=grpc, proxy_location=proxy_location or "head_node",
            **cluster, **node,
        )
    except serve.PortInUseError as exc:  # the first thing a new user meets: one line
        if exc.option == "grpc_options":
            raise _Fail(f'gRPC port {exc.port} is in use (set grpc_options: {{port: ...}})') from None
        raise _Fail(f'port {exc.port} is in use (pass --port or http_options={{"port": ...}})') from None
    except (TypeError, ValueError) as exc:  # the node's inventory, say
        raise _Fail(str(exc)) from None
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    runtime = current_runtime()
    assert runtime is not None
    runtime.enable_deploys(stop.set, over_http=open_api)
    try:
        if not open_api:
            print(
                f"modelplex: deploys over HTTP are off: {http['host']} is not loopback and "
                f"{TOKEN_ENV} is not set", flush=True,
            )
        if config is not None:
            try:
                _report(runtime.apply_config(config))
            except ConfigError as exc:
                raise _Fail(*(f"{args.target}: {e}" for e in exc.errors)) from None
            except serve.DeploymentFailedError as exc:
                raise _Fail(str(exc).splitlines()[0]) from None
        elif args.command == "run":
            serve.run(_load(args.target), name=args.name, route_prefix=args.route_prefix)
        what = "an instance" if args.command == "start" else args.target
        for proxy in serve.list_proxies():
            print(f"modelplex: serving {what} on {proxy.url}", flush=True)
        stop.wait()
    finally:
        print("modelplex: shutting down", flush=True)
        serve.shutdown()
    return 0


def _report(result: dict[str, Any]) -> None:
    for key in ("deleted", "unchanged", "updated", "deployed"):
        for name in result.get(key, ()):
            print(f"modelplex: application {name!r} {key}", flush=True)
    for warning in result.get("warnings", ()):
        print(f"modelplex: warning: {warning}", flush=True)


# ---- build ------------------------------------------------------------------------------------


def _build(args: argparse.Namespace) -> int:
    """As ``serve build``: one application per import path, named app1, app2, ...; the
    deployments listed with their options in code, ready to override."""
    import yaml

    from .._user.build import build_app
    from .._deploy.schema import parse_config

    apps = []
    for i, target in enumerate(args.targets, 1):
        app = _load(target)
        name = f"app{i}"
        try:
            specs, _ = build_app(app, name)
        except TypeError as exc:
            raise _Fail(f"{target}: {exc}") from None
        deployments = []
        for spec in specs:
            config = spec.config
            entry: dict[str, Any] = {"name": config.name}
            if config.autoscaling_config is not None:
                entry["num_replicas"] = "auto"
                entry["autoscaling_config"] = _asdict(config.autoscaling_config)
            else:
                entry["num_replicas"] = config.num_replicas
            entry["max_ongoing_requests"] = config.max_ongoing_requests
            entry["max_queued_requests"] = config.max_queued_requests
            for key, default in _TENANT_DEFAULTS.items():
                value = getattr(config, key)
                if value != default:
                    entry[key] = dict(value) if isinstance(value, Mapping) else value
            if config.ray_actor_options:
                entry["ray_actor_options"] = dict(config.ray_actor_options)
            if config.logging_config is not None:
                logs = _asdict(config.logging_config)
                logs["additional_log_standard_attrs"] = list(logs["additional_log_standard_attrs"])
                entry["logging_config"] = logs
            limit = spec.interface.max_models
            if limit is not None:
                entry["max_num_models_per_replica"] = limit
            deployments.append(entry)
        apps.append({
            "name": name,
            "route_prefix": "/" if len(args.targets) == 1 else f"/{name}",
            "import_path": target,
            "args": {},
            "deployments": deployments,
        })
    config = {
        "http_options": {"host": DEFAULT_HTTP_HOST, "port": DEFAULT_HTTP_PORT},
        "logging_config": {"encoding": "TEXT", "log_level": "INFO", "enable_access_log": True},
        "applications": apps,
    }
    parse_config(config)  # what we write, `run` and `deploy` take
    text = "# Written by `modelplex build`. Deploy with: modelplex deploy <this file>\n\n"
    text += yaml.safe_dump(config, sort_keys=False, default_flow_style=False)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
        print(f"modelplex: wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _asdict(value: Any) -> dict[str, Any]:
    import dataclasses

    return {k: v for k, v in dataclasses.asdict(value).items() if v is not None}


# ---- clients: deploy, status, shutdown ----------------------------------------------------------


def _request(args: argparse.Namespace, method: str, path: str, body: Any = None,
             timeout: float = 30.0) -> Any:
    url = args.address.rstrip("/") + path
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    token = args.management_token or os.environ.get(TOKEN_ENV)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        text = exc.read().decode(errors="replace").strip() or exc.reason
        if exc.code == 404 and path.startswith("/-/"):
            text = f"{text} (is this a modelplex instance started with `modelplex start` or `run`?)"
        raise _Fail(*(text.splitlines() or [f"HTTP {exc.code}"])) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise _Fail(f"nothing answers at {args.address} ({reason}); start one with `modelplex start`") from None


def _deploy(args: argparse.Namespace) -> int:
    from .._deploy.schema import config_dict

    config = _read_config(args.config)
    try:
        result = _request(args, "PUT", "/-/applications", config_dict(config), _DEPLOY_TIMEOUT_S)
    except _Fail as exc:
        raise _Fail(*(f"{args.config}: {line}" if line.startswith("applications") else line
                      for line in exc.lines)) from None
    _report(result)
    return 0


def _status(args: argparse.Namespace) -> int:
    """Applications, deployments, replicas and their models (``GET /-/status``); ``--watch``
    redraws about once a second until Ctrl-C."""
    import time

    from .._control.status import render

    if not args.watch:
        doc = _request(args, "GET", "/-/status", timeout=10.0)
        sys.stdout.write(json.dumps(doc, indent=2) + "\n" if args.json else render(doc))
        return 0
    if not args.json:
        sys.stdout.write("\x1b[2J")
    try:
        while True:
            doc = _request(args, "GET", "/-/status", timeout=10.0)
            text = json.dumps(doc) + "\n" if args.json else render(doc)
            if not args.json:  # redraw in place: home, the document, clear what is left
                text = "\x1b[H" + text.replace("\n", "\x1b[K\n") + "\x1b[J"
            sys.stdout.write(text)
            sys.stdout.flush()
            time.sleep(1.0)
    except KeyboardInterrupt:
        return 0


def _shutdown(args: argparse.Namespace) -> int:
    import time

    _request(args, "POST", "/-/shutdown")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # return once it stopped answering
        try:
            urllib.request.urlopen(args.address.rstrip("/") + "/-/healthz", timeout=2).close()
        except (urllib.error.URLError, OSError):
            print(f"modelplex: the instance at {args.address} shut down")
            return 0
        time.sleep(0.1)
    raise _Fail(f"the instance at {args.address} is still answering after 120s")


def _resources(text: str) -> dict[str, float]:
    """``--resources '{"accel": 2}'``: a JSON object of names to amounts."""
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f'must be a JSON object such as {{"accel": 2}}, got {text!r}')
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modelplex")
    commands = parser.add_subparsers(dest="command", required=True)

    def serving(p: argparse.ArgumentParser) -> None:
        p.add_argument("--host", default=None, help=f"default {DEFAULT_HTTP_HOST}, or the config's")
        p.add_argument("--port", type=int, default=None, help=f"default {DEFAULT_HTTP_PORT}, or the config's")
        p.add_argument(
            "--ray-address",
            metavar="ADDRESS",
            help="run replicas on the Ray cluster at ADDRESS (Ray's address: 'auto' joins the "
            "cluster this node belongs to, 'local' starts a new Ray on this machine)",
        )
        p.add_argument("--proxy-location", choices=["head_node", "every_node"], default=None)
        p.add_argument("--num-cpus", type=int, default=None, metavar="N",
                       help="the node's CPUs (default: detected, or the config's node_resources)")
        p.add_argument("--num-gpus", type=int, default=None, metavar="N",
                       help="the node's GPUs (default: CUDA_VISIBLE_DEVICES or the driver's count)")
        p.add_argument("--resources", type=_resources, default=None, metavar="JSON",
                       help='custom resources, as `ray start` takes them: \'{"accel": 2}\'')
        p.add_argument("--management-token", default=None,
                       help=f"bearer token for the /-/ routes (default: ${TOKEN_ENV})")

    run = commands.add_parser("run", help="serve an application or a config until interrupted")
    run.add_argument("target", help="MODULE:APP (e.g. examples.inferencer:entry) or CONFIG.yaml")
    run.add_argument("--name", default="default")
    run.add_argument("--route-prefix", default="/")
    serving(run)
    start = commands.add_parser("start", help="serve an instance with no applications yet")
    serving(start)

    build = commands.add_parser("build", help="write the config file for applications")
    build.add_argument("targets", nargs="+", metavar="MODULE:APP")
    build.add_argument("-o", "--output", help="the YAML file to write (default: stdout)")

    for name, help_text in (
        ("deploy", "apply a config to a running instance"),
        ("status", "show applications, deployments, replicas and their models"),
        ("shutdown", "stop a running instance"),
    ):
        p = commands.add_parser(name, help=help_text)
        if name == "deploy":
            p.add_argument("config", help="CONFIG.yaml")
        if name == "status":
            p.add_argument("--json", action="store_true", help="print the status document as JSON")
            p.add_argument("--watch", action="store_true", help="redraw about once a second")
        p.add_argument("--address", default=DEFAULT_ADDRESS, help=f"default {DEFAULT_ADDRESS}")
        p.add_argument("--management-token", default=None, help=f"default: ${TOKEN_ENV}")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return _serve(args, _read_config(args.target) if _is_config(args.target) else None)
        if args.command == "start":
            return _serve(args)
        return {"build": _build, "deploy": _deploy, "status": _status, "shutdown": _shutdown}[
            args.command
        ](args)
    except _Fail as exc:
        for line in exc.lines:
            print(f"modelplex: {line}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
