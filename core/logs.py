"""Logging: plain text for people, one JSON object a line for log shippers."""

from __future__ import annotations

import logging
import sys
import threading
import time

import orjson

_STD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        obj = {"ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"), "level": record.levelname,
               "logger": record.name, "msg": record.getMessage()}
        obj.update({k: v for k, v in record.__dict__.items() if k not in _STD})
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(obj, default=str).decode()


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s",
                                               "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class RateLimitedLog:
    """Logs a repeated event at most once per `every` seconds per key, with a count of the
    lines it held back ("+N more like it"), instead of once per message."""

    def __init__(self, logger: logging.Logger, every: float = 10.0):
        self.logger = logger
        self.every = every
        self._last: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()  # callers include librdkafka's and the loop's threads

    def __call__(self, key: str, level: int, msg: str, *args) -> None:
        now = time.monotonic()
        with self._lock:
            last, count = self._last.get(key, (-self.every, 0))
            if now - last < self.every:
                self._last[key] = (last, count + 1)
                return
            self._last[key] = (now, 0)
        suffix = f" (+{count} more like it)" if count else ""
        self.logger.log(level, msg + suffix, *args)
