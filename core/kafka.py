"""Kafka helpers shared by every client mgeo owns: librdkafka's logging, reachability and topics.

librdkafka logs every failed connection attempt itself (about 20 lines a second against a
broker that is down) and reports the same events to `error_cb`. `client_logging` routes both
through one rate limiter, so a client says once per interval per kind what is wrong, with a
count of what it held back, in the process's own log format.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any, Callable, Iterable, Literal, Mapping

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from mgeo.logs import RateLimitedLog
from mgeo.settings import is_secret


class KafkaUnavailable(RuntimeError):
    """The brokers cannot be reached, or the topic is not there; the message says which."""


class KafkaConfigError(ValueError):
    """librdkafka refuses a client's properties. `key` is the property at fault (None when no
    single one is); `reason` says what is wrong with it and never shows a value."""

    def __init__(self, key: str | None, reason: str):
        super().__init__(f"property {key!r}: {reason}" if key else reason)
        self.key, self.reason = key, reason


_TRANSPORT_KEY = f"error:{KafkaError._TRANSPORT}"


class _LibrdkafkaLog:
    """A stand-in for a `logging.Logger` that confluent-kafka calls as
    `log(level, "%s [%s] %s", facility, client_name, text)`; one line per facility (and
    level) per interval reaches the real logger."""

    def __init__(self, limiter: RateLimitedLog):
        self._limit = limiter

    def log(self, level: int, msg: str, *args: Any) -> None:
        if level <= logging.DEBUG:  # asked for (debug=...): every line, as librdkafka wrote it
            self._limit.logger.log(level, "librdkafka: " + msg, *args)
            return
        fac = str(args[0]) if args else msg
        # A failed connection is also reported to error_cb (_TRANSPORT): one line for both.
        key = _TRANSPORT_KEY if fac == "FAIL" else f"log:{level}:{fac}"
        self._limit(key, level, "librdkafka: " + msg, *args)

    # confluent-kafka only calls log(); these make the object usable where a Logger is expected.
    def isEnabledFor(self, level: int) -> bool:  # noqa: N802 (logging's spelling)
        return self._limit.logger.isEnabledFor(level)


class ClientErrors:
    """librdkafka's `error_cb`: non-fatal errors logged once per error code per interval (the
    client retries them by itself); fatal ones always logged and passed to `on_fatal`. The
    last error is kept (`last`) so a command can name the cause when it gives up."""

    def __init__(self, limiter: RateLimitedLog,
                 on_fatal: Callable[[KafkaError], None] | None = None):
        self._limit = limiter
        self._on_fatal = on_fatal
        self._lock = threading.Lock()
        self.last: KafkaError | None = None
        self.count = 0

    def __call__(self, err: KafkaError) -> None:
        with self._lock:
            self.last = err
            self.count += 1
        if err.fatal():
            self._limit.logger.error("fatal Kafka client error: %s", err.str())
            if self._on_fatal is not None:
                self._on_fatal(err)
            return
        self._limit(f"error:{err.code()}", logging.WARNING,
                    "Kafka client: %s (retrying)", err.str())


def client_logging(name: str = "mgeo.kafka", every: float = 10.0,
                   on_fatal: Callable[[KafkaError], None] | None = None) -> dict[str, Any]:
    """Client-config entries that keep librdkafka's own output readable and bounded.

    Returns ``{"logger": ..., "error_cb": ...}`` to merge into a Producer, Consumer or
    AdminClient config (``Producer({**conf, **client_logging("mgeo.produce")})``):

    - ``logger``: librdkafka's log lines (connection refused, broker down...) go to the
      `logging` logger `name`, at most one line per `every` seconds per librdkafka facility
      and level; the next line of a kind says how many were held back ("(+N more like it)").
      Without it librdkafka writes every line to stderr itself.
    - ``error_cb``: a `ClientErrors`: non-fatal client errors (transport failures, all
      brokers down...) logged the same way, one line per error code per interval; a fatal
      error is always logged and, when given, passed to ``on_fatal(err)`` (e.g. to stop a
      loop). ``conf["error_cb"].last`` is the most recent error, for a final message.

    One dict per client: the limits are per client. Keys the caller sets after merging win.
    """
    limiter = RateLimitedLog(logging.getLogger(name), every)
    return {"logger": _LibrdkafkaLog(limiter), "error_cb": ClientErrors(limiter, on_fatal)}


def _admin(config: dict[str, Any]) -> tuple[AdminClient, ClientErrors]:
    """An admin client for `config` with rate-limited logging, and its error sink."""
    entries = client_logging("mgeo.kafka")
    return AdminClient({**_admin_config(config), **entries}), entries["error_cb"]


def _unreachable(config: dict[str, Any], errors: ClientErrors, timeout: float,
                 exc: BaseException | None = None) -> KafkaUnavailable:
    servers = config.get("bootstrap.servers", "?")
    cause = errors.last.str() if errors.last is not None else (
        exc.args[0].str() if isinstance(exc, KafkaException) and exc.args
        and isinstance(exc.args[0], KafkaError) else str(exc or "no answer"))
    return KafkaUnavailable(f"cannot reach Kafka at {servers} within {timeout:.0f}s ({cause}); "
                            "check --bootstrap-servers and that the brokers are up")


def check_reachable(config: dict[str, Any], timeout: float = 10.0) -> None:
    """Raise `KafkaUnavailable` unless a broker answers a metadata request within `timeout`."""
    admin, errors = _admin(config)
    try:
        admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise _unreachable(config, errors, timeout, exc) from None


def create_topics(config: dict[str, Any], topics: dict[str, int], timeout: float = 30.0,
                  replication_factor: int = 1) -> None:
    """Create `{name: partitions}` topics; ones that already exist are left as they are."""
    admin, errors = _admin(config)
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=n, replication_factor=replication_factor)
         for name, n in topics.items()],
        request_timeout=timeout)
    for name, fut in futures.items():
        try:
            fut.result(timeout)
        except KafkaException as exc:
            err = exc.args[0]
            if err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            if err.code() in (KafkaError._TRANSPORT, KafkaError._TIMED_OUT,
                              KafkaError._ALL_BROKERS_DOWN):
                raise _unreachable(config, errors, timeout, exc) from None
            raise KafkaUnavailable(f"cannot create topic {name!r}: {err.str()}") from None


def partitions_of(config: dict[str, Any], topic: str, timeout: float = 10.0) -> list[int]:
    """The partition ids of `topic`; `KafkaUnavailable` with a clear message when the brokers
    cannot be reached or the topic does not exist."""
    admin, errors = _admin(config)
    try:
        # Every topic's metadata: asking for one topic by name makes brokers that auto-create
        # topics create it, and a typo would become a topic.
        md = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise _unreachable(config, errors, timeout, exc) from None
    t = md.topics.get(topic)
    if t is None or t.error is not None or not t.partitions:
        why = t.error.str() if t is not None and t.error is not None else (
            "it does not exist" if t is None else "no partitions")
        raise KafkaUnavailable(f"topic {topic!r} is not available ({why}); create it first "
                               "(mgeo topics create) or check --bootstrap-servers")
    return sorted(t.partitions)


# Properties an AdminClient refuses (consumer- or producer-only); dropped so one config dict
# can serve every client.
_NOT_ADMIN = {"group.id", "enable.auto.commit", "isolation.level", "auto.offset.reset",
              "enable.partition.eof", "enable.idempotence", "linger.ms", "acks",
              "transactional.id", "transaction.timeout.ms", "queued.max.messages.kbytes",
              "enable.auto.offset.store", "partition.assignment.strategy",
              "session.timeout.ms", "max.poll.interval.ms", "fetch.wait.max.ms",
              "group.instance.id", "group.protocol", "auto.commit.interval.ms"}


# Callbacks of the caller's own client; the admin client gets its own logging (oauth_cb stays).
_CLIENT_CALLBACKS = {"logger", "error_cb", "stats_cb", "throttle_cb", "on_delivery",
                     "on_commit"}


def _admin_config(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in _NOT_ADMIN | _CLIENT_CALLBACKS}


# How librdkafka words a refused property (the property is group `p`), and what to tell the
# user instead: some of its messages quote the value, which may be a secret.
_REFUSALS = [
    (re.compile(r'No such configuration property: "(?P<p>[^"]+)"'),
     "librdkafka has no such property; check its spelling against librdkafka's "
     "CONFIGURATION.md (names are case-sensitive)"),
    (re.compile(r'Invalid value .*for configuration property "(?P<p>[^"]+)"'),
     "librdkafka does not take this value (not shown here); see the values it takes in "
     "librdkafka's CONFIGURATION.md"),
    (re.compile(r'Expected bool value for "(?P<p>[^"]+)"'), "its value must be true or false"),
    (re.compile(r'Configuration property "(?P<p>[^"]+)" value .* is outside allowed range '
                r'(?P<range>\S+)'),
     "its value (not shown here) is outside the allowed range {range}"),
    (re.compile(r'Internal property "(?P<p>[^"]+)" not settable'),
     "it cannot be given as a property (librdkafka sets it through its API)"),
    (re.compile(r"expected (?P<p>\S+) property as a callable"),
     "it takes a callback, which no option can give"),
]
_CLIENTS = {"consumer": Consumer, "producer": Producer}
# Properties that would make a checking client connect to something.
_NO_CONNECT = {"bootstrap.servers", "metadata.broker.list"}


class _Silent:
    """A librdkafka logger that drops every line: a checking client's warnings ("no
    bootstrap.servers") are about the check, not the user's settings."""

    def log(self, *args: Any) -> None:
        pass


