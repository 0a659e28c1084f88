"""docker-compose.yml, its GPU override, the Dockerfiles and deploy/prometheus.yml, checked
without Docker.

The compose file is parsed as YAML (anchors and merge keys resolved) with its `${VAR:-default}`
variables replaced by their defaults, i.e. what `docker compose up` runs with no .env file.
Both variants are checked: the file alone (a CPU worker, for any machine) and the file with
docker-compose.gpu.yml merged over it as `docker compose -f ... -f ...` does (a GPU worker).
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
from mgeo.tools.cli import COMMANDS, main, settings_class

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
GPU_OVERRIDE = ROOT / "docker-compose.gpu.yml"
CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
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


def merge(base, override):
    """Compose's merge of a later -f file into an earlier one, for what the override holds:
    mappings merge key by key, anything else is replaced. (Compose appends some sequences,
    such as ports and volumes, instead; test_gpu_override_changes_only_the_worker_device
    checks the override has none.)"""
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for key, value in override.items():
            out[key] = merge(base[key], value) if key in base else value
        return out
    return override


def load(*files: Path) -> dict:
    merged: dict = {}
    for path in files:
        merged = merge(merged, yaml.safe_load(path.read_text(encoding="utf-8")))
    return interpolate(merged)


VARIANTS = {"cpu": (COMPOSE,), "gpu": (COMPOSE, GPU_OVERRIDE)}


@pytest.fixture(scope="module", params=list(VARIANTS))
def compose(request) -> dict:
    """`docker compose up` (a CPU worker), then with the GPU override merged in."""
    return load(*VARIANTS[request.param])


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

def _reserves_a_device(service: dict) -> bool:
    return bool(service.get("deploy", {}).get("resources", {}).get("reservations", {})
                .get("devices"))


def test_docker_compose_up_needs_no_gpu():
    """The file alone starts on a laptop: a CPU worker, nothing reserves a device, and its
    image takes torch's CPU build."""
    services = load(COMPOSE)["services"]
    worker = services["worker"]
    assert "profiles" not in worker
    assert env(worker)["MGEO_DEVICE"] == "cpu"
    assert not any(_reserves_a_device(s) for s in services.values())
    assert worker["build"]["args"]["TORCH_INDEX_URL"] == CPU_TORCH_INDEX
    assert "${TORCH_INDEX_URL:-" + CPU_TORCH_INDEX + "}" in COMPOSE.read_text(encoding="utf-8")


def test_gpu_override_puts_the_worker_on_a_gpu():
    worker = load(COMPOSE, GPU_OVERRIDE)["services"]["worker"]
    assert worker["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert env(worker)["MGEO_DEVICE"] == "cuda"
    assert worker["build"]["args"]["TORCH_INDEX_URL"] == "", "PyPI's CUDA build of torch"
    cpu = load(COMPOSE)["services"]["worker"]
    assert worker["image"] != cpu["image"], "the CPU and CUDA images must not overwrite each other"


def test_gpu_override_changes_only_the_worker_device():
    """Everything else (command, topics, volumes, ports, health, scaling) is the CPU worker's,
    so the docs' commands work the same with either; and the override holds no sequence that
    Compose would append to the base's (the merge above then is Compose's)."""
    override = yaml.safe_load(GPU_OVERRIDE.read_text(encoding="utf-8"))
    assert set(override) == {"services"} and set(override["services"]) == {"worker"}
    cpu, gpu = load(COMPOSE)["services"], load(COMPOSE, GPU_OVERRIDE)["services"]
    assert {k: v for k, v in cpu.items() if k != "worker"} == {
        k: v for k, v in gpu.items() if k != "worker"}
    differs = {k for k in set(cpu["worker"]) | set(gpu["worker"])
               if cpu["worker"].get(k) != gpu["worker"].get(k)}
    assert differs == {"image", "build", "environment", "deploy"}
    assert {k: v for k, v in env(cpu["worker"]).items() if k != "MGEO_DEVICE"} == {
        k: v for k, v in env(gpu["worker"]).items() if k != "MGEO_DEVICE"}

    def sequences(node, path=""):
        if isinstance(node, dict):
            for key, value in node.items():
                yield from sequences(value, f"{path}.{key}")
        elif isinstance(node, list):
            yield path
    base_worker = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))["services"]["worker"]
    for path in sequences(override["services"]["worker"]):
        node = base_worker
        for key in path.strip(".").split("."):
            node = node.get(key, {}) if isinstance(node, dict) else {}
        assert node == {}, f"{path} is a sequence in both files: Compose would append"


