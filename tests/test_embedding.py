"""The embedding API: `from mgeo.worker import ...` runs the worker loop in a user's own
process, as the package docstring's example shows; importing it brings no torch."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

import mgeo.worker
from conftest import committed_offsets
from mgeo import wire
from mgeo.producer.collect import Collector


def _example() -> str:
    m = re.search(r"::\n\n(.*?)\n\n(?=\S)", mgeo.worker.__doc__, re.S)
    assert m, "mgeo.worker's docstring has an example"
    lines = m.group(1).splitlines()
    return "\n".join(line[4:] for line in lines)


def test_the_api_names_its_exports_and_imports_no_torch():
    assert set(mgeo.worker.__all__) == {"Engine", "Worker", "WorkerSettings", "load_engine"}
    code = ("import sys, mgeo.worker; from mgeo.worker import WorkerSettings; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    with pytest.raises(AttributeError):
        mgeo.worker.NoSuchName  # noqa: B018


@pytest.mark.broker
@pytest.mark.slow
def test_the_docstring_example_runs_the_worker_loop_in_this_process(bootstrap, topics):
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap})
    for i in range(10):
        p.produce(topics["input"], key=f"r{i}".encode(),
                  value=wire.encode_request(f"r{i}", "紫萱路363号", "紫萱路363号"))
    assert p.flush(30) == 0
    example = _example()
    for old, new in (("127.0.0.1:9092", bootstrap), ('"requests"', f'"{topics["input"]}"'),
                     ('"results"', f'"{topics["output"]}"'),
                     ('"requests.dlq"', f'"{topics["dlq"]}"'), ('"my-app"', f'"{topics["group"]}"')):
        assert old in example
        example = example.replace(old, new)
    scope: dict = {}
    exec(compile(example, "mgeo.worker example", "exec"), scope)
    assert scope["code"] == 0 and scope["worker"].closed
    out = Collector({"bootstrap.servers": bootstrap}, topics["output"])
    out.collect(10, timeout=60)
    out.close()
    assert sorted(out.results) == sorted(f"r{i}" for i in range(10))
    assert sum(committed_offsets(bootstrap, topics["group"], topics["input"]).values()) == 10
