"""A client-side read_committed view of a topic, read straight from the raw log.

Why: Tansu 0.6 (the embedded test broker) keeps no aborted-transaction index, so its Fetch
responses never list aborted transactions and librdkafka read_committed consumers receive the
records of ABORTED transactions (open ones are hidden: its last stable offset works). The log
itself is complete, though: every data batch carries its producerId and isTransactional flag,
and each transaction ends with a control batch whose control record key says ABORT (0) or
COMMIT (1). So this module reads every partition from offset 0 with raw READ_UNCOMMITTED Fetch
requests (which return control batches too) and applies Kafka's read_committed rules itself:

- non-transactional batches are kept;
- transactional batches are held per producerId until that producer's next control marker on
  the partition, then kept on COMMIT and dropped on ABORT;
- nothing at or after the first offset of a transaction that is still open (no marker yet) is
  returned, like a consumer stopped at the last stable offset (LSO).

Against a real Kafka this gives what a read_committed consumer gets, so tests may use it with
either broker. It uses kafka-python (>= 3.0: the JSON-schema protocol classes) over a plain
blocking socket; kafka-python's own consumer cannot be used because it hides control batches
and producer ids and relies on the broker's aborted-transaction list.
"""

from __future__ import annotations

import socket
import time
import warnings
from dataclasses import dataclass
from typing import Iterable

with warnings.catch_warnings():
    # kafka-python 3.0 loads its protocol schemas with importlib.resources' deprecated
    # read_text/open_text: a hundred DeprecationWarnings in every test run otherwise.
    warnings.simplefilter("ignore", DeprecationWarning)
    import kafka.errors as kerrors
    from kafka.protocol.consumer import FetchRequest
    from kafka.protocol.metadata import ApiVersionsRequest, MetadataRequest
    from kafka.protocol.parser import KafkaProtocol
    from kafka.record import MemoryRecords

__all__ = ["Record", "read_committed_log"]

# Fetch v4 is the first with isolation_level/last_stable_offset; below it a real Kafka
# down-converts to message format v0/v1, which has no producer ids and no control batches.
# Fetch v13+ addresses topics by id instead of name, so stay at or below v12.
_FETCH_VERSIONS = (4, 12)
_METADATA_VERSIONS = (1, 9)  # v1+: leader ids and nullable topic list; v10+: topic ids
_READ_UNCOMMITTED = 0
_CONTROL_ABORT, _CONTROL_COMMIT = 0, 1
_PARTITION_MAX_BYTES = 1 << 20
_RETRY_BACKOFF_S = 0.1


@dataclass(frozen=True)
class Record:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...] = ()  # () when the record has none


class _Deadline:
    def __init__(self, timeout: float, what: str):
        self.end = time.monotonic() + timeout
        self.timeout = timeout
        self.what = what

    def left(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"{self.what}: not done within {self.timeout:g}s")
        return left


class _Connection:
    """One blocking socket to one broker; one request in flight at a time."""

    def __init__(self, host: str, port: int, deadline: _Deadline):
        self.address = f"{host}:{port}"
        self.sock = socket.create_connection((host, port), timeout=deadline.left())
        self.proto = KafkaProtocol(client_id="mgeo-tests-kafka-log")
        self.versions: dict[int, tuple[int, int]] = {}
        # ApiVersions v0 is understood by every broker and needs no flexible header.
        resp = self.call(ApiVersionsRequest[0](), deadline)
        if resp.error_code:
            raise kerrors.for_code(resp.error_code)(f"ApiVersions from {self.address}")
        self.versions = {k.api_key: (k.min_version, k.max_version) for k in resp.api_keys}

    def version(self, request_class, wanted: tuple[int, int]) -> int:
        lo, hi = wanted
        broker = self.versions.get(request_class.API_KEY)
        if broker is None:
            raise RuntimeError(f"{self.address} does not support {request_class.name}")
        v = min(hi, broker[1], request_class.max_version)
        if v < max(lo, broker[0]):
            raise RuntimeError(f"{self.address} supports {request_class.name} "
                               f"v{broker[0]}-v{broker[1]}; this reader needs v{lo}-v{hi}")
        return v

    def call(self, request, deadline: _Deadline):
        self.proto.send_request(request)
        self.sock.settimeout(deadline.left())
        self.sock.sendall(self.proto.send_bytes())
        while True:
            self.sock.settimeout(deadline.left())
            try:
                data = self.sock.recv(1 << 20)
            except socket.timeout:
                deadline.left()  # raises TimeoutError with the reader's message
                raise
            if not data:
                raise ConnectionError(f"{self.address} closed the connection")
            responses = self.proto.receive_bytes(data)
            if responses:
                return responses[0][1]

    def close(self) -> None:
        self.sock.close()


