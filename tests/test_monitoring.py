"""Alerting rules and the Grafana dashboard (deploy/monitoring.py), checked with the real tools.

- `promtool check rules` and `promtool test rules` (deploy/alerts.test.yml: every alert shown
  firing and staying quiet);
- the committed outputs (deploy/ and the chart's files/) are exactly what the builder makes;
- a real Prometheus on loopback scrapes a real worker fed through the broker, and every
  dashboard query and every alert's query part returns data, so no panel or alert is silently
  empty because a metric is missing or renamed.

promtool and prometheus come from Debian's `prometheus` package (`apt-get install prometheus`;
.ci/run, the README's test command, installs it when missing). Without them these tests fail
rather than skip.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import worker_env

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
RULES = DEPLOY / "alerts.yml"
RULE_TESTS = DEPLOY / "alerts.test.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "mgeo-worker.json"


def _load_builder():
    spec = importlib.util.spec_from_file_location("mgeo_deploy_monitoring",
                                                  DEPLOY / "monitoring.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


monitoring = _load_builder()


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: run .ci/run, or `apt-get install prometheus` "
                    f"(Debian's package brings prometheus and promtool)")
    return path


def run_promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([tool("promtool"), *args], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


# ---- the generated files ----------------------------------------------------------------------

def test_committed_outputs_are_what_the_builder_makes():
    for path, text in monitoring.outputs().items():
        assert path.is_file(), f"{path} is missing: run python deploy/monitoring.py"
        assert path.read_text(encoding="utf-8") == text, \
            f"{path.relative_to(ROOT)} is stale: run python deploy/monitoring.py"


def test_builder_check_mode_agrees():
    assert monitoring.main(["--check"]) == 0


# ---- promtool -------------------------------------------------------------------------------

def chart_rule_file(tmp_path: Path, values: dict | None = None) -> Path:
    """The rules the chart installs (its PrometheusRule's spec, placeholders filled from its
    values), as a rule file."""
    from test_helm import FULL_CLUSTER, render_raw

    import helm_python as helm

    values = {"metrics": {"prometheusRule": {"enabled": True}}, **(values or {})}
    with helm.Chart.load(ROOT / "helm" / "mgeo-worker") as chart:
        text = render_raw(chart, values, FULL_CLUSTER)["mgeo-worker/templates/prometheusrule.yaml"]
    path = tmp_path / "chart-alerts.yml"
    path.write_text(yaml.safe_dump(yaml.safe_load(text)["spec"]), encoding="utf-8")
    return path


@pytest.mark.parametrize("source", ["deploy", "chart"])
def test_rules_pass_promtool_check(source, tmp_path):
    path = RULES if source == "deploy" else chart_rule_file(tmp_path)
    done = run_promtool("check", "rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(monitoring.all_alerts())} rules found" in done.stdout


def test_compose_prometheus_config_passes_promtool(tmp_path):
    """deploy/prometheus.yml, with its rule_files pointed at where compose mounts the rules
    from, so promtool checks the rules it would load too."""
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text(encoding="utf-8"))
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yml"]
    config["rule_files"] = [str(RULES)]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    done = run_promtool("check", "config", str(tmp_path / "prometheus.yml"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(monitoring.all_alerts())} rules found" in done.stdout


def test_rule_unit_tests_pass():
    done = run_promtool("test", "rules", str(RULE_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_rule_unit_tests_catch_a_broken_threshold(tmp_path):
    """The unit tests are not vacuous: raising every threshold a hundredfold makes them fail."""
    import re

    broken = re.sub(r"\) > ([0-9.]+)", lambda m: f") > {float(m.group(1)) * 100:g}",
                    RULES.read_text(encoding="utf-8"))
    assert broken != RULES.read_text(encoding="utf-8")
    (tmp_path / "alerts.yml").write_text(broken, encoding="utf-8")
    shutil.copy(RULE_TESTS, tmp_path / "alerts.test.yml")
    done = run_promtool("test", "rules", str(tmp_path / "alerts.test.yml"))
    assert done.returncode != 0
    for alert in monitoring.ALERTS:
        # `== 0` and `> 0` have no threshold to raise
        if alert.name not in ("MgeoWorkerNotReady", "MgeoWorkerNotReading"):
            assert f"alertname: {alert.name}," in done.stdout + done.stderr, alert.name


def test_every_alert_is_unit_tested_firing_and_quiet():
    tests = yaml.safe_load(RULE_TESTS.read_text(encoding="utf-8"))
    assert tests["rule_files"] == [RULES.name]
    fires, quiet = set(), set()
    for case in tests["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {a.name for a in monitoring.all_alerts()}
    assert names - fires == set(), f"alerts never shown firing: {names - fires}"
    assert names - quiet == set(), f"alerts never shown quiet: {names - quiet}"


def test_rules_file_is_the_alert_definitions():
    groups = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    assert [(g["name"], [r["alert"] for r in g["rules"]]) for g in groups] == [
        ("mgeo-worker", [a.name for a in monitoring.ALERTS]),
        ("mgeo-fleet", [a.name for a in monitoring.fleet_alerts(monitoring.COMPOSE)])]
    by_name = {r["alert"]: r for g in groups for r in g["rules"]}
    for alert in monitoring.all_alerts():
        rule = by_name[alert.name]
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        for query in alert.queries:
            assert query in rule["expr"], (alert.name, query)


# ---- alerts for a fleet that is gone, and runbooks -------------------------------------------

OPERATIONS = ROOT / "docs" / "operations.md"


def test_fleet_alerts_need_nothing_from_a_worker():
    """They must fire when no worker publishes a single series: no mgeo_* metric in them."""
    for alert in monitoring.fleet_alerts(monitoring.COMPOSE):
        assert "mgeo_" not in alert.expr, alert.name
    absent = monitoring.fleet_alerts(monitoring.COMPOSE)[0]
    assert "kafka_consumergroup_lag_sum" in absent.expr and "up{" in absent.expr


@pytest.mark.parametrize("alert,mutation", [
    # Without "unless a worker is up", a degraded but running fleet would page.
    ("MgeoWorkersAbsent", (' unless on() (up{job="mgeo-worker"} == 1)', "")),
    # Another consumer group's lag is not ours, nor our group's on another topic.
    ("MgeoWorkersAbsent", ('consumergroup="mgeo-workers", ', "")),
    ("MgeoWorkersAbsent", (', topic="address-pairs"', "")),
    # Any job's failed scrape is not a worker's.
    ("MgeoWorkerScrapeFailing", ('up{job="mgeo-worker"} == 0', "up == 0")),
    # A worker loading its model is not failing.
    ("MgeoWorkerScrapeFailing", ("for: 15m", "for: 5m")),
])
def test_fleet_rule_tests_catch_a_broken_rule(tmp_path, alert, mutation):
    text = RULES.read_text(encoding="utf-8")
    old, new = mutation
    assert text.count(old) >= 1, old
    section = text.split(f"- alert: {alert}\n", 1)
    (tmp_path / "alerts.yml").write_text(
        section[0] + f"- alert: {alert}\n" + section[1].replace(old, new, 1), encoding="utf-8")
    shutil.copy(RULE_TESTS, tmp_path / "alerts.test.yml")
    done = run_promtool("test", "rules", str(tmp_path / "alerts.test.yml"))
    assert done.returncode != 0
    assert f"alertname: {alert}," in done.stdout + done.stderr


def heading_anchors(markdown: str) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces to -."""
    out = set()
    for line in markdown.splitlines():
        m = re.match(r"#{1,6} (.+)", line)
        if m:
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            out.add(slug)
    return out


