"""`mgeo worker --processes N`: N group members in one container, one identity each, one
/metrics, and no worker that outlives its supervisor."""

from __future__ import annotations

import os
import re
import signal
import time

import pytest
from confluent_kafka import Producer

from conftest import worker_env
from mgeo import wire
from mgeo.producer.collect import Collector
from mgeo.settings import WorkerSettings
from mgeo.worker.processes import child_environments


def test_each_child_gets_its_own_identity_and_the_supervisors_settings(monkeypatch):
    monkeypatch.delenv("MGEO_THREADS", raising=False)
    s = WorkerSettings(processes=3, delivery="exactly-once", transactional_id="scorer-7",
                       group_instance_id="pod-7", max_inflight=123,
                       kafka_config={"security.protocol": "SSL"})
    envs = child_environments(s, [9001, 9002, 9003])
    assert [e["MGEO_TRANSACTIONAL_ID"] for e in envs] == ["scorer-7-0", "scorer-7-1",
                                                          "scorer-7-2"]
    assert [e["MGEO_GROUP_INSTANCE_ID"] for e in envs] == ["pod-7-0", "pod-7-1", "pod-7-2"]
    assert [e["MGEO_METRICS_PORT"] for e in envs] == ["9001", "9002", "9003"]
    for env in envs:
        assert env["MGEO_PROCESSES"] == "1"
        assert env["MGEO_MAX_INFLIGHT"] == "123"  # a flag given to the supervisor reaches them
    # A child reads its settings from that environment alone, as the worker process does.
    for key in [k for k in os.environ if k.startswith("MGEO_")]:
        monkeypatch.delenv(key)
    for key, value in envs[1].items():
        if key.startswith("MGEO_"):
            monkeypatch.setenv(key, value)
    child = WorkerSettings()
    assert child.kafka_config == {"security.protocol": "SSL"}
    assert child.max_inflight == 123 and child.processes == 1
    assert child.transactional_id == "scorer-7-1" and child.metrics_port == 9002
    assert child.model_dump(exclude={"transactional_id", "group_instance_id", "metrics_port",
                                     "metrics_host", "processes", "threads"}) == \
        s.model_dump(exclude={"transactional_id", "group_instance_id", "metrics_port",
                              "metrics_host", "processes", "threads"})
    assert int(envs[0]["MGEO_THREADS"]) == max(1, (os.cpu_count() or 1) // 3)


@pytest.mark.broker
@pytest.mark.slow
def test_the_processes_share_the_work_and_die_with_their_supervisor(bootstrap, topics,
                                                                   tiny_model, start_worker):
    worker = start_worker(worker_env(bootstrap, topics, tiny_model, MGEO_PROCESSES="2",
                                     MGEO_THREADS="1"))
    line = worker.wait_for(r"started 2 worker processes \(pids \d+, \d+\)", 60)
    pids = [int(p) for p in re.findall(r"\d+", line.split("pids", 1)[1])]
    worker.wait_for(r"assigned [1-9]\d* partitions", 90)
    worker.wait_for(r"assigned [1-9]\d* partitions.*", 90)
    p = Producer({"bootstrap.servers": bootstrap})
    for i in range(400):
        p.produce(topics["input"], key=f"k{i}".encode(),
                  value=wire.encode_request(f"k{i}", "天津市和平区南京路1号", f"南京路{i}号"))
    assert p.flush(30) == 0
    out = Collector({"bootstrap.servers": bootstrap}, topics["output"])
    out.collect(400, timeout=120, deadline=time.monotonic() + 120)
    assert len(out.results) == 400
    worker.kill()  # SIGKILL: the supervisor gets no chance to stop them itself
    deadline = time.monotonic() + 60
    alive = set(pids)
    while alive and time.monotonic() < deadline:
        for pid in list(alive):
            try:
                os.kill(pid, 0)
                if open(f"/proc/{pid}/stat").read().split()[2] == "Z":
                    alive.discard(pid)  # a zombie: exited, waiting to be reaped
            except (ProcessLookupError, FileNotFoundError):
                alive.discard(pid)
        time.sleep(0.2)  # process exit has no event to wait on from here
    for pid in alive:
        os.kill(pid, signal.SIGKILL)
    assert not alive, f"worker processes {alive} outlived their supervisor"
