"""docker-compose.yml, the Dockerfiles and deploy/prometheus.yml, checked without Docker.

The compose file is parsed as YAML (anchors and merge keys resolved) with its `${VAR:-default}`
variables replaced by their defaults, i.e. what `docker compose up` runs with no .env file.
Every `mgeo` command it runs must be a real subcommand and every MGEO_* variable a real field of
that command's settings class, with a value the settings class accepts: config cannot drift
silently (pydantic-settings ignores unknown MGEO_* variables).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml

from mgeo import settings as settings_mod
from mgeo.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
_VAR = re.compile(r"\$(?:\$|\{(\w+)(?::?-([^}]*))?\})")


def interpolate(node):
    """Compose's variable syntax with nothing set: `${V:-d}` -> d, `${V}` -> "", `$$` -> `$`."""
    if isinstance(node, str):
        return _VAR.sub(lambda m: "$" if m.group(0) == "$$" else (m.group(2) or ""), node)
    if isinstance(node, dict):
        return {k: interpolate(v) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate(v) for v in node]
    return node


@pytest.fixture(scope="module")
def compose() -> dict:
    return interpolate(yaml.safe_load(COMPOSE.read_text(encoding="utf-8")))


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def env(service: dict) -> dict:
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) if "=" in item else (item, None) for item in raw)
    return {k: (None if v is None else str(v)) for k, v in raw.items()}


def argv(service: dict) -> list[str]:
    def as_list(v):
        return shlex.split(v) if isinstance(v, str) else list(v or [])
    return as_list(service.get("entrypoint")) + as_list(service.get("command"))


def mgeo_services(services: dict) -> dict[str, tuple[str, dict]]:
    """name -> (mgeo subcommand, service) for every service that runs the `mgeo` CLI."""
    out = {}
    for name, svc in services.items():
        args = argv(svc)
        if args and args[0] == "mgeo":
            out[name] = (args[1], svc)
    return out


def worker_services(services: dict) -> dict[str, dict]:
    return {n: s for n, (cmd, s) in mgeo_services(services).items() if cmd == "worker"}


def seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration)
    assert parts and "".join(a + u for a, u in parts) == duration, duration
    return sum(float(a) * units[u] for a, u in parts)


def listeners(value: str) -> dict[str, tuple[str, int]]:
    """'NAME://host:port,...' -> {NAME: (host, port)}."""
    out = {}
    for item in value.split(","):
        name, rest = item.split("://")
        host, port = rest.rsplit(":", 1)
        out[name] = (host, int(port))
    return out


# ---- Kafka ------------------------------------------------------------------------------------

def test_kafka_is_the_official_image_never_bitnami(services):
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert "bitnami" not in COMPOSE.read_text(encoding="utf-8").lower()