def test_every_alert_links_its_runbook_section():
    anchors = heading_anchors(OPERATIONS.read_text(encoding="utf-8"))
    groups = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert len(rules) == len(monitoring.all_alerts())
    for rule in rules:
        url = rule["annotations"]["runbook_url"]
        page, _, anchor = url.partition("#")
        assert page == "docs/operations.md", url
        assert anchor in anchors, f"{rule['alert']}: docs/operations.md has no #{anchor}"


def test_every_runbook_says_what_it_means_what_to_check_and_what_to_do():
    text = OPERATIONS.read_text(encoding="utf-8")
    for alert in monitoring.all_alerts():
        head = f"### {alert.name}\n"
        assert head in text, alert.name
        body = text.split(head, 1)[1].split("\n### ", 1)[0].split("\n## ", 1)[0]
        for part in ("**What it means.**", "**What to check.**", "**What to do.**"):
            assert part in body, f"{alert.name}: no {part}"


# ---- the dashboard --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def board() -> dict:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def test_dashboard_panels_are_well_formed(board):
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)) and 0 not in ids
    assert board["uid"] == monitoring.DASHBOARD_UID
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("job", "instance"):
        assert variables[name]["allValue"] == ".*", "All must match series without the label"
    cells = set()
    for panel in board["panels"]:
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps another panel"
                cells.add((x, y))
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)) and all(refs), panel["title"]
        for target in panel["targets"]:
            assert 'job=~"$job"' in target["expr"], (panel["title"], target["expr"])