def _refusal(config: Mapping[str, Any], role: Literal["consumer", "producer"]) -> str | None:
    """librdkafka's words for why it will not build a `role` client from `config`, or None."""
    conf = {"group.id": "mgeo-config-check", **config} if role == "consumer" else dict(config)
    try:
        client = _CLIENTS[role]({**conf, "logger": _Silent()})
    except KafkaException as exc:
        err = exc.args[0] if exc.args else None
        return err.str() if isinstance(err, KafkaError) else str(exc)
    except (TypeError, ValueError) as exc:
        return str(exc)
    if role == "consumer":
        client.close()
    return None


def check_config(config: Mapping[str, Any], role: Literal["consumer", "producer"],
                 suspects: Iterable[str] = ()) -> None:
    """Raise `KafkaConfigError` unless librdkafka builds a `role` client from `config`.

    The client is built without its brokers, so nothing connects, and closed at once; yet
    librdkafka checks every name, value and combination and loads the certificates named, as
    it will when the command starts. A refusal is pinned on one of `suspects` (the properties
    the user gave): the one librdkafka names, else the one whose removal makes the rest
    acceptable (librdkafka names `acks` as request.required.acks, a clash names either side).
    """
    conf = {k: v for k, v in config.items()
            if isinstance(v, (str, int, float, bool)) and k not in _NO_CONNECT}
    problem = _refusal(conf, role)
    if problem is None:
        return
    problem = re.sub(r"^Failed to create (consumer|producer): ", "", problem.strip())
    key = _culprit(problem, conf, role, [k for k in suspects if k in conf])
    raise KafkaConfigError(key, _reason(problem, key, conf, role))


