"""Alerting rules and the Grafana dashboard of the MGeo worker fleet, built in code.

    python deploy/monitoring.py           # write every output below
    python deploy/monitoring.py --check   # exit 1 when an output is not what this file builds

Outputs (committed: compose and the chart read the files, not this script):

    deploy/alerts.yml                                  Prometheus rule file (compose mounts it)
    deploy/grafana/dashboards/mgeo-worker.json         Grafana dashboard (compose provisions it)
    helm/mgeo-worker/files/alerts.yml                  the same rules, for the chart's PrometheusRule,
                                                       its wiring left as placeholders (CHART)
    helm/mgeo-worker/files/mgeo-worker-dashboard.json  the same dashboard, for the chart's ConfigMap

The alert rules' unit tests are deploy/alerts.test.yml (`promtool test rules`). Every alert and
every dashboard query is also evaluated against a real Prometheus scraping a real worker in
tests/test_monitoring.py, so a renamed metric cannot leave a panel or an alert silently empty.
Every alert links its section of docs/operations.md (`runbook_url`).

Two groups: `mgeo-worker` reads what the workers publish; `mgeo-fleet` notices workers that
are gone, so it cannot: it reads the input topic's lag from kafka-exporter and the workers'
`up` series, which depend on the deployment (Wiring: compose's below, the chart's from values).

Labels: the rules aggregate `by (namespace, job)`, the fleet as one consumer group. In compose
`job` is `mgeo-worker` and there is no `namespace`; in Kubernetes (ServiceMonitor) `job` is the
release's metrics Service. `instance` is one container or pod; with `--processes N` every series
also carries `process="0".."N-1"`, which the rules and panels sum away or keep as noted.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
CHART_FILES = ROOT / "helm" / "mgeo-worker" / "files"
DASHBOARD_UID = "mgeo-worker"

# ---- alerts -------------------------------------------------------------------------------------

FLEET = "namespace, job"  # one consumer group: a release (Kubernetes) or the compose project


@dataclass(frozen=True)
class Alert:
    """One alerting rule: `expr` is built from `queries` (each returns a value per series) so
    the tests can evaluate every query part on its own and see that it returns data."""

    name: str
    queries: tuple[str, ...]
    expr: str
    for_: str
    severity: str
    summary: str
    description: str
    labels: dict = field(default_factory=dict)


_LAG = f"sum by ({FLEET}) (mgeo_consumer_lag_total)"
_LAG_TREND = f"sum by ({FLEET}) (deriv(mgeo_consumer_lag_total[10m]))"
_DLQ_SHARE = (f"sum by ({FLEET}) (rate(mgeo_dead_letters_total[5m]))"
              f" / sum by ({FLEET}) (rate(mgeo_messages_consumed_total[5m]))")
_ERROR_SHARE = (f"sum by ({FLEET}) (rate(mgeo_error_results_total[5m]))"
                f" / sum by ({FLEET}) (rate(mgeo_messages_consumed_total[5m]))")
_OOM = f"sum by ({FLEET}, instance) (increase(mgeo_oom_retries_total[15m]))"
_ABORTS = f"sum by ({FLEET}) (increase(mgeo_transaction_aborts_total[15m]))"
_TICK_AGE = "time() - mgeo_loop_last_tick_timestamp_seconds"
_STALLED = f"sum by ({FLEET}, instance) (mgeo_partitions_stalled)"

ALERTS: tuple[Alert, ...] = (
    Alert(
        "MgeoConsumerLagGrowing", (_LAG, _LAG_TREND),
        f"({_LAG}) > 10000 and ({_LAG_TREND}) > 0", "15m", "warning",
        "MGeo workers of {{ $labels.job }} are falling behind",
        "The consumer group's lag is {{ $value | humanize }} messages and has grown for 15 "
        "minutes: the workers score fewer pairs than arrive. Check that every worker is ready "
        "and busy (lag per partition on the dashboard); if they are, add replicas, or "
        "partitions and GPUs together when replicas already equal the partitions."),
    Alert(
        "MgeoWorkerNotReady", ("mgeo_ready",),
        "mgeo_ready == 0", "10m", "warning",
        "MGeo worker {{ $labels.instance }} has not been ready for 10 minutes",
        "The worker serves /metrics but has not joined its consumer group (mgeo_ready is 0). "
        "Look at its log for Kafka errors (unreachable brokers, authentication, a fenced "
        "transactional id)."),
    Alert(
        "MgeoDeadLetters", (_DLQ_SHARE,),
        f"({_DLQ_SHARE}) > 0.01", "10m", "warning",
        "{{ $value | humanizePercentage }} of the requests to {{ $labels.job }} go to the "
        "dead-letter topic",
        "More than 1% of the messages read for 10 minutes had no usable id and went to the "
        "dead-letter topic. A producer is writing something other than address-pair requests "
        "to the input topic; read a few dead letters to find which."),
    Alert(
        "MgeoErrorResults", (_ERROR_SHARE,),
        f"({_ERROR_SHARE}) > 0.05", "10m", "warning",
        "{{ $value | humanizePercentage }} of the requests to {{ $labels.job }} get an error "
        "result",
        "More than 5% of the requests for 10 minutes were answered with an error result "
        "(malformed or over-long addresses, bad fields). The answers say why, in their "
        "`error` field."),
    Alert(
        "MgeoOutOfMemoryBackoffs", (_OOM,),
        f"({_OOM}) > 3", "0s", "warning",
        "MGeo worker {{ $labels.instance }} keeps running out of GPU memory",
        "{{ $value | humanize }} model batches were retried smaller after running out of "
        "memory in 15 minutes. Something else is using the GPU, or the token budget "
        "(--token-budget, --memory-fraction) is too large for it."),
    Alert(
        "MgeoTransactionAborts", (_ABORTS,),
        f"({_ABORTS}) > 3", "0s", "warning",
        "MGeo workers of {{ $labels.job }} keep aborting transactions",
        "{{ $value | humanize }} transactions were aborted in 15 minutes (exactly-once): their "
        "inputs are read and scored again. Look for fenced producers (two workers with one "
        "transactional id), rebalances or broker errors in the workers' logs."),
    Alert(
        "MgeoLoopStalled", (_TICK_AGE,),
        f"({_TICK_AGE}) > 60", "1m", "critical",
        "The Kafka loop of MGeo worker {{ $labels.instance }} is stuck",
        "The worker's Kafka loop has not ticked for {{ $value | humanizeDuration }}: it reads, "
        "commits and answers nothing, and its partitions stay with it. Kubernetes restarts it "
        "(liveness probe on /healthz); elsewhere restart it and keep its log."),
    Alert(
        "MgeoWorkerNotReading", (_STALLED,),
        f"({_STALLED}) > 0", "1m", "critical",
        "MGeo worker {{ $labels.instance }} holds partitions it does not read",
        "The worker holds {{ $value }} input partition(s) with messages waiting and has read "
        "none of them for --liveness-timeout seconds, though it is not paused by "
        "back-pressure: their requests go unanswered while its loop and /readyz look fine. "
        "/healthz fails, so Kubernetes restarts it; elsewhere restart it, and keep its log "
        "(its error line names the partitions)."),
)


# ---- alerts for a fleet that is gone ------------------------------------------------------------

@dataclass(frozen=True)
class Wiring:
    """What the `mgeo-fleet` rules select, which only the deployment knows."""

    workers: str    # label matchers of the workers' scrape targets (their `up` series)
    input_lag: str  # PromQL: the group's lag on the input topic, from something not the workers
    lag_floor: str  # lag at or under which no worker need run (KEDA's activation threshold)
    runbooks: str   # where docs/operations.md is served; each alert links its section


# Compose: the `mgeo-worker` scrape job of deploy/prometheus.yml and the kafka-exporter service.
COMPOSE = Wiring(
    workers='job="mgeo-worker"',
    input_lag='sum(kafka_consumergroup_lag_sum{consumergroup="mgeo-workers", '
              'topic="address-pairs"})',
    lag_floor="0",
    runbooks="docs/operations.md")
# The chart's copy: templates/prometheusrule.yaml replaces each with what its values give.
CHART = Wiring("__MGEO_WORKERS__", "__MGEO_INPUT_LAG__", "__MGEO_LAG_FLOOR__",
               "__MGEO_RUNBOOKS__")


def fleet_alerts(w: Wiring) -> tuple[Alert, ...]:
    """Alerts that must fire when no worker publishes anything: none of their data comes from
    a worker's /metrics."""
    up = f"up{{{w.workers}}}"
    return (
        Alert(
            "MgeoWorkersAbsent", (f"{up} == 1",),
            f"({w.input_lag}) > {w.lag_floor} unless on() ({up} == 1)", "10m", "critical",
            "No MGeo worker is running while {{ $value | humanize }} messages wait",
            "The consumer group has a lag of {{ $value | humanize }} messages on the input "
            "topic (read from Kafka, not from the workers) and for 10 minutes no worker has "
            "answered a scrape: nothing is scoring. The workers are scaled to zero, crash before "
            "their metrics server starts, cannot be scheduled, or are not scraped."),
        Alert(
            "MgeoWorkerScrapeFailing", (up,),
            f"{up} == 0", "15m", "warning",
            "Prometheus cannot scrape MGeo worker {{ $labels.instance }}",
            "The worker's /metrics has not answered for 15 minutes, longer than a model load "
            "may take: it is crash-looping, stuck before its metrics server starts, or its "
            "metrics port is unreachable. Its partitions may sit unread."),
    )