def _parse_bootstrap(bootstrap: str) -> list[tuple[str, int]]:
    out = []
    for item in bootstrap.split(","):
        item = item.strip()
        if "://" in item:
            item = item.split("://", 1)[1]
        host, _, port = item.rpartition(":")
        out.append((host.strip("[]"), int(port)))
    return out


def _leaders(conn: _Connection, topic: str, partitions: int,
             deadline: _Deadline) -> tuple[dict[int, int], dict[int, tuple[str, int]]]:
    """{partition: leader node id}, {node id: (host, port)}; retries while leaders settle."""
    version = conn.version(MetadataRequest, _METADATA_VERSIONS)
    while True:
        req = MetadataRequest[version](
            topics=[MetadataRequest.MetadataRequestTopic(name=topic)],
            allow_auto_topic_creation=False)
        md = conn.call(req, deadline)
        nodes = {b.node_id: (b.host, b.port) for b in md.brokers}
        problem = None
        leaders: dict[int, int] = {}
        t = next((t for t in md.topics if t.name == topic), None)
        if t is None or t.error_code:
            problem = kerrors.for_code(t.error_code if t is not None else 3)
        elif len(t.partitions) < partitions:
            raise ValueError(f"topic {topic!r} has {len(t.partitions)} partitions, "
                             f"not {partitions}")
        else:
            for p in t.partitions:
                if p.error_code == 0 and p.leader_id >= 0 and p.leader_id in nodes:
                    leaders[p.partition_index] = p.leader_id
            missing = [p for p in range(partitions) if p not in leaders]
            if missing:
                problem = f"no leader yet for partitions {missing}"
        if problem is None:
            return leaders, nodes
        if isinstance(problem, type) and not problem.retriable:
            raise problem(f"metadata for topic {topic!r}")
        if deadline.end - time.monotonic() <= _RETRY_BACKOFF_S:
            raise TimeoutError(f"{deadline.what}: metadata for {topic!r}: {problem}")
        time.sleep(_RETRY_BACKOFF_S)  # bounded by the deadline: leaders are being elected


def _committed(batches: Iterable, partition: int) -> tuple[list[Record], int | None]:
    """Apply the read_committed rules to one partition's batches, in log order.

    Returns the kept records (offset order) and the last stable offset, i.e. the first offset
    of the earliest still-open transaction, or None when none is open.
    """
    kept: list[Record] = []
    open_txns: dict[int, tuple[int, list[Record]]] = {}  # producerId -> (first offset, records)

    def records_of(batch) -> list[Record]:
        return [Record(partition, r.offset, r.key, r.value, tuple(r.headers or ()))
                for r in batch]

    for batch in batches:
        if getattr(batch, "is_control_batch", False):
            for marker in batch:
                if marker.type not in (_CONTROL_ABORT, _CONTROL_COMMIT):
                    continue  # other control records (e.g. KRaft's) end no transaction
                pending = open_txns.pop(batch.producer_id, None)
                if pending is not None and marker.type == _CONTROL_COMMIT:
                    kept += pending[1]
        elif getattr(batch, "is_transactional", False):
            # A transaction's first offset is that of its first batch on this partition.
            _, held = open_txns.setdefault(batch.producer_id, (batch.base_offset, []))
            held += records_of(batch)
        else:
            kept += records_of(batch)
    lso = min((first for first, _ in open_txns.values()), default=None)
    kept.sort(key=lambda r: r.offset)
    if lso is not None:
        kept = [r for r in kept if r.offset < lso]
    return kept, lso


