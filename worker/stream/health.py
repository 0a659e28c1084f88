"""/metrics, /healthz and /readyz of a worker, on one HTTP port.

GET /metrics  Prometheus exposition.
GET /healthz  liveness: 200 while the Kafka loop keeps ticking and reading, 503 once it has not
              ticked for `liveness_timeout` seconds (a stuck loop, not merely a live
              process), or holds partitions with messages to read that it has not read for
              that long though not paused (a stuck consumer: liveness.ReadWatch).
GET /readyz   readiness: 200 once the model is loaded and the loop has joined its group.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger("mgeo.metrics")


def loop_liveness(stats, timeout: float) -> Callable[[], tuple[bool, str]]:
    """Live while the loop whose `Stats` these are ticked within `timeout` seconds and reads
    what it holds."""

    def live() -> tuple[bool, str]:
        idle = time.monotonic() - stats.last_tick
        if idle > timeout:
            return False, f"the Kafka loop has not ticked for {idle:.0f}s"
        stalled = stats.stall_reason
        if stalled:
            return False, stalled
        return True, "ok"

    return live


class _HTTPServerV6(ThreadingHTTPServer):
    address_family = socket.AF_INET6


class HealthServer:
    """The three endpoints on a background thread, on `host` (an IPv4 or IPv6 address)."""

    def __init__(self, registry: CollectorRegistry, port: int, *,
                 live: Callable[[], tuple[bool, str]], ready: Callable[[], bool],
                 host: str = "0.0.0.0"):
        self.registry, self.live, self.ready = registry, live, ready
        server = _HTTPServerV6 if ":" in host else ThreadingHTTPServer
        self.httpd = server((host, port), self._handler())
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="metrics",
                                        daemon=True)

    def start(self) -> "HealthServer":
        self._thread.start()
        log.info("metrics and health on %s port %d (/metrics, /healthz, /readyz)",
                 self.httpd.server_address[0], self.port)
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(server.registry), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    ok, why = server.live()
                    self._send(200 if ok else 503, why.encode() + b"\n")
                elif path == "/readyz":
                    ok = server.ready()
                    self._send(200 if ok else 503, b"ready\n" if ok else b"not ready\n")
                else:
                    self._send(404, b"try /metrics, /healthz or /readyz\n")

            def _send(self, code: int, body: bytes, ctype: str = "text/plain") -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:  # no per-request log spam
                pass

        return Handler