def all_alerts(w: Wiring = COMPOSE) -> tuple[Alert, ...]:
    return ALERTS + fleet_alerts(w)


def runbook_anchor(name: str) -> str:
    """The section of docs/operations.md an alert links: its `### Name` heading's anchor."""
    return name.lower()


def _rules(alerts: tuple[Alert, ...], w: Wiring) -> list[dict]:
    rules = []
    for a in alerts:
        rule: dict = {"alert": a.name, "expr": a.expr}
        if a.for_ != "0s":
            rule["for"] = a.for_
        rule["labels"] = {"severity": a.severity, **a.labels}
        rule["annotations"] = {"summary": a.summary, "description": a.description,
                               "runbook_url": f"{w.runbooks}#{runbook_anchor(a.name)}"}
        rules.append(rule)
    return rules


def rule_file(w: Wiring = COMPOSE) -> dict:
    return {"groups": [{"name": "mgeo-worker", "rules": _rules(ALERTS, w)},
                       {"name": "mgeo-fleet", "rules": _rules(fleet_alerts(w), w)}]}


def rule_file_text(w: Wiring = COMPOSE) -> str:
    head = ("# Alerting rules of the MGeo worker fleet. GENERATED by deploy/monitoring.py: edit "
            "it there and\n# run `python deploy/monitoring.py`. Unit tests: "
            "deploy/alerts.test.yml (`promtool test rules`).\n")
    if w == CHART:
        head += ("# The chart's copy: templates/prometheusrule.yaml replaces the __MGEO_*__ "
                 "placeholders with what its values give.\n")
    return head + yaml.safe_dump(rule_file(w), sort_keys=False, allow_unicode=True,
                                 width=10_000)