def test_operations_doc_shows_both_variants():
    text = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    assert "docker compose up -d\n" in text
    gpu = f"docker compose -f {COMPOSE.name} -f {GPU_OVERRIDE.name} up -d"
    assert gpu in text and gpu in COMPOSE.read_text(encoding="utf-8")
    assert f"COMPOSE_FILE={COMPOSE.name}:{GPU_OVERRIDE.name}" in text


def test_workers_run_the_mgeo_worker_command(services):
    assert set(worker_services(services)) == {"worker"}
    for svc in worker_services(services).values():
        assert argv(svc) == ["mgeo", "worker"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["mgeo"] == "mgeo.tools.cli:main"
    assert COMMANDS["worker"][0] == "mgeo.settings:WorkerSettings"


def help_flags(command: str, capsys) -> set[str]:
    """The flags `mgeo COMMAND --help` offers."""
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    return set(re.findall(r"(--[a-z][a-z0-9-]*)", capsys.readouterr().out))


def test_mgeo_worker_help_parses(capsys):
    assert "--bootstrap-servers" in help_flags("worker", capsys)


def test_the_tests_drive_the_same_worker_cli():
    """The suite runs `python -m mgeo.tools.cli worker`; the `mgeo` script is that same main()."""
    import inspect

    from conftest import WorkerProcess

    assert '"-m", "mgeo.tools.cli", "worker"' in inspect.getsource(WorkerProcess)


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
        cls = settings_class(command)
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
    assert checked >= 3  # the worker, the demo producer and collector


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
    assert sample == (ROOT / "tools" / "data" / "sample_pairs.csv").resolve()
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


def _mounts(service: dict) -> dict[str, Path]:
    """container path -> host path (relative ones resolved against the repository)."""
    out = {}
    for volume in service.get("volumes", []):
        host, container = volume.split(":")[:2]
        out[container] = (ROOT / host).resolve()
    return out


def test_kafka_exporter_gives_the_alerts_the_lag_without_the_workers(services):
    """MgeoWorkersAbsent reads the group's lag from kafka-exporter and the workers' `up` from
    their scrape job: both must be what compose runs (deploy/monitoring.py's COMPOSE wiring)."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("mgeo_deploy_monitoring_compose",
                                                  ROOT / "deploy" / "monitoring.py")
    monitoring = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = monitoring
    spec.loader.exec_module(monitoring)
    wiring = monitoring.COMPOSE

    exporter = services["kafka-exporter"]
    assert "profiles" not in exporter
    advertised = listeners(env(services["kafka"])["KAFKA_ADVERTISED_LISTENERS"])
    servers = [a.split("=", 1)[1] for a in argv(exporter) if a.startswith("--kafka.server=")]
    assert servers and set(servers) <= {f"{h}:{p}" for h, p in advertised.values()}
    assert exporter["depends_on"]["kafka-init"] == {"condition": "service_completed_successfully"}

    mounts = _mounts(services["prometheus"])
    config = yaml.safe_load(mounts["/etc/prometheus/prometheus.yml"].read_text(encoding="utf-8"))
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    (targets,) = [sc["targets"] for sc in jobs["kafka-exporter"]["static_configs"]]
    assert targets == ["kafka-exporter:9308"]
    worker = env(services["worker"])
    assert wiring.workers == 'job="mgeo-worker"' and "mgeo-worker" in jobs
    assert f'consumergroup="{worker["MGEO_GROUP_ID"]}"' in wiring.input_lag
    assert f'topic="{worker["MGEO_INPUT_TOPIC"]}"' in wiring.input_lag


def test_prometheus_loads_the_tested_alert_rules(services):
    import fnmatch

    prom = services["prometheus"]
    mounts = _mounts(prom)
    config = yaml.safe_load(mounts["/etc/prometheus/prometheus.yml"].read_text(encoding="utf-8"))
    loaded = [c for c in mounts for pattern in config["rule_files"]
              if fnmatch.fnmatch(c, pattern)]
    assert [mounts[c] for c in loaded] == [(ROOT / "deploy" / "alerts.yml").resolve()]
    rules = yaml.safe_load((ROOT / "deploy" / "alerts.yml").read_text(encoding="utf-8"))
    assert rules["groups"][0]["rules"], "deploy/alerts.yml holds the rules"


def test_grafana_provisions_the_dashboard_on_the_compose_prometheus(services):
    grafana = services["grafana"]
    assert re.fullmatch(r"grafana/grafana:\d+\.\d+\.\d+", grafana["image"]), "a pinned release"
    assert "profiles" not in grafana, "starts with `docker compose up`"
    assert grafana["depends_on"] == ["prometheus"]
    assert all(p.startswith("127.0.0.1:") for p in grafana["ports"])
    mounts = _mounts(grafana)
    provisioning = mounts["/etc/grafana/provisioning"]
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text(
        encoding="utf-8"))["datasources"]
    prom_port = services["prometheus"]["ports"][0].rsplit(":", 1)[1]
    assert source["type"] == "prometheus" and source["isDefault"] is True
    assert source["url"] == f"http://prometheus:{prom_port}"
    scrape = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())["global"]
    assert source["jsonData"]["timeInterval"] == scrape["scrape_interval"]
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "mgeo.yml").read_text(
        encoding="utf-8"))["providers"]
    dashboards = mounts[provider["options"]["path"]]
    assert dashboards == (ROOT / "deploy" / "grafana" / "dashboards").resolve()
    board = json.loads((dashboards / "mgeo-worker.json").read_text(encoding="utf-8"))
    assert board["uid"] == "mgeo-worker"
    home = env(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert mounts[home.rsplit("/", 1)[0]] / home.rsplit("/", 1)[1] == dashboards / "mgeo-worker.json"


def test_workers_can_run_several_processes(services):
    text = COMPOSE.read_text(encoding="utf-8")
    assert "MGEO_PROCESSES: ${MGEO_PROCESSES:-1}" in text
    for name, svc in worker_services(services).items():
        assert env(svc)["MGEO_PROCESSES"] == "1", name
    assert "processes" in settings_mod.WorkerSettings.model_fields


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
    assert any(w == "RUN" and "deploy/requirements/worker.txt" in r for w, r in steps), \
        "installs the worker's pinned dependencies"
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
    assert re.search(r"pip install (--[-a-z]+ )*/src", runs)
    assert "[worker]" not in runs and "torch" not in runs
    assert "deploy/requirements/producer.txt" in runs
    assert "torch" not in lock_pins(ROOT / "deploy/requirements/producer.txt")
    assert json.loads(last(steps, "ENTRYPOINT")) == ["mgeo"]
    assert last(steps, "USER").split(":")[0] not in ("root", "0")
    assert last(steps, "FROM").split()[0].startswith("${PYTHON_IMAGE}")
    assert "slim" in next(r for w, r in steps if w == "ARG" and r.startswith("PYTHON_IMAGE"))


# ---- pinned dependencies, cached apart from the source ------------------------------------------

LOCKS = {"Dockerfile": ROOT / "deploy/requirements/worker.txt",
         "Dockerfile.producer": ROOT / "deploy/requirements/producer.txt"}
IMAGE_PYTHON = re.search(r"python:(\d+\.\d+)", (ROOT / "Dockerfile").read_text()).group(1)


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][^\s;]*)", line)
        assert m, f"{path.name}: not an exact pin: {line!r}"
        name = canonical(m.group(1))
        assert name not in pins, f"{path.name}: {name} pinned twice"
        pins[name] = m.group(2)
    return pins


def ci_torch_pins() -> set[str]:
    """torch==X in .ci/run and in the README's install commands (CI runs exactly those)."""
    pins = set(re.findall(r"torch==([0-9][^\s'\"]*)", (ROOT / ".ci/run").read_text()))
    head = (ROOT / "README.md").read_text(encoding="utf-8").split("```")[1]
    pins |= set(re.findall(r"torch==([0-9][^\s'\"]*)", head))
    return pins


def test_worker_image_torch_is_the_version_ci_tests():
    (tested,) = ci_torch_pins()
    assert lock_pins(LOCKS["Dockerfile"])["torch"] == tested
    assert "pytorch/pytorch" not in (ROOT / "Dockerfile").read_text(), \
        "no base image with a torch of its own: the lock file decides the version"


@pytest.mark.parametrize("dockerfile", list(LOCKS))
def test_lock_pins_every_dependency_pyproject_asks_for(dockerfile):
    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wanted = list(project["project"]["dependencies"])
    if dockerfile == "Dockerfile":
        wanted += project["project"]["optional-dependencies"]["worker"]
    wanted += project["build-system"]["requires"]  # installed with --no-build-isolation
    pins = lock_pins(LOCKS[dockerfile])
    for text in wanted:
        req = Requirement(text)
        if req.marker and not req.marker.evaluate({"python_version": IMAGE_PYTHON}):
            continue  # not for the images' Python
        name = canonical(req.name)
        assert name in pins, f"{LOCKS[dockerfile].name} lacks {name}: run deploy/lock.py"
        assert req.specifier.contains(pins[name], prereleases=True), \
            f"{LOCKS[dockerfile].name}: {name}=={pins[name]} does not satisfy {text}"


@pytest.mark.parametrize("dockerfile", list(LOCKS))
def test_lock_is_what_the_tests_run_with(dockerfile):
    """The image ships the versions this suite passed with (torch compared without its
    +cpu/+cu local label). A failure means the environment moved: run deploy/lock.py."""
    import importlib.metadata as md

    drift = {}
    for name, pinned in lock_pins(LOCKS[dockerfile]).items():
        try:
            installed = md.version(name).split("+", 1)[0]
        except md.PackageNotFoundError:
            installed = None
        if installed != pinned:
            drift[name] = (pinned, installed)
    assert not drift, f"{LOCKS[dockerfile].name} (pinned, installed): {drift}; " \
                      "regenerate it with .venv/bin/python deploy/lock.py"


def _mount_options(run: str) -> list[dict[str, str]]:
    out = []
    for m in re.finditer(r"--mount=(\S+)", run):
        out.append(dict(kv.split("=", 1) if "=" in kv else (kv, "") for kv in m.group(1).split(",")))
    return out


@pytest.mark.parametrize("dockerfile", list(LOCKS))
def test_dependency_layer_sees_only_the_lock_file(dockerfile):
    """Docker caches a layer while its inputs are unchanged: the dependency install must not see
    the source tree (no COPY of it, no bind mount of the whole context), or every source change
    reinstalls torch. The package itself is installed afterwards, without dependencies."""
    stage_map = stages(ROOT / dockerfile)
    target = list(stage_map)[-1]
    steps = effective(stage_map, target)
    lock = str(LOCKS[dockerfile].relative_to(ROOT))
    (deps_at,) = [i for i, (w, r) in enumerate(steps) if w == "RUN" and lock in r]
    (src_at,) = [i for i, (w, r) in enumerate(steps)
                 if w == "RUN" and any(m.get("target") == "/src" for m in _mount_options(r))]
    assert deps_at < src_at
    for word, rest in steps[:deps_at]:
        assert word not in ("COPY", "ADD") or "--from=" in rest, (word, rest)
    binds = [m for m in _mount_options(steps[deps_at][1]) if m.get("type") == "bind"]
    assert binds and all(m.get("source") == lock for m in binds), binds
    source_install = steps[src_at][1]
    assert "--no-deps" in source_install and "--no-build-isolation" in source_install
    assert "pip check" in source_install


def _ignored(path: str, rules: list[str]) -> bool:
    """.dockerignore semantics: the last rule matching the path or a parent of it decides."""
    import fnmatch

    parts = path.split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    ignored = False
    for rule in rules:
        negate = rule.startswith("!")
        pattern = rule[1:] if negate else rule
        if any(fnmatch.fnmatch(c, pattern) for c in candidates):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_the_lock_files_in_the_context():
    rules = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    for lock in LOCKS.values():
        assert not _ignored(str(lock.relative_to(ROOT)), rules), lock
    assert _ignored("deploy/monitoring.py", rules) and _ignored("helm/mgeo-worker", rules)


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
    parsed.validate()  # the file alone, and with the GPU override merged in
    assert set(parsed.service_names()) == set(compose["services"])
    broken = json.loads(json.dumps(compose))
    broken["services"]["worker"]["depends_on"]["kafka-init"]["condition"] = "service_done"
    with pytest.raises(ValueError):
        compose_spec.PyCompose.from_json(json.dumps(broken))
