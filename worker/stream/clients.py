"""The worker's Kafka clients: their configuration, and the factories that build them.

The processor receives the factories, so tests can hand it in-memory stand-ins; everything else
about the clients (librdkafka settings chosen for this workload) lives here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

from confluent_kafka import KafkaError

from mgeo.kafka import client_logging
from mgeo.settings import WorkerSettings, redact

log = logging.getLogger("mgeo.worker")


@dataclass(frozen=True)
class Clients:
    """How the processor gets its consumer and producer (each called once, with a config)."""

    consumer: Callable[[dict[str, Any]], Any]
    producer: Callable[[dict[str, Any]], Any]


def kafka_clients() -> Clients:
    from confluent_kafka import Consumer, Producer

    return Clients(consumer=Consumer, producer=Producer)


def consumer_config(s: WorkerSettings, **callbacks: Any) -> dict[str, Any]:
    """The consumer's librdkafka config; `callbacks` are client entries such as `logger`,
    `error_cb` and `stats_cb` (see mgeo.kafka.client_logging)."""
    conf: dict[str, Any] = {
        "group.id": s.group_id,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "max.poll.interval.ms": s.max_poll_interval_ms,
        "isolation.level": "read_committed",
        "enable.partition.eof": False,
        # A GPU host should not hold gigabytes of prefetched messages.
        "queued.max.messages.kbytes": 16384,
        # A fetch on a quiet topic returns after this long at most: a lone request is read at
        # once (librdkafka's default, 500 ms, would be most of its latency).
        "fetch.wait.max.ms": s.fetch_wait_ms,
    }
    if s.group_protocol == "consumer":  # KIP-848: the broker assigns and times out
        conf["group.protocol"] = "consumer"
    else:
        conf["partition.assignment.strategy"] = "cooperative-sticky"
        conf["session.timeout.ms"] = s.session_timeout_ms
    if s.group_instance_id:
        conf["group.instance.id"] = s.group_instance_id
    if s.stats_interval_ms and "stats_cb" in callbacks:
        conf["statistics.interval.ms"] = s.stats_interval_ms
    conf.update({k: v for k, v in callbacks.items() if v is not None})
    conf.update(s.client_config("consumer"))
    return conf


def producer_config(s: WorkerSettings, **callbacks: Any) -> dict[str, Any]:
    conf: dict[str, Any] = {"enable.idempotence": True, "acks": "all", "linger.ms": s.linger_ms}
    if s.delivery == "exactly-once":
        conf["transactional.id"] = s.transactional_id_or_default()
        conf["transaction.timeout.ms"] = s.transaction_timeout_ms
    conf.update({k: v for k, v in callbacks.items() if v is not None})
    conf.update(s.client_config("producer"))
    return conf


def open_clients(s: WorkerSettings, clients: Clients, *,
                 on_fatal: Callable[[KafkaError], None],
                 stats_cb: Callable[[str], None] | None = None) -> tuple[Any, Any]:
    """The worker's consumer and producer, configured by the settings."""
    # One rate limiter for both clients: a broker that is down is one story, told once per
    # interval per kind of error, not once per client.
    logging_conf = client_logging("mgeo.kafka", on_fatal=on_fatal)
    cconf = consumer_config(s, **logging_conf, stats_cb=stats_cb)
    pconf = producer_config(s, **logging_conf)
    log.info("starting: input %s, output %s, dead letters %s, group %s, bootstrap %s, %s",
             s.input_topic, s.output_topic, s.dlq_topic, s.group_id, s.bootstrap_servers,
             s.delivery)
    log.debug("consumer config %s", redact({k: str(v) for k, v in cconf.items()}))
    return clients.consumer(cconf), clients.producer(pconf)


def fatal_line(s: WorkerSettings, err: KafkaError) -> str:
    """The line a worker stops with on a fatal client error (a fenced one says what to do)."""
    hint = ""
    if err.code() == KafkaError._FENCED and s.delivery == "exactly-once":
        hint = (". Another worker uses the same transactional id "
                f"({s.transactional_id_or_default()}): give each worker its own "
                "--transactional-id (e.g. the pod name)")
    return f"fatal Kafka client error: {err.str()}{hint}"