def test_dashboard_shows_what_operators_need(board):
    """The issue's list: throughput, p99 end-to-end latency, lag per partition, batch size and
    tokens, padding efficiency, GPU memory, cache hit rate."""
    exprs = "\n".join(expr for _, expr in monitoring.dashboard_queries(board))
    for needle in ("rate(mgeo_pairs_scored_total", "histogram_quantile(0.99",
                   "mgeo_end_to_end_seconds_bucket", "by (partition) (mgeo_consumer_lag{",
                   "mgeo_batch_pairs_", "mgeo_batch_tokens_",
                   "rate(mgeo_tokens_total", "rate(mgeo_padded_tokens_total",
                   "mgeo_gpu_memory_bytes", "rate(mgeo_cache_hits_total",
                   "rate(mgeo_cache_lookups_total"):
        assert needle in exprs, needle


# ---- a real Prometheus scraping a real worker -------------------------------------------------

def _http_json(url: str, timeout: float = 5.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read().decode())


class Prometheus:
    """A Prometheus server on loopback scraping one target every second, with the rules."""

    def __init__(self, tmp: Path, target: str, rules: Path):
        from mgeo.tools.broker import free_port

        self.port = free_port()
        config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s",
                             "scrape_timeout": "900ms"},
                  "rule_files": [str(rules)],
                  "scrape_configs": [{"job_name": "mgeo-worker",
                                      "static_configs": [{"targets": [target]}]}]}
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = tmp / "prometheus.log"
        self._log = self.log.open("w")
        self.proc = subprocess.Popen(
            [tool("prometheus"), f"--config.file={tmp / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}",
             "--log.level=warn"], stdout=self._log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 30) -> None:
        self.until(lambda: self._get("/-/ready") is not None, timeout, "Prometheus ready")

    def _get(self, path: str):
        try:
            with urllib.request.urlopen(self.url + path, timeout=2) as r:
                return r.read().decode()
        except (urllib.error.URLError, OSError):
            return None

    def query(self, expr: str) -> list[dict]:
        got = _http_json(f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        assert got["status"] == "success", got
        return got["data"]["result"]

    def until(self, pred, timeout: float, what: str):
        """Poll Prometheus' API (there is nothing to wait on but its answers), bounded."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited:\n{self.log.read_text()[-3000:]}")
            got = pred()
            if got:
                return got
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.25)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


# Grafana's variables as the dashboard's "All" sends them, and a rate window that holds
# several 1 s scrapes (Grafana's $__rate_interval is at least 4 scrape intervals).
GRAFANA_VARIABLES = {"$__rate_interval": "15s", "$job": ".*", "$instance": ".*"}


def as_sent(expr: str) -> str:
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, f"unsubstituted variable in {expr}"
    return expr


@pytest.mark.broker
@pytest.mark.slow
@pytest.mark.parametrize("processes", [1, 2], ids=["one process", "two processes"])
def test_every_dashboard_query_and_alert_returns_data(bootstrap, topics, tiny_model,
                                                     start_worker, tmp_path, board, processes):
    """With two processes in the container every series also carries `process`; the panels
    and rules must still aggregate them into one worker and one group."""
    from confluent_kafka import Producer

    from mgeo import wire
    from mgeo.tools.broker import free_port

    tool("promtool")
    port = free_port()
    worker = start_worker(worker_env(bootstrap, topics, tiny_model,
                                     MGEO_METRICS_PORT=str(port), MGEO_STATS_INTERVAL_MS="500",
                                     MGEO_CACHE_SIZE="1000", MGEO_MAX_ADDRESS_CHARS="64",
                                     MGEO_PROCESSES=str(processes), MGEO_THREADS="1"))
    prom = Prometheus(tmp_path, f"127.0.0.1:{port}", RULES)
    try:
        prom.wait_ready()
        worker.wait_for(r"assigned [1-9]\d* partitions", 90)
        prom.until(lambda: prom.query(f"sum(mgeo_ready) == {processes}"), 60,
                   f"a scrape of {processes} ready worker process(es)\n{worker.log()}")
        if processes > 1:
            labels = {s["metric"].get("process") for s in prom.query("mgeo_ready")}
            assert labels == {str(n) for n in range(processes)}, labels

        # Requests (each pair twice: cache hits), one over-long address (an error result) and
        # one message without an id (a dead letter).
        p = Producer({"bootstrap.servers": bootstrap})
        pairs = 120
        for i in range(pairs):
            p.produce(topics["input"], key=str(i).encode(), value=wire.encode_request(
                str(i), "成都市武侯区天府大道100号", f"天府大道{i % (pairs // 2)}号"))
        p.produce(topics["input"], key=b"long",
                  value=wire.encode_request("long", "北" * 100, "京"))
        p.produce(topics["input"], key=b"bad", value=b"not json")
        assert p.flush(30) == 0
        answers = pairs + 2
        prom.until(lambda: prom.query(f"sum(mgeo_answers_delivered_total) >= {answers}"), 60,
                   f"{answers} answers in Prometheus\n{worker.log()}")

        queries = [(f"panel {title!r}", as_sent(expr))
                   for title, expr in monitoring.dashboard_queries(board)]
        queries += [(f"alert {a.name}", q) for a in monitoring.all_alerts() for q in a.queries]
        empty = {}
        deadline = time.monotonic() + 20
        for what, expr in queries:
            while not prom.query(expr):  # lag gauges follow librdkafka's statistics interval
                if time.monotonic() > deadline:
                    empty[what] = expr
                    break
                time.sleep(0.25)
        assert not empty, "queries that returned no data:\n" + "\n".join(
            f"  {what}: {expr}" for what, expr in empty.items())

        # The template variables find the worker.
        for var in ("job", "instance"):
            values = _http_json(f"{prom.url}/api/v1/label/{var}/values?"
                                + urllib.parse.urlencode({"match[]": "mgeo_ready"}))["data"]
            assert values, var

        # Prometheus evaluated every alerting rule without an error.
        def evaluated():
            groups = _http_json(f"{prom.url}/api/v1/rules")["data"]["groups"]
            rules = [r for g in groups for r in g["rules"]]
            if len(rules) == len(monitoring.all_alerts()) and all(
                    r.get("lastEvaluation", "").startswith("20") for r in rules):
                return rules
            return None

        rules = prom.until(evaluated, 15, "every rule evaluated")
        bad = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
        assert not bad, bad
    finally:
        prom.stop()
    assert worker.stop() == 0, worker.log()