# ---- dashboard ----------------------------------------------------------------------------------

# Every panel selects the fleet through these variables; "All" is a match-anything regex, so
# series without the label (compose has no namespace) still match.
SEL = 'job=~"$job", instance=~"$instance"'
RATE = "$__rate_interval"


def _q(expr: str) -> str:
    return expr.replace("{SEL}", "{" + SEL + "}").replace("[RATE]", f"[{RATE}]")


@dataclass(frozen=True)
class Panel:
    title: str
    kind: str  # timeseries | stat
    unit: str
    targets: tuple[tuple[str, str], ...]  # (expr, legend)
    description: str = ""
    width: int = 12
    height: int = 8


ROWS: tuple[tuple[str, tuple[Panel, ...]], ...] = (
    ("Overview", (
        Panel("Ready workers", "stat", "none",
              ((_q("sum(mgeo_ready{SEL})"), "ready"),),
              "Worker processes that joined the consumer group.", width=6, height=4),
        Panel("Pairs scored / s", "stat", "ops",
              ((_q("sum(rate(mgeo_pairs_scored_total{SEL}[RATE]))"), "pairs/s"),),
              width=6, height=4),
        Panel("Consumer lag", "stat", "short",
              ((_q("sum(mgeo_consumer_lag_total{SEL})"), "lag"),),
              "Messages behind the end of the input topic, summed over the partitions.",
              width=6, height=4),
        Panel("p99 end-to-end latency", "stat", "s",
              ((_q("histogram_quantile(0.99, sum by (le) "
                   "(rate(mgeo_end_to_end_seconds_bucket{SEL}[RATE])))"), "p99"),),
              width=6, height=4),
    )),
    ("Throughput and latency", (
        Panel("Throughput", "timeseries", "ops", (
            (_q("sum(rate(mgeo_messages_consumed_total{SEL}[RATE]))"), "messages read"),
            (_q("sum(rate(mgeo_pairs_scored_total{SEL}[RATE]))"), "pairs scored"),
            (_q("sum(rate(mgeo_answers_delivered_total{SEL}[RATE]))"), "answers delivered"),
        ), "Per second, the whole fleet."),
        Panel("End-to-end latency", "timeseries", "s", (
            (_q("histogram_quantile(0.5, sum by (le) "
                "(rate(mgeo_end_to_end_seconds_bucket{SEL}[RATE])))"), "p50"),
            (_q("histogram_quantile(0.99, sum by (le) "
                "(rate(mgeo_end_to_end_seconds_bucket{SEL}[RATE])))"), "p99"),
        ), "From a request's Kafka timestamp to the delivery of its answer."),
        Panel("Inference call duration", "timeseries", "s", (
            (_q("histogram_quantile(0.5, sum by (le) "
                "(rate(mgeo_inference_seconds_bucket{SEL}[RATE])))"), "p50"),
            (_q("histogram_quantile(0.99, sum by (le) "
                "(rate(mgeo_inference_seconds_bucket{SEL}[RATE])))"), "p99"),
        ), "Tokenizing plus every model batch of one inference call."),
        Panel("Errors, dead letters, retries", "timeseries", "ops", (
            (_q("sum(rate(mgeo_error_results_total{SEL}[RATE]))"), "error results"),
            (_q("sum(rate(mgeo_dead_letters_total{SEL}[RATE]))"), "dead letters"),
            (_q("sum(rate(mgeo_delivery_retries_total{SEL}[RATE]))"), "delivery retries"),
            (_q("sum(rate(mgeo_answers_substituted_total{SEL}[RATE]))"),
             "answers substituted"),
        ), "Per second. Substituted: answers replaced by a bounded one after a permanent "
           "delivery error."),
    )),
    ("Kafka", (
        Panel("Consumer lag per partition", "timeseries", "short", (
            (_q("max by (partition) (mgeo_consumer_lag{SEL})"), "partition {{partition}}"),
        ), "As each partition's owner sees it (librdkafka statistics)."),
        Panel("Partitions and in-flight requests", "timeseries", "short", (
            (_q("sum by (instance) (mgeo_assigned_partitions{SEL})"),
             "partitions {{instance}}"),
            (_q("sum by (instance) (mgeo_inflight_requests{SEL})"), "in flight {{instance}}"),
            (_q("sum by (instance) (mgeo_partitions_stalled{SEL})"), "stalled {{instance}}"),
        ), "Stalled: partitions held with messages to read and not read for --liveness-timeout "
           "seconds though not paused by back-pressure (/healthz fails)."),
        Panel("Rebalances, commits, aborted transactions", "timeseries", "short", (
            (_q("sum by (kind) (increase(mgeo_rebalances_total{SEL}[RATE]))"), "{{kind}}"),
            (_q("sum(increase(mgeo_commits_total{SEL}[RATE]))"), "commits"),
            (_q("sum(increase(mgeo_transaction_aborts_total{SEL}[RATE]))"), "aborts"),
        ), "Events per interval."),
        Panel("Seconds since the Kafka loop ticked", "timeseries", "s", (
            (_q("max by (instance) (time() - mgeo_loop_last_tick_timestamp_seconds{SEL})"),
             "{{instance}}"),
        ), "Near zero on a healthy worker; /healthz fails after --liveness-timeout."),
    )),
    ("Model batches", (
        Panel("Pairs per model batch", "timeseries", "short", (
            (_q("sum(rate(mgeo_batch_pairs_sum{SEL}[RATE])) "
                "/ sum(rate(mgeo_batch_pairs_count{SEL}[RATE]))"), "mean"),
            (_q("histogram_quantile(0.95, sum by (le) "
                "(rate(mgeo_batch_pairs_bucket{SEL}[RATE])))"), "p95"),
        )),
        Panel("Tokens per model batch", "timeseries", "short", (
            (_q("sum(rate(mgeo_batch_tokens_sum{SEL}[RATE])) "
                "/ sum(rate(mgeo_batch_tokens_count{SEL}[RATE]))"), "mean"),
            (_q("max(mgeo_token_budget{SEL})"), "token budget"),
        ), "Padded tokens, or the real ones of packed batches. The budget shrinks after an "
           "out-of-memory back-off and grows back."),
        Panel("Padding efficiency", "timeseries", "percentunit", (
            (_q("sum(rate(mgeo_tokens_total{SEL}[RATE])) "
                "/ sum(rate(mgeo_padded_tokens_total{SEL}[RATE]))"), "real / padded tokens"),
        ), "Share of the model's work spent on real tokens rather than padding (1.0 with packed "
           "batches, the CPU default, which pad only inside attention)."),
        Panel("Pipeline queues", "timeseries", "short", (
            (_q("sum by (stage) (mgeo_stage_queue{SEL})"), "{{stage}}"),
        ), "Work waiting at each stage (intake: requests; prepared, scored: batches). On a GPU, "
           "under load a full `prepared` queue means the model is the limit and an empty one the "
           "host. On a CPU a batch is prepared only when one of the model's lanes is free, so "
           "there a growing `intake` is the sign that the model is the limit."),
        Panel("Out-of-memory back-offs", "timeseries", "short", (
            (_q("sum by (instance) (increase(mgeo_oom_retries_total{SEL}[RATE]))"),
             "{{instance}}"),
        ), "Model batches retried smaller, per interval."),
    )),
    ("Resources", (
        Panel("GPU memory", "timeseries", "bytes", (
            (_q("sum by (instance, kind) (mgeo_gpu_memory_bytes{SEL})"), "{{kind}} {{instance}}"),
        ), "Held through torch: allocated by tensors, reserved by the caching allocator."),
        Panel("Cache hit rate", "timeseries", "percentunit", (
            (_q("sum(rate(mgeo_cache_hits_total{SEL}[RATE])) "
                "/ sum(rate(mgeo_cache_lookups_total{SEL}[RATE]))"), "hit rate"),
        ), "Pairs answered from the --cache-size LRU cache."),
        Panel("Tokenizing vs inference time", "timeseries", "percentunit", (
            (_q("sum(rate(mgeo_tokenize_seconds_total{SEL}[RATE])) "
                "/ sum(rate(mgeo_inference_seconds_sum{SEL}[RATE]))"), "tokenize / inference"),
        ), "Near 100% the host, not the model, is the limit: raise the CPUs per worker."),
    )),
)


