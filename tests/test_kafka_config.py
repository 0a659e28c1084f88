"""librdkafka settings from the user: the options that carry them, the .properties file, the
checks that name a wrong one before a command starts, and the secrets among them that never
reach a log, an error or a config dump."""

from __future__ import annotations

import logging
import threading
import urllib.request
from pathlib import Path

import pytest

from mgeo.settings import WorkerSettings, read_properties, redact
from mgeo.tools.cli import main, parse

SECRET = "hunter2,x=y"  # a password with a comma and an '=' in it
DATA = Path(__file__).parent / "data"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    """Only what a test sets: no MGEO_* variable of the shell that runs the suite."""
    import os

    for key in [k for k in os.environ if k.startswith("MGEO_")]:
        monkeypatch.delenv(key)


def _fails(capsys, argv) -> str:
    """Runs `mgeo ARGV`, which must stop with exit 2 and one line on stderr, echoing no secret
    value; returns that line."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert "hunter" not in err and "x=y" not in err, err
    return err


# -- the options: each --*-config is one property, the environment takes JSON or lines -----------


def test_each_flag_is_one_property_whose_value_keeps_commas_and_equals():
    s = parse("worker", ["--kafka-config", "debug=cgrp,fetch",
                         "--kafka-config", "ssl.cipher.suites=ECDHE-RSA-AES256-GCM-SHA384,AES128",
                         "--producer-config", f"sasl.password={SECRET}",
                         "--consumer-config", "sasl.oauthbearer.config=principal=svc scope=a,b",
                         "--kafka-config", "client.id=first", "--kafka-config", "client.id=last"])
    assert s.kafka_config == {"debug": "cgrp,fetch", "client.id": "last",
                              "ssl.cipher.suites": "ECDHE-RSA-AES256-GCM-SHA384,AES128"}
    assert s.producer_config == {"sasl.password": SECRET}
    assert s.consumer_config == {"sasl.oauthbearer.config": "principal=svc scope=a,b"}


def test_the_environment_takes_json_or_key_value_lines(monkeypatch):
    monkeypatch.setenv("MGEO_KAFKA_CONFIG", "security.protocol=SASL_SSL\n"
                                            "# the service account\n"
                                            f"  sasl.password = {SECRET}  \n\n"
                                            "debug=cgrp,fetch\n")
    monkeypatch.setenv("MGEO_PRODUCER_CONFIG", '{"linger.ms": 5, "enable.idempotence": true}')
    monkeypatch.setenv("MGEO_CONSUMER_CONFIG", "")
    s = parse("worker", [])
    assert s.kafka_config == {"security.protocol": "SASL_SSL", "sasl.password": SECRET,
                              "debug": "cgrp,fetch"}
    assert s.producer_config == {"linger.ms": "5", "enable.idempotence": "true"}
    assert s.consumer_config == {}


@pytest.mark.parametrize("argv,env,option", [
    (["--kafka-config", "hunter2"], {}, "--kafka-config (MGEO_KAFKA_CONFIG)"),
    (["--producer-config", "=hunter2"], {}, "--producer-config (MGEO_PRODUCER_CONFIG)"),
    ([], {"MGEO_KAFKA_CONFIG": '{"sasl.password": "hunter2"'},
     "--kafka-config (MGEO_KAFKA_CONFIG)"),
    ([], {"MGEO_KAFKA_CONFIG": "sasl.password=x=y\nhunter2"},
     "--kafka-config (MGEO_KAFKA_CONFIG)"),
    ([], {"MGEO_CONSUMER_CONFIG": '{"sasl.password": {"v": "hunter2"}}'},
     "--consumer-config (MGEO_CONSUMER_CONFIG)"),
    ([], {"MGEO_KAFKA_CONFIG": '["hunter2"]'}, "--kafka-config (MGEO_KAFKA_CONFIG)"),
], ids=["flag-without-=", "flag-without-key", "env-bad-json", "env-line-without-=",
        "env-nested-json", "env-json-list"])
def test_option_mistakes_are_one_line_naming_the_option(capsys, monkeypatch, argv, env, option):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    err = _fails(capsys, ["worker", *argv])
    assert err.startswith("mgeo worker: ") and option in err and "--help" in err


def test_a_value_pydantic_settings_cannot_decode_is_one_line(capsys):
    err = _fails(capsys, ["worker", "--positive-labels", '"exact_match'])
    assert "--positive-labels (MGEO_POSITIVE_LABELS)" in err


# -- librdkafka refuses a property: a usage error, before the command starts ---------------------


@pytest.mark.parametrize("command", ["worker", "produce", "collect"])
def test_an_unknown_librdkafka_property_is_a_usage_error(capsys, command):
    err = _fails(capsys, [command, "--kafka-config", "no.such.property=hunter2"])
    assert "no.such.property" in err and "--kafka-config (MGEO_KAFKA_CONFIG)" in err
    assert "CONFIGURATION.md" in err


@pytest.mark.parametrize("command,flag,prop,value,words", [
    ("worker", "--consumer-config", "security.protocol", "hunter2", "value"),
    ("worker", "--producer-config", "acks", "hunter2", "value"),
    ("produce", "--producer-config", "linger.ms", "99999999", "range 0..900000"),
    ("collect", "--consumer-config", "enable.partition.eof", "hunter2", "value"),
    ("worker", "--producer-config", "acks", "1", "enable.idempotence"),  # clashes with mgeo's
], ids=["enum", "alias", "range", "bool", "clash"])
def test_an_invalid_librdkafka_value_names_the_property_not_the_value(capsys, command, flag,
                                                                      prop, value, words):
    err = _fails(capsys, [command, flag, f"{prop}={value}"])
    env = "MGEO_" + flag[2:].replace("-", "_").upper()
    assert f'"{prop}"' in err and f"{flag} ({env})" in err and words in err
    assert "99999999" not in err and "1e+08" not in err  # the value as librdkafka writes it


def test_a_bad_property_in_the_file_names_the_file(capsys, tmp_path):
    props = tmp_path / "client.properties"
    props.write_text("sasl.username=svc\nsasl.pasword=hunter2\n")
    err = _fails(capsys, ["produce", "--kafka-config-file", str(props)])
    assert '"sasl.pasword"' in err and "--kafka-config-file (MGEO_KAFKA_CONFIG_FILE)" in err


# -- the .properties file: the whole format, errors by file and line only -------------------------


def test_properties_files_are_read_per_the_format(tmp_path):
    props = tmp_path / "client.properties"
    props.write_text(
        "# Kafka's client.properties\n"
        "! another comment\n"
        "bootstrap.servers=k1:9092,k2:9092\n"
        "security.protocol: SASL_SSL\n"
        "sasl.mechanism PLAIN\n"
        "   sasl.username   =   svc\n"
        "sasl.password=hunter2\\,x\\=y\n"
        "ssl.cipher.suites = ECDHE-RSA-AES256-GCM-SHA384:\\\n"
        "                    ECDHE-RSA-AES128-GCM-SHA256\n"
        "ssl.ca.location=C:\\\\certs\\\\ca.pem\n"
        "client.id=\\u00e9t\\u00e9\n"
        "key\\ with\\:odd\\=chars=v\n"
        "empty.value=\n",
        encoding="utf-8")
    assert read_properties(props) == {
        "bootstrap.servers": "k1:9092,k2:9092", "security.protocol": "SASL_SSL",
        "sasl.mechanism": "PLAIN", "sasl.username": "svc", "sasl.password": "hunter2,x=y",
        "ssl.cipher.suites": "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256",
        "ssl.ca.location": "C:\\certs\\ca.pem", "client.id": "été",
        "key with:odd=chars": "v", "empty.value": ""}


@pytest.mark.parametrize("text,line,what", [
    (b"sasl.username=svc\nsasl.password=hunter2\\u12x4\n", 2, "escape"),
    (b"# comment\n\n  = hunter2\n", 3, "name"),
    (b"sasl.username=svc\nsasl.password=hunter2\xff\n", 2, "UTF-8"),
], ids=["bad-u-escape", "no-key", "not-utf8"])
def test_properties_mistakes_name_the_file_and_line_never_the_value(capsys, tmp_path, text,
                                                                    line, what):
    props = tmp_path / "client.properties"
    props.write_bytes(text)
    err = _fails(capsys, ["collect", "--kafka-config-file", str(props)])
    assert f"{props}:{line}" in err and what in err
    assert "--kafka-config-file (MGEO_KAFKA_CONFIG_FILE)" in err


def test_a_missing_properties_file_is_one_line(capsys, tmp_path):
    err = _fails(capsys, ["worker", "--kafka-config-file", str(tmp_path / "nope.properties")])
    assert "nope.properties" in err and "--kafka-config-file (MGEO_KAFKA_CONFIG_FILE)" in err

def test_a_properties_error_never_shows_the_line(tmp_path):
    props = tmp_path / "client.properties"
    props.write_text("sasl.password hunter2 \\u00zz\n")
    with pytest.raises(ValueError) as exc:
        read_properties(props)
    assert "hunter2" not in str(exc.value) and f"{props}:1" in str(exc.value)

def test_the_charts_properties_file_keeps_every_value(tmp_path):
    """The Helm chart writes kafka.properties as a .properties file: the format's escapes
    must be written for a backslash or a line break in a value to survive."""
    import helm_python as helm
    from test_helm import CHART, of_kind, render

    props = {"sasl.password": "pa\\ss,wo=rd:x", "security.protocol": "SASL_SSL",
             "ssl.key.pem": "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----",
             "ssl.ca.location": "C:\\certs\\ca.pem", "linger.ms": 5}
    with helm.Chart.load(CHART) as chart:
        docs = render(chart, {"kafka": {"properties": props}})
    (secret,) = [d for d in of_kind(docs, "Secret") if d["metadata"]["name"].endswith("-kafka")]
    (key, text), = secret["stringData"].items()
    (tmp_path / key).write_text(text)
    assert read_properties(tmp_path / key) == {**props, "linger.ms": "5"}


# -- secrets: masked by key in every log and dump --------------------------------------------------

# The librdkafka properties whose values are credentials or carry them (librdkafka's
# CONFIGURATION.md: passwords, passphrases, client secrets, private keys, and the OAUTHBEARER
# config string, which may hold tokens and extension values).
LIBRDKAFKA_SECRETS = {
    "sasl.password", "sasl.oauthbearer.config", "sasl.oauthbearer.client.secret",
    "sasl.oauthbearer.client.credentials.client.secret",
    "sasl.oauthbearer.assertion.private.key.passphrase",
    "sasl.oauthbearer.assertion.private.key.pem", "ssl.key.password", "ssl.key.pem", "ssl_key",
    "ssl.keystore.password"}


def _librdkafka_properties() -> list[str]:
    text = (DATA / "librdkafka-properties.txt").read_text(encoding="utf-8")
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]


def test_every_librdkafka_secret_is_masked_and_nothing_else():
    names = _librdkafka_properties()
    assert len(names) > 150 and LIBRDKAFKA_SECRETS <= set(names)
    masked = redact({name: "value" for name in names})
    assert {k for k, v in masked.items() if v == "***"} == LIBRDKAFKA_SECRETS
    for ordinary in ("bootstrap.servers", "sasl.mechanism", "sasl.username", "ssl.ca.location",
                     "ssl.key.location", "ssl.certificate.pem", "sasl.oauthbearer.client.id"):
        assert masked[ordinary] == "value"


def test_java_client_secrets_are_masked_too():
    # Properties files written for the Java client carry these; librdkafka refuses them, but
    # an error or a dump must not show them on the way.
    java = {"sasl.jaas.config": "x", "ssl.truststore.password": "x", "ssl.keystore.key": "x",
            "basic.auth.user.info": "x", "SASL.PASSWORD": "x"}
    assert set(redact(java).values()) == {"***"}


def test_the_debug_config_dump_masks_every_secret(caplog):
    from engines import RuleEngine
    from memory_kafka import MemoryBroker, clients
    from mgeo.worker.stream.processor import StreamProcessor
    from mgeo.worker.stream.scoring import Scorer

    broker = MemoryBroker()
    broker.create("in", 1)
    s = WorkerSettings(input_topic="in", group_id="g", stats_interval_ms=0, kafka_config={
        "sasl.oauthbearer.config": "principal=svc extension_token=hunter2",
        "sasl.password": "hunter2", "ssl.key.pem": "-----BEGIN hunter2"})
    factories, made = clients(broker)
    proc = StreamProcessor(s, Scorer(RuleEngine()), clients=factories)
    caplog.set_level(logging.DEBUG)
    rc: list[int] = []
    thread = threading.Thread(target=lambda: rc.append(proc.run()), daemon=True)
    thread.start()
    with proc.progress:
        assert proc.progress.wait_for(lambda: "consumer" in made, 30)
    proc.stop()
    thread.join(30)
    assert rc == [0]
    dump = [r.getMessage() for r in caplog.records if "config" in r.getMessage()]
    assert dump and "sasl.oauthbearer.config" in dump[0]
    assert "hunter2" not in caplog.text and "***" in dump[0]



# -- /metrics on the address given ---------------------------------------------------------------


def test_metrics_host_is_an_option_and_defaults_to_every_interface(monkeypatch):
    assert parse("worker", []).metrics_host == "0.0.0.0"
    assert parse("worker", ["--metrics-host", "127.0.0.1"]).metrics_host == "127.0.0.1"
    monkeypatch.setenv("MGEO_METRICS_HOST", "::1")
    assert parse("worker", []).metrics_host == "::1"


def test_a_bad_metrics_host_is_one_line(capsys):
    err = _fails(capsys, ["worker", "--metrics-host", "not an address"])
    assert "--metrics-host (MGEO_METRICS_HOST)" in err


def test_worker_processes_serve_their_own_metrics_on_loopback():
    from mgeo.worker.processes import child_environments

    s = WorkerSettings(metrics_port=9400, metrics_host="10.1.2.3", processes=2)
    assert {env["MGEO_METRICS_HOST"] for env in child_environments(s, [9001, 9002])} == {
        "127.0.0.1"}


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_the_worker_serves_metrics_on_the_given_host(host):
    import mgeo.worker.inference  # noqa: F401 - before torch, as the CLI does
    from mgeo.worker.app import _start

    s = WorkerSettings(metrics_port=0, metrics_host=host, device="cpu")
    worker = _start(s, {})
    server = worker.server
    try:
        assert server.httpd.server_address[0] == host
        url_host = f"[{host}]" if ":" in host else host
        with urllib.request.urlopen(f"http://{url_host}:{server.port}/metrics", timeout=10) as r:
            assert r.status == 200 and b"mgeo_" in r.read()
    finally:
        server.stop()
        worker.close()

