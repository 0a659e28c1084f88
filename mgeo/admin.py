"""Topic administration shared by the demo, the tests and operators' scripts."""

from __future__ import annotations

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic


def create_topics(config: dict[str, str], topics: dict[str, int], timeout: float = 30.0) -> None:
    """Create `{name: partitions}` topics; ones that already exist are left as they are."""
    admin = AdminClient(dict(config))
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=n, replication_factor=1) for name, n in topics.items()],
        request_timeout=timeout)
    for name, fut in futures.items():
        try:
            fut.result(timeout)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise RuntimeError(f"cannot create topic {name!r}: {exc.args[0].str()}") from None


def partitions_of(config: dict[str, str], topic: str, timeout: float = 10.0) -> list[int]:
    """The partition ids of `topic`; a clear error when it does not exist."""
    admin = AdminClient(dict(config))
    md = admin.list_topics(topic, timeout=timeout)
    t = md.topics.get(topic)
    if t is None or t.error is not None or not t.partitions:
        why = t.error.str() if t is not None and t.error is not None else "no partitions"
        raise RuntimeError(f"topic {topic!r} is not available ({why}); create it first or check "
                           "--bootstrap-servers")
    return sorted(t.partitions)