def dashboard() -> dict:
    from grafana_foundation_sdk.builders import common as cb
    from grafana_foundation_sdk.builders import dashboard as db
    from grafana_foundation_sdk.builders import prometheus, stat, timeseries
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models import common as cm
    from grafana_foundation_sdk.models import dashboard as dm

    source = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")

    def variable(name: str, label: str) -> db.QueryVariable:
        return (db.QueryVariable(name).label(label).datasource(source)
                .query(f"label_values(mgeo_ready, {name})")
                .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
                .sort(dm.VariableSort.ALPHABETICAL_ASC)
                .multi(True).include_all(True).all_value(".*"))

    board = (db.Dashboard("MGeo workers").uid(DASHBOARD_UID)
             .description("Kafka MGeo scoring workers (mgeo worker): throughput, latency, lag, "
                          "batching, GPU memory. Generated by deploy/monitoring.py.")
             .tags(["mgeo", "kafka"]).refresh("30s").time("now-3h", "now").timezone("browser")
             .tooltip(dm.DashboardCursorSync.CROSSHAIR).editable()
             .with_variable(db.DatasourceVariable("datasource").label("Data source")
                            .type("prometheus"))
             .with_variable(variable("job", "Job"))
             .with_variable(variable("instance", "Instance")))
    panel_id = 0
    for row_title, panels in ROWS:
        panel_id += 1
        board = board.with_row(db.Row(row_title).id(panel_id))
        for p in panels:
            panel_id += 1
            builder = stat.Panel() if p.kind == "stat" else timeseries.Panel()
            builder = (builder.id(panel_id).title(p.title).unit(p.unit).datasource(source)
                       .height(p.height).span(p.width))
            if p.description:
                builder = builder.description(p.description)
            if p.unit == "percentunit":
                builder = builder.min(0).max(1)
            if p.kind == "stat":
                builder = (builder.graph_mode(cm.BigValueGraphMode.AREA)
                           .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"])))
            else:
                builder = (builder.fill_opacity(10).line_width(1)
                           .legend(cb.VizLegendOptions().show_legend(True)
                                   .display_mode(cm.LegendDisplayMode.LIST)
                                   .placement(cm.LegendPlacement.BOTTOM))
                           .tooltip(cb.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI)
                                    .sort(cm.SortOrder.DESCENDING)))
            for i, (expr, legend) in enumerate(p.targets):
                builder = builder.with_target(
                    prometheus.Dataquery().expr(expr).legend_format(legend)
                    .ref_id(chr(ord("A") + i)).datasource(source))
            board = board.with_panel(builder)
    return json.loads(json.dumps(board.build(), cls=JSONEncoder))


def dashboard_text() -> str:
    return json.dumps(dashboard(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def dashboard_queries(board: dict) -> list[tuple[str, str]]:
    """(panel title, expr) of every query of every panel."""
    out = []
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            out.append((panel["title"], target["expr"]))
    return out


# ---- outputs ------------------------------------------------------------------------------------

def outputs() -> dict[Path, str]:
    board = dashboard_text()
    return {
        DEPLOY / "alerts.yml": rule_file_text(COMPOSE),
        DEPLOY / "grafana" / "dashboards" / "mgeo-worker.json": board,
        CHART_FILES / "alerts.yml": rule_file_text(CHART),
        CHART_FILES / "mgeo-worker-dashboard.json": board,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 when an output differs from what is built")
    args = parser.parse_args(argv)
    stale = []
    for path, text in outputs().items():
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        stale.append(path.relative_to(ROOT))
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    if args.check and stale:
        print("out of date (run python deploy/monitoring.py): "
              + ", ".join(map(str, stale)), file=sys.stderr)
        return 1
    for path in stale:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