def _culprit(problem: str, conf: Mapping[str, Any], role: Literal["consumer", "producer"],
             suspects: list[str]) -> str | None:
    """The suspect that librdkafka's `problem` is about: the one it names, else the one whose
    value it quotes ("Unsupported SASL mechanism: X"), else the first whose removal makes the
    rest acceptable; else whatever property it names, if any."""
    named = next((w for w in re.findall(r"[A-Za-z_][\w.]*", problem) if w in conf), None)
    if named in suspects:
        return named
    for key in suspects:
        value = str(conf[key])
        if len(value) > 2 and _token(value).search(problem):
            return key
    for key in suspects:
        if _refusal({k: v for k, v in conf.items() if k != key}, role) is None:
            return key
    return named


def _token(text: str) -> re.Pattern:
    """`text` as a whole word of a message (not part of a longer name or path)."""
    return re.compile(rf"(?<![\w./-]){re.escape(text)}(?![\w./-])")


def _reason(problem: str, key: str | None, conf: Mapping[str, Any], role: str) -> str:
    for pattern, reason in _REFUSALS:
        m = pattern.search(problem)
        if m:
            said = m.group("p")
            alias = f" (librdkafka's {said})" if key and said != key else ""
            return reason.format(**m.groupdict()) + alias
    # Another refusal: librdkafka's own words, with any value of the property at fault or of a
    # secret taken out (they can quote a mechanism, a path, a cipher list...).
    for name, value in conf.items():
        text = str(value)
        if text and (name == key or is_secret(name)):
            problem = _token(text).sub("***", problem)
    return f"the {role} refuses it: {problem}"
