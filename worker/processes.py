"""`mgeo worker --processes N`: N workers in one container, sharing its GPU.

One Python process spends about one core on its Kafka and result work (the interpreter lock
keeps the rest of its threads waiting on that core), while a GPU host gives each GPU 8-16
cores. So the supervisor starts N ordinary `mgeo worker` processes with the same settings, each
a member of the consumer group with its own copy of the model on the same device, and:

- gives each its own identity where Kafka needs one: the transactional id `<id>-<n>`
  (exactly-once) and the static member id `<id>-<n>` (when --group-instance-id is set);
- splits the CPU threads torch may use between them (unless --threads is set);
- serves one /metrics for all of them (their series gain a `process` label), and /healthz and
  /readyz that are good only while every process is;
- forwards SIGTERM/SIGINT (a second signal still means "leave now"), and stops the others when
  one of them exits: the container then restarts whole. Exit code: 0 when every process
  stopped cleanly, else 1.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from mgeo.settings import WorkerSettings
from mgeo.worker.stream.health import HealthServer

log = logging.getLogger("mgeo.worker")


def child_environments(s: WorkerSettings, ports: list[int | None]) -> list[dict[str, str]]:
    """The environment of each child: this process's settings as MGEO_* variables (so flags
    given to the supervisor reach the children too), with each child's own identity."""
    base = dict(os.environ)
    for name, value in s.model_dump(mode="json").items():
        key = f"MGEO_{name.upper()}"
        if value is None:
            base.pop(key, None)
        else:
            base[key] = value if isinstance(value, str) else json.dumps(value)
    base["MGEO_PROCESSES"] = "1"
    if not s.threads:
        base["MGEO_THREADS"] = str(max(1, (os.cpu_count() or 1) // s.processes))
    envs = []
    for n, port in enumerate(ports):
        env = dict(base)
        if s.delivery == "exactly-once":
            env["MGEO_TRANSACTIONAL_ID"] = f"{s.transactional_id_or_default()}-{n}"
        if s.group_instance_id:
            env["MGEO_GROUP_INSTANCE_ID"] = f"{s.group_instance_id}-{n}"
        if port is None:
            env.pop("MGEO_METRICS_PORT", None)
        else:
            env["MGEO_METRICS_PORT"] = str(port)
            env["MGEO_METRICS_HOST"] = "127.0.0.1"  # only the supervisor reads it
        env["MGEO_PROCESS_INDEX"] = str(n)
        envs.append(env)
    return envs


def _die_with_parent() -> None:
    """(In the child, before exec) Linux: get SIGTERM when the supervisor dies, even by
    SIGKILL, so no worker outlives it holding partitions and a GPU."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _fetch(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


class ChildMetrics:
    """A collector that scrapes every child's /metrics and labels its series `process`."""

    def __init__(self, ports: list[int]):
        self.ports = ports

    def collect(self):
        merged: dict[str, Metric] = {}
        for n, port in enumerate(self.ports):
            status, body = _fetch(port, "/metrics")
            if status != 200:
                continue
            for fam in text_string_to_metric_families(body.decode()):
                out = merged.get(fam.name)
                if out is None:
                    out = merged[fam.name] = Metric(fam.name, fam.documentation, fam.type)
                for sample in fam.samples:
                    out.add_sample(sample.name, {**sample.labels, "process": str(n)},
                                   sample.value)
        yield from merged.values()


def run_processes(s: WorkerSettings) -> int:
    n = s.processes
    ports: list[int | None] = [_free_port() for _ in range(n)] if s.metrics_port is not None \
        else [None] * n
    children = [subprocess.Popen([sys.executable, "-m", "mgeo.tools.cli", "worker"], env=env,
                                 preexec_fn=_die_with_parent)
                for env in child_environments(s, ports)]
    log.info("started %d worker processes (pids %s)", n, ", ".join(str(c.pid) for c in children))
    server = None
    if s.metrics_port is not None:
        registry = CollectorRegistry()
        registry.register(ChildMetrics([p for p in ports if p is not None]))

        def live() -> tuple[bool, str]:
            for i, port in enumerate(ports):
                status, body = _fetch(port, "/healthz")
                if status != 200:
                    return False, f"process {i}: {body.decode(errors='replace').strip() or 'down'}"
            return True, "ok"

        def ready() -> bool:
            return all(_fetch(port, "/readyz")[0] == 200 for port in ports)

        server = HealthServer(registry, s.metrics_port, live=live, ready=ready,
                              host=s.metrics_host).start()

    exited = threading.Event()
    signals = {"n": 0}

    def forward(signum, _frame):
        signals["n"] += 1
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)

    def watch(child: subprocess.Popen) -> None:
        child.wait()
        exited.set()

    for child in children:
        threading.Thread(target=watch, args=(child,), daemon=True).start()
    try:
        while any(c.poll() is None for c in children):
            exited.wait(1.0)
            exited.clear()
            gone = [i for i, c in enumerate(children) if c.poll() is not None]
            if gone and not signals["n"]:
                log.error("worker process %d exited (code %s); stopping the others",
                          gone[0], children[gone[0]].returncode)
                signals["n"] = 1
                for child in children:
                    if child.poll() is None:
                        child.send_signal(signal.SIGTERM)
    finally:
        if server is not None:
            server.stop()
    codes = [c.returncode for c in children]
    log.info("worker processes stopped (exit codes %s)", codes)
    return 0 if all(code == 0 for code in codes) else 1
