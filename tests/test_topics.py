"""`mgeo topics create`: the step between starting a broker and `mgeo produce`."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest

from mgeo.kafka import partitions_of
from mgeo.tools.cli import main


def _names() -> dict[str, str]:
    tag = uuid.uuid4().hex[:8]
    return {"input": f"pairs-{tag}", "output": f"scores-{tag}", "dlq": f"dlq-{tag}"}


def _args(bootstrap: str, names: dict[str, str]) -> list[str]:
    return ["--bootstrap-servers", bootstrap, "--input-topic", names["input"],
            "--output-topic", names["output"], "--dlq-topic", names["dlq"]]


@pytest.mark.broker
def test_it_creates_the_three_topics_and_produce_then_accepts_pairs(bootstrap, tmp_path,
                                                                   capsys):
    names = _names()
    assert main(["topics", "create", "--partitions", "3", *_args(bootstrap, names)]) == 0
    conf = {"bootstrap.servers": bootstrap}
    assert len(partitions_of(conf, names["input"])) == 3
    assert len(partitions_of(conf, names["output"])) == 3
    assert len(partitions_of(conf, names["dlq"])) == 1
    assert capsys.readouterr().out.splitlines() == [
        f"{names['input']}: 3 partitions", f"{names['output']}: 3 partitions",
        f"{names['dlq']}: 1 partitions"]
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("id,addr1,addr2\na,紫萱路363号人力社保局,紫萱路363号市人社局\n",
                     encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "mgeo.tools.cli", "produce", str(pairs),
                           "--bootstrap-servers", bootstrap, "--input-topic", names["input"],
                           "--no-progress"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


@pytest.mark.broker
def test_existing_topics_are_left_as_they_are(bootstrap, capsys):
    names = _names()
    assert main(["topics", "create", "--partitions", "2", *_args(bootstrap, names)]) == 0
    assert main(["topics", *_args(bootstrap, names), "--partitions", "5"]) == 0  # create: default
    assert len(partitions_of({"bootstrap.servers": bootstrap}, names["input"])) == 2
    assert f"{names['input']}: 2 partitions" in capsys.readouterr().out.splitlines()


def test_an_unknown_action_is_refused_with_one_line(capsys):
    assert main(["topics", "delete"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "mgeo topics" in err[0], err


@pytest.mark.slow
def test_an_unreachable_broker_is_one_line(capsys):
    assert main(["topics", "create", "--bootstrap-servers", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mgeo topics: cannot reach Kafka at 127.0.0.1:1")


@pytest.mark.broker
def test_a_missing_topic_names_the_command_that_creates_it(bootstrap):
    from mgeo.kafka import KafkaUnavailable

    with pytest.raises(KafkaUnavailable, match=r"create it first \(mgeo topics create\)"):
        partitions_of({"bootstrap.servers": bootstrap}, f"missing-{uuid.uuid4().hex[:8]}")