def _read_partition(conn: _Connection, topic: str, partition: int,
                    deadline: _Deadline) -> list:
    """Every record batch of one partition from offset 0 up to its high watermark."""
    version = conn.version(FetchRequest, _FETCH_VERSIONS)
    batches: list = []
    offset = 0
    end: int | None = None  # the high watermark of the first answer: the snapshot we read
    max_bytes = _PARTITION_MAX_BYTES
    while end is None or offset < end:
        req = FetchRequest[version](
            replica_id=-1, max_wait_ms=100, min_bytes=1, max_bytes=max_bytes,
            isolation_level=_READ_UNCOMMITTED, session_id=0, session_epoch=-1,
            topics=[FetchRequest.FetchTopic(topic=topic, partitions=[
                FetchRequest.FetchTopic.FetchPartition(
                    partition=partition, fetch_offset=offset, partition_max_bytes=max_bytes)])],
            forgotten_topics_data=[], rack_id="")
        resp = conn.call(req, deadline)
        if resp.error_code:
            raise kerrors.for_code(resp.error_code)(f"fetch {topic}/{partition}")
        data = resp.responses[0].partitions[0]
        if data.error_code:
            err = kerrors.for_code(data.error_code)
            if not err.retriable or deadline.end - time.monotonic() <= _RETRY_BACKOFF_S:
                raise err(f"fetch {topic}/{partition} at offset {offset}")
            time.sleep(_RETRY_BACKOFF_S)  # bounded by the deadline
            continue
        if end is None:
            end = data.high_watermark
        progressed = False
        if data.records:
            for batch in MemoryRecords(bytes(data.records)):
                if batch.next_offset <= offset:
                    continue  # a batch from before the fetch offset (only on old formats)
                batches.append(batch)
                offset = batch.next_offset
                progressed = True
        if not progressed and offset < end:
            # Only a truncated batch came back: the next batch is bigger than max_bytes.
            if max_bytes >= 1 << 30:
                raise RuntimeError(f"fetch {topic}/{partition} at offset {offset} makes no "
                                   f"progress (high watermark {end})")
            max_bytes *= 4
        deadline.left()
    return batches


def read_committed_log(bootstrap: str, topic: str, partitions: int,
                       timeout: float = 30) -> list[Record]:
    """What a read_committed consumer of `topic` partitions 0..partitions-1 would read from the
    beginning, as of now: [Record], ordered by (partition, offset).

    Raises TimeoutError when it cannot finish within `timeout` seconds in all.
    """
    deadline = _Deadline(timeout, f"reading {topic!r} read_committed from {bootstrap}")
    conns: dict[tuple[str, int], _Connection] = {}

    def connect(address: tuple[str, int]) -> _Connection:
        if address not in conns:
            conns[address] = _Connection(*address, deadline)
        return conns[address]

    try:
        errors = []
        boot = None
        for address in _parse_bootstrap(bootstrap):
            try:
                boot = connect(address)
                break
            except OSError as exc:
                errors.append(f"{address[0]}:{address[1]}: {exc}")
        if boot is None:
            raise ConnectionError(f"no bootstrap server answered: {'; '.join(errors)}")
        leaders, nodes = _leaders(boot, topic, partitions, deadline)
        out: list[Record] = []
        for p in range(partitions):
            conn = connect(nodes[leaders[p]])
            kept, _ = _committed(_read_partition(conn, topic, p, deadline), p)
            out += kept
        return out
    finally:
        for conn in conns.values():
            conn.close()