def test_kafka_runs_kraft_single_node(services):
    kafka = services["kafka"]
    e = env(kafka)
    assert set(e["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    bound = listeners(e["KAFKA_LISTENERS"])
    controller = e["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert controller in bound
    voter_id, voter = e["KAFKA_CONTROLLER_QUORUM_VOTERS"].split("@")
    assert voter_id == e["KAFKA_NODE_ID"]
    assert voter == f"{kafka['hostname']}:{bound[controller][1]}"
    protocols = dict(p.split(":") for p in e["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert set(bound) <= set(protocols)
    advertised = listeners(e["KAFKA_ADVERTISED_LISTENERS"])
    assert controller not in advertised and set(advertised) <= set(bound)
    assert e["KAFKA_INTER_BROKER_LISTENER_NAME"] in advertised
    for key in ("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
                "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
                "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"):
        assert e[key] == "1", key
    assert kafka["healthcheck"]["test"]
    # Host tools reach the advertised host listener through a loopback-only published port.
    host_name = next(n for n, (h, _) in advertised.items() if h == "localhost")
    port = advertised[host_name][1]
    assert f"127.0.0.1:{port}:{bound[host_name][1]}" in kafka["ports"]


def test_clients_use_an_advertised_listener(services):
    advertised = listeners(env(services["kafka"])["KAFKA_ADVERTISED_LISTENERS"])
    in_network = {f"{h}:{p}" for h, p in advertised.values()}
    for name, (_, svc) in mgeo_services(services).items():
        assert env(svc)["MGEO_BOOTSTRAP_SERVERS"] in in_network, name
    assert "--bootstrap-server kafka:9092" in " ".join(argv(services["kafka-init"]))


def _created_topics(init: dict) -> dict[str, int]:
    script = " ".join(argv(init))
    return {m.group(1): int(m.group(2))
            for m in re.finditer(r"--topic (\S+) --partitions (\d+)", script)}


def test_topic_init_creates_the_workers_topics_first(services):
    init = services["kafka-init"]
    assert init["image"] == services["kafka"]["image"]
    assert init["depends_on"] == {"kafka": {"condition": "service_healthy"}}
    assert init.get("restart") == "no"
    topics = _created_topics(init)
    for name, svc in worker_services(services).items():
        e = env(svc)
        assert {e["MGEO_INPUT_TOPIC"], e["MGEO_OUTPUT_TOPIC"], e["MGEO_DLQ_TOPIC"]} <= set(topics)
    assert topics["address-pairs"] == 12, "partition default: TOPIC_PARTITIONS=12"
    assert "${TOPIC_PARTITIONS:-12}" in COMPOSE.read_text(encoding="utf-8")
    for name, (_, svc) in mgeo_services(services).items():
        assert svc["depends_on"]["kafka-init"] == {"condition": "service_completed_successfully"}, name


# ---- workers ----------------------------------------------------------------------------------

def test_gpu_worker_reserves_a_gpu_and_starts_by_default(services):
    worker = services["worker"]
    assert "profiles" not in worker
    assert worker["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert env(worker)["MGEO_DEVICE"] == "cuda"


def test_cpu_worker_is_a_profile_without_a_gpu(services):
    cpu = services["worker-cpu"]
    assert cpu["profiles"] == ["cpu"]
    assert "deploy" not in cpu
    assert env(cpu)["MGEO_DEVICE"] == "cpu"
    assert argv(cpu) == argv(services["worker"])
    assert cpu["image"] == services["worker"]["image"]


def test_workers_run_the_mgeo_worker_command(services):
    assert set(worker_services(services)) == {"worker", "worker-cpu"}
    for svc in worker_services(services).values():
        assert argv(svc) == ["mgeo", "worker"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["mgeo"] == "mgeo.cli:main"
    assert COMMANDS["worker"][0] == "WorkerSettings"


def help_flags(command: str, capsys) -> set[str]:
    """The flags `mgeo COMMAND --help` offers."""
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    return set(re.findall(r"(--[a-z][a-z0-9-]*)", capsys.readouterr().out))


def test_mgeo_worker_help_parses(capsys):
    assert "--bootstrap-servers" in help_flags("worker", capsys)


def test_the_tests_drive_the_same_worker_cli():
    """The suite runs `python -m mgeo.cli worker`; the `mgeo` script is that same main()."""
    import inspect

    from conftest import WorkerProcess

    assert '"-m", "mgeo.cli", "worker"' in inspect.getsource(WorkerProcess)


def test_every_flag_and_variable_is_in_the_commands_help(services, capsys):
    """Flags passed on a service's command line, and the flag of each MGEO_* variable, are
    ones `mgeo COMMAND --help` lists."""
    for name, (command, svc) in mgeo_services(services).items():
        offered = help_flags(command, capsys)
        passed = {a.split("=", 1)[0] for a in argv(svc)[2:] if a.startswith("--")}
        assert passed <= offered, f"{name}: not flags of mgeo {command}: {passed - offered}"
        for key in env(svc):
            if key.startswith("MGEO_"):
                flag = "--" + key[5:].lower().replace("_", "-")
                assert flag in offered, f"{name}: {key} has no {flag} in mgeo {command} --help"


def test_every_mgeo_variable_is_a_setting_the_command_reads(services, monkeypatch):
    checked = 0
    for name, (command, svc) in mgeo_services(services).items():
        assert command in COMMANDS, f"{name}: mgeo has no {command!r} command"
        cls = getattr(settings_mod, COMMANDS[command][0])
        variables = {k: v for k, v in env(svc).items() if k.startswith("MGEO_")}
        for key in variables:
            assert key[5:].lower() in cls.model_fields, \
                f"{name}: {key} is not a field of {cls.__name__}; mgeo {command} ignores it"
        for var in [k for k in os.environ if k.upper().startswith("MGEO_")]:
            monkeypatch.delenv(var)
        for key, value in variables.items():
            if value is not None:  # a bare key is passed through from the host, if set there
                monkeypatch.setenv(key, value)
        cls()  # every value is one the command accepts
        checked += 1
    assert checked >= 4


def test_stop_grace_outlasts_the_drain(services):
    for name, svc in worker_services(services).items():
        assert seconds(svc["stop_grace_period"]) > float(env(svc)["MGEO_SHUTDOWN_TIMEOUT"]), name


def test_model_directory_is_mounted_read_only(services):
    for name, svc in worker_services(services).items():
        mounts = [v for v in svc["volumes"] if v.split(":")[1] == "/models"]
        assert len(mounts) == 1 and mounts[0].endswith(":ro"), name
        assert "MGEO_MODEL" in env(svc)


# ---- the demo ---------------------------------------------------------------------------------

def test_demo_publishes_the_bundled_sample_and_collects(services):
    producer, collector = services["producer"], services["collector"]
    assert producer["profiles"] == collector["profiles"] == ["demo"]
    args = argv(producer)
    assert args[:2] == ["mgeo", "produce"]
    host, container = producer["volumes"][0].split(":")[:2]
    assert args[2].startswith(container + "/")
    sample = (ROOT / host / args[2][len(container) + 1:]).resolve()
    assert sample == (ROOT / "mgeo" / "data" / "sample_pairs.csv").resolve()
    assert sample.is_file(), f"{sample} (the bundled sample) is missing"
    assert argv(collector)[:2] == ["mgeo", "collect"]
    worker = env(services["worker"])
    assert env(producer)["MGEO_INPUT_TOPIC"] == worker["MGEO_INPUT_TOPIC"]
    assert env(collector)["MGEO_OUTPUT_TOPIC"] == worker["MGEO_OUTPUT_TOPIC"]
    assert producer["build"]["dockerfile"] == "Dockerfile.producer"


# ---- Prometheus -------------------------------------------------------------------------------

def test_prometheus_scrapes_every_worker(services):
    prom = services["prometheus"]
    mounts = dict(v.split(":")[:2] for v in prom["volumes"])
    host = next(h for h, c in mounts.items() if c == "/etc/prometheus/prometheus.yml")
    config = yaml.safe_load((ROOT / host).read_text(encoding="utf-8"))
    workers = worker_services(services)
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "mgeo-worker"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = set()
    for sd in job["dns_sd_configs"]:
        targets |= {(n, sd["port"]) for n in sd["names"]}
    for name, svc in workers.items():
        assert (name, int(env(svc)["MGEO_METRICS_PORT"])) in targets, name
    assert "127.0.0.1:9090:9090" in prom["ports"]


# ---- Dockerfiles ------------------------------------------------------------------------------

def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: comments dropped, continuation lines joined."""
    text = re.sub(r"\\\n", " ", path.read_text(encoding="utf-8"))
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def stages(path: Path) -> dict[str, list[tuple[str, str]]]:
    out, current = {}, None
    for word, rest in instructions(path):
        if word == "FROM":
            parts = rest.split()
            current = parts[-1] if "AS" in (p.upper() for p in parts) else f"#{len(out)}"
            out[current] = [(word, rest)]
        elif current is not None:
            out[current].append((word, rest))
    return out


def effective(stage_map: dict, name: str) -> list[tuple[str, str]]:
    """A stage's instructions with those of the stages it is built FROM, in order."""
    steps = stage_map[name]
    base = steps[0][1].split()[0]
    return (effective(stage_map, base) if base in stage_map else []) + steps


def last(steps, word):
    found = [rest for w, rest in steps if w == word]
    return found[-1] if found else None


def env_of(steps) -> dict[str, str]:
    out = {}
    for word, rest in steps:
        if word == "ENV":
            out.update(dict(item.split("=", 1) for item in shlex.split(rest)))
    return out


def test_worker_image_runs_mgeo_worker_unprivileged(services):
    dockerfile = ROOT / "Dockerfile"
    stage_map = stages(dockerfile)
    target = services["worker"]["build"]["target"]
    default = list(stage_map)[-1]
    assert target == default, "compose builds the Dockerfile's default target"
    steps = effective(stage_map, target)
    assert json.loads(last(steps, "ENTRYPOINT")) == ["mgeo"]
    assert json.loads(last(steps, "CMD")) == ["worker"]
    user = last(steps, "USER")
    assert user and user.split(":")[0] not in ("root", "0")
    port = env_of(steps)["MGEO_METRICS_PORT"]
    assert last(steps, "EXPOSE") == port == env(services["worker"])["MGEO_METRICS_PORT"]
    health = last(steps, "HEALTHCHECK")
    assert "/healthz" in health and "MGEO_METRICS_PORT" in health
    assert any(w == "RUN" and "[worker]" in r for w, r in steps), "installs the worker extra"
    for key in env_of(steps):
        if key.startswith("MGEO_"):
            assert key[5:].lower() in settings_mod.WorkerSettings.model_fields, key


def test_baked_image_sets_the_model_path_the_chart_uses():
    stage_map = stages(ROOT / "Dockerfile")
    steps = effective(stage_map, "worker-baked")
    model = env_of(steps)["MGEO_MODEL"]
    assert any(w == "COPY" and "--from=model" in r and r.split()[-1].rstrip("/") == model
               for w, r in steps)
    chart_values = yaml.safe_load((ROOT / "helm/mgeo-worker/values.yaml").read_text())
    assert chart_values["model"]["path"] == model
    assert chart_values["worker"]["metricsPort"] == int(env_of(steps)["MGEO_METRICS_PORT"])


def test_producer_image_has_no_model_stack():
    steps = instructions(ROOT / "Dockerfile.producer")
    runs = " ".join(r for w, r in steps if w == "RUN")
    assert "pip install /src" in runs
    assert "[worker]" not in runs and "torch" not in runs
    assert json.loads(last(steps, "ENTRYPOINT")) == ["mgeo"]
    assert last(steps, "USER").split(":")[0] not in ("root", "0")
    assert last(steps, "FROM").split()[0].startswith("${PYTHON_IMAGE}")
    assert "slim" in next(r for w, r in steps if w == "ARG" and r.startswith("PYTHON_IMAGE"))


def test_dockerignore_keeps_the_context_small_but_complete():
    rules = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    for needed in (".venv", ".git", "**/__pycache__"):
        assert needed in rules, needed
    for kept in ("pyproject.toml", "README.md", "mgeo", "worker", "producer"):
        assert kept not in rules and not any(r.rstrip("/") == kept for r in rules), kept


# ---- the compose specification ----------------------------------------------------------------

def test_compose_file_follows_the_compose_specification(compose):
    """Strict parse by the compose_spec Rust crate: unknown keys, bad enums, bad durations fail."""
    compose_spec = pytest.importorskip("compose_spec")
    parsed = compose_spec.PyCompose.from_json(json.dumps(compose))
    parsed.validate()
    assert set(parsed.service_names()) == set(compose["services"])
    broken = json.loads(json.dumps(compose))
    broken["services"]["worker"]["depends_on"]["kafka-init"]["condition"] = "service_done"
    with pytest.raises(ValueError):
        compose_spec.PyCompose.from_json(json.dumps(broken))
