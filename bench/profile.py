"""Flame graphs of the no-op request path, under the benchmark's own load.

    python -m bench.profile --gil --tag after                  # this checkout
    python -m bench.profile --gil --tag before --baseline ../old   # another one

Starts modelplex with the no-op deployment (as ``python -m bench`` does), drives it over HTTP
from the client process, and meanwhile samples the driver (controller, proxy, routers) and one
replica with py-spy, writing ``<tag>-driver.svg`` and ``<tag>-replica.svg`` (``--format raw``:
collapsed stacks, to add up per function). ``--gil`` keeps only samples of the thread holding
the GIL: Python's own work, without the time a thread waits for the GIL. py-spy must be
installed (it is in the ``bench`` extra) and allowed to attach to child processes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading

from .client import run_http_client
from .targets import ROOT, Server, Target, descendants


def _pyspy() -> str:
    found = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    if not os.path.exists(found):
        raise SystemExit("py-spy not found: pip install py-spy")
    return found


def _replicas(driver_pid: int) -> list[int]:
    pids = []
    for pid in descendants(driver_pid):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"modelplex._replica" in f.read():
                    pids.append(pid)
        except OSError:
            pass
    return sorted(pids)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0, help="sampled seconds")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "profiles"))
    parser.add_argument("--tag", default="noop")
    parser.add_argument("--format", default="flamegraph", choices=("flamegraph", "raw"),
                        help="raw: collapsed stacks (.txt), for totals per function")
    parser.add_argument("--native", action="store_true", help="C frames too (uvloop, syscalls)")
    parser.add_argument("--gil", action="store_true", help="only threads holding the GIL")
    parser.add_argument("--baseline", metavar="CHECKOUT",
                        help="profile another checkout's modelplex")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    pyspy = _pyspy()
    workdir = tempfile.mkdtemp(prefix="modelplex-profile-")
    app_kwargs = {"replicas": 2, "max_ongoing": 16}
    root = os.path.abspath(args.baseline) if args.baseline else None
    log = os.path.join(workdir, "driver.log")
    with Server(Target("modelplex", root=root), "noop", app_kwargs, log) as server:
        driver = server._proc.pid
        replica = _replicas(driver)[0]
        spies = []

        def record() -> None:
            for name, pid in (("driver", driver), ("replica", replica)):
                ext = "svg" if args.format == "flamegraph" else "txt"
                path = os.path.join(args.out, f"{args.tag}-{name}.{ext}")
                spies.append(subprocess.Popen(
                    [pyspy, "record", "--pid", str(pid), "--rate", str(args.rate),
                     "--duration", str(int(args.seconds)), "--format", args.format,
                     "--output", path, *(["--native"] if args.native else ["--nonblocking"]),
                     *(["--gil"] if args.gil else [])],
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))

        timer = threading.Timer(args.warmup, record)
        timer.start()
        figures = run_http_client({"url": server.url, "concurrency": args.concurrency,
                                   "seconds": args.seconds, "warmup": args.warmup}, ROOT)
        timer.join()
        for spy in spies:
            _, err = spy.communicate()
            if spy.returncode != 0:
                print(f"py-spy failed: {err.strip()[-500:]}", file=sys.stderr)
    print(f"{figures['throughput_rps']} req/s over HTTP while sampled; "
          f"flame graphs in {os.path.relpath(args.out, ROOT)}/{args.tag}-{{driver,replica}}.svg")
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
