"""The Helm chart, rendered by Helm's own engine and checked against Kubernetes' schemas.

helm-python-sdk binds Helm's Go SDK (no helm binary, no cluster, no network): `render` runs the
same template engine and values.schema.json validation as `helm install`. kubernetes-validate
checks every built-in kind against the bundled OpenAPI schemas in strict mode (unknown fields
fail). The CRDs (KEDA's ScaledObject and TriggerAuthentication, the Prometheus operator's
ServiceMonitor) have no bundled schema: they are checked against strict schemas written below
from the projects' documentation (KEDA 2.17, prometheus-operator monitoring.coreos.com/v1), and
the HPA behavior KEDA passes through is checked against Kubernetes' own HPA schema.

Rendering takes the cluster's API versions (`.Capabilities.APIVersions`), as `helm install` gets
them from the API server and `helm template --api-versions` from its flags: by default a cluster
with KEDA and the Prometheus operator, and without them where a test says so.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

from mgeo.settings import WorkerSettings, read_properties

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "mgeo-worker"
K8S_VERSION = "1.33"
CRD_KINDS = {"ScaledObject", "TriggerAuthentication", "ServiceMonitor", "PrometheusRule"}
# API versions of the custom resources, as discovery lists them (group/version/Kind).
# KEDA also registers the external metrics API (its metrics server), serving its ScaledObjects.
EXTERNAL_METRICS_API = ["external.metrics.k8s.io/v1beta1"]
KEDA_API = ["keda.sh/v1alpha1", "keda.sh/v1alpha1/ScaledObject",
            "keda.sh/v1alpha1/TriggerAuthentication"] + EXTERNAL_METRICS_API
PROMETHEUS_OPERATOR_API = ["monitoring.coreos.com/v1", "monitoring.coreos.com/v1/ServiceMonitor",
                           "monitoring.coreos.com/v1/PrometheusRule"]
FULL_CLUSTER = KEDA_API + PROMETHEUS_OPERATOR_API
RELEASE, NAMESPACE = "scorer", "scoring"
GPU = "nvidia.com/gpu"

SCENARIOS = {
    "default": {},
    "keda": {"autoscaling": {"mode": "keda", "minReplicas": 0, "maxReplicas": 8,
                             "keda": {"lagThreshold": 2500, "activationLagThreshold": 50,
                                      "authenticationRef": "kafka-sasl",
                                      "extraMetadata": {"sasl": "scram_sha512", "tls": "enable"},
                                      "fallbackReplicas": 2}}},
    "hpa": {"autoscaling": {"mode": "hpa", "minReplicas": 2, "maxReplicas": 6}},
    "hpa on lag": {"autoscaling": {"mode": "hpa", "hpa": {"metric": "lag"}}},
    "none": {"autoscaling": {"mode": "none"}, "replicaCount": 3},
    "cpu": {"gpu": {"enabled": False}, "worker": {"precision": "int8"},
            "resources": {"requests": {"cpu": "4", "memory": "4Gi"}}},
    "everything": {
        "kafka": {"bootstrapServers": "broker-0.kafka:9093,broker-1.kafka:9093",
                  "partitions": 24,
                  "properties": {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
                                 "sasl.username": "mgeo", "sasl.password": "s3cret=x"}},
        "worker": {"delivery": "exactly-once", "tokenBudget": 16384, "sessionTimeoutMs": 45000,
                   "logFormat": "text",
                   "settings": {"cache_size": 100000, "threads": 4, "max_inflight": 30000,
                                "positive_labels": ["exact_match", "partial_match"],
                                "consumer_config": {"fetch.max.bytes": "1048576"}},
                   "secretSettings": {"producer_config": {"sasl.oauthbearer.client.secret": "x"}},
                   "existingSettingsSecret": "mgeo-extra-env"},
        "model": {"source": "pvc", "pvc": {"claimName": "mgeo-model", "subPath": "v1.2"}},
        "image": {"repository": "registry.example/mgeo-worker", "tag": "v1.2.0",
                  "digest": "sha256:" + "ab" * 32},
        "gpu": {"count": 1},
        "autoscaling": {"maxReplicas": 24, "keda": {
            "secretTargetRef": [{"parameter": "sasl", "name": "kafka-keda", "key": "sasl"},
                                {"parameter": "username", "name": "kafka-keda", "key": "user"},
                                {"parameter": "password", "name": "kafka-keda", "key": "pass"},
                                {"parameter": "tls", "name": "kafka-keda", "key": "tls"}],
            "extraMetadata": {"limitToPartitionsWithLag": True}}},
        "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}},
                    "prometheusRule": {"enabled": True, "labels": {"release": "prom"}},
                    "dashboard": {"enabled": True, "annotations": {"grafana_folder": "MGeo"}}},
        "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
        "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 100, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
                                                "labelSelector": {"matchLabels": {
                                                    "app.kubernetes.io/name": "mgeo-worker"}}}}]}},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu",
                         "effect": "NoSchedule"}],
        "extraEnv": [{"name": "NCCL_DEBUG", "value": "WARN"}],
        "priorityClassName": "batch-high",
    },
    "processes": {"worker": {"processes": 3, "settings": {"threads": 2}},
                  "resources": {"requests": {"cpu": "1500m", "memory": "8Gi"},
                                "limits": {"cpu": 2, "memory": "16Gi"}},
                  "autoscaling": {"maxReplicas": 4}},
    "statefulset at-least-once": {"worker": {"kind": "StatefulSet"},
                                  "autoscaling": {"mode": "hpa", "maxReplicas": 6}},
}


@pytest.fixture(scope="module")
def chart():
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def render_raw(chart, values: dict | None = None,
               api_versions: list[str] = FULL_CLUSTER) -> dict[str, str]:
    """helm template with `--api-versions`: helm_python's render() has no argument for them,
    so this calls the same native render with the option Helm's SDK takes."""
    opts = {"name": RELEASE, "namespace": NAMESPACE, "api_versions": list(api_versions)}
    rendered = helm._native.call_string("helm_render", chart._raw(), json.dumps(values or {}),
                                        json.dumps(opts))
    return json.loads(rendered)


def test_render_helper_matches_the_sdks_render(chart):
    """Without API versions the helper renders what helm_python's own render() does."""
    values = {"autoscaling": {"mode": "none"}}
    assert render_raw(chart, values, api_versions=[]) == chart.render(
        values=values, name=RELEASE, namespace=NAMESPACE)


def render(chart, values: dict | None = None,
           api_versions: list[str] = FULL_CLUSTER) -> list[dict]:
    docs = []
    for path, text in render_raw(chart, values, api_versions).items():
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return docs


def of_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict], kind: str) -> dict:
    found = of_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


WORKLOADS = ("Deployment", "StatefulSet")


def workload(docs: list[dict]) -> dict:
    """The workers' Deployment or StatefulSet (exactly one of them)."""
    found = [d for d in docs if d["kind"] in WORKLOADS]
    assert len(found) == 1, f"expected one workload, got {[d['kind'] for d in found]}"
    return found[0]


def container(docs: list[dict]) -> dict:
    (c,) = workload(docs)["spec"]["template"]["spec"]["containers"]
    return c


def config(docs: list[dict]) -> dict[str, str]:
    """The workers' settings ConfigMap (the one their envFrom loads)."""
    (ref,) = [s["configMapRef"]["name"] for s in container(docs)["envFrom"]
              if "configMapRef" in s]
    (cm,) = [d for d in of_kind(docs, "ConfigMap") if d["metadata"]["name"] == ref]
    return cm["data"]


def selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# ---- Helm's own checks ------------------------------------------------------------------------

def test_lint_is_clean():
    for values in SCENARIOS.values():
        report = helm.lint(CHART, values or None, strict=True)
        problems = [m for m in report["messages"] if m["severity"] >= 2]
        assert report["errors"] == [] and problems == [], report


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_manifests_validate_against_kubernetes_schemas(chart, scenario):
    docs = render(chart, SCENARIOS[scenario])
    checked = set()
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            validate_custom_resource(doc)
            checked.add(doc["kind"])
            continue
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{doc['kind']} {doc['metadata']['name']}: {where}: {exc.message}")
        checked.add(doc["kind"])
    assert {"ConfigMap", "ServiceAccount", "PodDisruptionBudget", "Service"} <= checked
    assert len(checked & set(WORKLOADS)) == 1


# ---- the custom resources, against schemas written from their documentation ---------------------

_NAME = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", "maxLength": 253}
_STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}
_METADATA = {"type": "object", "required": ["name"], "additionalProperties": False,
             "properties": {"name": _NAME, "namespace": _NAME, "labels": _STRINGS,
                            "annotations": _STRINGS}}
_COUNT = {"type": "integer", "minimum": 0}


def _strict(properties: dict, required: tuple = ()) -> dict:
    return {"type": "object", "additionalProperties": False, "properties": properties,
            "required": list(required)}


def _resource(api_version: str, kind: str, spec: dict) -> dict:
    return _strict({"apiVersion": {"const": api_version}, "kind": {"const": kind},
                    "metadata": _METADATA, "spec": spec},
                   ("apiVersion", "kind", "metadata", "spec"))


# KEDA's kafka trigger: every metadata key the scaler documents (values are strings).
KEDA_KAFKA_METADATA = {
    "bootstrapServers", "consumerGroup", "topic", "lagThreshold", "activationLagThreshold",
    "offsetResetPolicy", "allowIdleConsumers", "scaleToZeroOnInvalidOffset",
    "excludePersistentLag", "limitToPartitionsWithLag", "ensureEvenDistributionOfPartitions",
    "version", "partitionLimitation", "sasl", "saslTokenProvider", "tls", "unsafeSsl",
    "awsRegion"}
# ... and every parameter its TriggerAuthentication may supply.
KEDA_KAFKA_AUTH = {
    "sasl", "saslTokenProvider", "username", "password", "keytab", "realm", "kerberosConfig",
    "kerberosServiceName", "kerberosDisableFAST", "oauthTokenEndpointUri", "scopes",
    "oauthExtensions", "tls", "ca", "cert", "key", "keyPassword", "awsRoleArn", "awsAccessKeyID",
    "awsSecretAccessKey"}
_DURATION = {"type": "string",
             "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?"
                        r"(([0-9]+)s)?(([0-9]+)ms)?)$"}
_SELECTOR = _strict({"matchLabels": _STRINGS, "matchExpressions": {"type": "array"}})

CRD_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): _resource("keda.sh/v1alpha1", "ScaledObject", _strict({
        "scaleTargetRef": _strict({"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                                   "name": _NAME, "envSourceContainerName": {"type": "string"}},
                                  ("name",)),
        "pollingInterval": _COUNT, "cooldownPeriod": _COUNT, "initialCooldownPeriod": _COUNT,
        "idleReplicaCount": _COUNT, "minReplicaCount": _COUNT, "maxReplicaCount": _COUNT,
        "fallback": _strict({"failureThreshold": _COUNT, "replicas": _COUNT,
                             "behavior": {"type": "string"}},
                            ("failureThreshold", "replicas")),
        "advanced": _strict({"restoreToOriginalReplicaCount": {"type": "boolean"},
                             "horizontalPodAutoscalerConfig": _strict(
                                 {"name": {"type": "string"}, "behavior": {"type": "object"}}),
                             "scalingModifiers": {"type": "object"}}),
        "triggers": {"type": "array", "minItems": 1, "items": _strict({
            "type": {"type": "string"}, "name": {"type": "string"},
            "metadata": {"type": "object", "additionalProperties": {"type": "string"},
                         "propertyNames": {"enum": sorted(KEDA_KAFKA_METADATA)}},
            "authenticationRef": _strict({"name": _NAME, "kind": {
                "enum": ["TriggerAuthentication", "ClusterTriggerAuthentication"]}}, ("name",)),
            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
            "useCachedMetrics": {"type": "boolean"}}, ("type", "metadata"))},
    }, ("scaleTargetRef", "triggers"))),
    ("keda.sh/v1alpha1", "TriggerAuthentication"): _resource(
        "keda.sh/v1alpha1", "TriggerAuthentication", _strict({
            "secretTargetRef": {"type": "array", "minItems": 1, "items": _strict({
                "parameter": {"enum": sorted(KEDA_KAFKA_AUTH)}, "name": _NAME,
                "key": {"type": "string", "minLength": 1}}, ("parameter", "name", "key"))},
        }, ("secretTargetRef",))),
    ("monitoring.coreos.com/v1", "ServiceMonitor"): _resource(
        "monitoring.coreos.com/v1", "ServiceMonitor", _strict({
            "selector": _SELECTOR,
            "namespaceSelector": _strict({"matchNames": {"type": "array",
                                                         "items": {"type": "string"}},
                                          "any": {"type": "boolean"}}),
            "endpoints": {"type": "array", "minItems": 1, "items": _strict({
                "port": {"type": "string"}, "path": {"type": "string", "pattern": "^/"},
                "scheme": {"enum": ["http", "https"]}, "interval": _DURATION,
                "scrapeTimeout": _DURATION, "honorLabels": {"type": "boolean"}})},
            "jobLabel": {"type": "string"},
        }, ("selector", "endpoints"))),
    # prometheus-operator's PrometheusRule: rule groups as in a Prometheus rule file.
    ("monitoring.coreos.com/v1", "PrometheusRule"): _resource(
        "monitoring.coreos.com/v1", "PrometheusRule", _strict({
            "groups": {"type": "array", "minItems": 1, "items": _strict({
                "name": {"type": "string", "minLength": 1}, "interval": _DURATION,
                "limit": _COUNT, "partial_response_strategy": {"type": "string"},
                "rules": {"type": "array", "minItems": 1, "items": {
                    "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                    **_strict({"alert": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
                               "record": {"type": "string"},
                               "expr": {"type": "string", "minLength": 1},
                               "for": _DURATION, "keep_firing_for": _DURATION,
                               "labels": _STRINGS, "annotations": _STRINGS}, ("expr",))}},
            }, ("name", "rules"))},
        }, ("groups",))),
}


def validate_custom_resource(doc: dict) -> None:
    schema = CRD_SCHEMAS[(doc["apiVersion"], doc["kind"])]
    try:
        jsonschema.Draft202012Validator(schema).validate(doc)
    except jsonschema.ValidationError as exc:
        where = ".".join(str(p) for p in exc.path)
        pytest.fail(f"{doc['kind']} {doc['metadata']['name']}: {where}: {exc.message}")
    if doc["kind"] == "ScaledObject":
        # The behavior KEDA hands to its HPA: checked by Kubernetes' own HPA schema.
        behavior = doc["spec"].get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get(
            "behavior")
        if behavior is not None:
            hpa = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
                   "metadata": {"name": "keda-hpa"},
                   "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "x"},
                            "maxReplicas": 1, "behavior": behavior}}
            kubernetes_validate.validate(hpa, K8S_VERSION, strict=True)


def test_custom_resource_schemas_catch_mistakes():
    good = {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
            "metadata": {"name": "w"},
            "spec": {"scaleTargetRef": {"name": "w"},
                     "triggers": [{"type": "kafka", "metadata": {"lagThreshold": "5"}}]}}
    validate_custom_resource(good)
    for broken in ({"lagThreshold": 5}, {"lagThresold": "5"}):  # not a string; a typo
        bad = yaml.safe_load(yaml.safe_dump(good))
        bad["spec"]["triggers"][0]["metadata"] = broken
        with pytest.raises(pytest.fail.Exception):
            validate_custom_resource(bad)
    bad = yaml.safe_load(yaml.safe_dump(good))
    bad["spec"]["maxReplicas"] = 3  # the HPA's name, not KEDA's maxReplicaCount
    with pytest.raises(pytest.fail.Exception):
        validate_custom_resource(bad)


def test_bundled_kubernetes_schemas_include_the_version():
    assert K8S_VERSION in {".".join(v.split(".")[:2])
                           for v in kubernetes_validate.utils.all_versions()}


# ---- the worker Deployment --------------------------------------------------------------------

def test_deployment_runs_mgeo_worker_with_probes_and_gpu(chart):
    docs = render(chart)
    c = container(docs)
    assert c["command"] + c["args"] == ["mgeo", "worker"]
    port = int(config(docs)["MGEO_METRICS_PORT"])
    assert c["ports"] == [{"name": "metrics", "containerPort": port, "protocol": "TCP"}]
    assert c["resources"]["limits"][GPU] == 1
    assert config(docs)["MGEO_DEVICE"] == "cuda"

    probes = {kind: c[f"{kind}Probe"] for kind in ("startup", "liveness", "readiness")}
    assert probes["startup"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert probes["liveness"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert probes["readiness"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    startup_budget = probes["startup"]["periodSeconds"] * probes["startup"]["failureThreshold"]
    assert startup_budget >= 300, "model load and GPU warm-up need minutes, not seconds"


def test_grace_period_outlasts_the_drain(chart):
    docs = render(chart)
    grace = workload(docs)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > float(config(docs)["MGEO_SHUTDOWN_TIMEOUT"])
    assert grace == 90

    docs = render(chart, {"worker": {"shutdownTimeout": 120.5}})
    grace = workload(docs)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert config(docs)["MGEO_SHUTDOWN_TIMEOUT"] == "120.5"
    assert grace == 151

    docs = render(chart, {"terminationGracePeriodSeconds": 200})
    assert workload(docs)["spec"]["template"]["spec"][
        "terminationGracePeriodSeconds"] == 200


def test_pods_run_unprivileged_on_a_read_only_root(chart):
    docs = render(chart)
    pod = workload(docs)["spec"]["template"]["spec"]
    c = container(docs)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["automountServiceAccountToken"] is False
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    # The writable places are emptyDirs: /tmp and the Hugging Face / Triton cache.
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    env = {e["name"]: e.get("value") for e in c["env"]}
    for path in ("/tmp", env["HF_HOME"].rsplit("/", 1)[0]):
        assert "emptyDir" in volumes[mounts[path]], path
    assert env["HF_HUB_OFFLINE"] == "1"


def test_config_change_rolls_the_pods(chart):
    def checksums(values):
        meta = workload(render(chart, values))["spec"]["template"]["metadata"]
        return {k: v for k, v in meta["annotations"].items() if k.startswith("checksum/")}

    base = checksums({})
    assert re.fullmatch(r"[0-9a-f]{64}", base["checksum/config"])
    assert checksums({"worker": {"delivery": "exactly-once"}}) != base
    assert checksums({"podAnnotations": {"team": "geo"}}) == base
    props = {"kafka": {"properties": {"sasl.password": "one"}}}
    rotated = {"kafka": {"properties": {"sasl.password": "two"}}}
    assert checksums(props)["checksum/secret"] != checksums(rotated)["checksum/secret"]
    one_key = {"worker": {"secretSettings": {"kafka_config": {"sasl.password": "one"}}}}
    two_key = {"worker": {"secretSettings": {"kafka_config": {"sasl.password": "two"}}}}
    assert (checksums(one_key)["checksum/secret-settings"]
            != checksums(two_key)["checksum/secret-settings"])


def test_gpu_off_runs_on_cpu(chart):
    docs = render(chart, SCENARIOS["cpu"])
    c = container(docs)
    assert GPU not in c["resources"].get("limits", {})
    assert config(docs)["MGEO_DEVICE"] == "cpu"
    tolerations = workload(docs)["spec"]["template"]["spec"].get("tolerations", [])
    assert all(t.get("key") != GPU for t in tolerations)


def test_gpu_count_is_gone_but_an_old_values_file_still_installs(chart):
    """A worker process drives one GPU, so a pod gets exactly one; gpu.count: 1 from an older
    values file is what happens anyway, any other count is refused with the reason."""
    assert "count" not in chart.values["gpu"]
    docs = render(chart, {"gpu": {"count": 1}})
    assert container(docs)["resources"]["limits"][GPU] == 1
    with pytest.raises(helm.HelmRenderError, match=re.escape("gpu.count (4) was removed")) as e:
        render_raw(chart, {"gpu": {"count": 4}})
    assert "adding replicas" in str(e.value)


def test_gpu_count_placement_and_user_tolerations(chart):
    docs = render(chart, SCENARIOS["everything"])
    pod = workload(docs)["spec"]["template"]["spec"]
    c = container(docs)
    assert c["resources"]["limits"][GPU] == 1
    assert pod["nodeSelector"] == SCENARIOS["everything"]["nodeSelector"]
    assert pod["affinity"] == SCENARIOS["everything"]["affinity"]
    keys = [t["key"] for t in pod["tolerations"]]
    assert keys == ["dedicated", GPU]
    assert {"name": "NCCL_DEBUG", "value": "WARN"} in c["env"]


# ---- autoscaling ------------------------------------------------------------------------------

@pytest.mark.parametrize("scenario,kind", [("default", "ScaledObject"), ("keda", "ScaledObject"),
                                           ("hpa", "HorizontalPodAutoscaler"), ("none", None)])
def test_one_scaler_per_mode_and_replicas_only_without_one(chart, scenario, kind):
    docs = render(chart, SCENARIOS[scenario])
    deployment = workload(docs)
    scalers = of_kind(docs, "ScaledObject") + of_kind(docs, "HorizontalPodAutoscaler")
    if kind is None:
        assert scalers == []
        assert deployment["spec"]["replicas"] == SCENARIOS[scenario]["replicaCount"]
    else:
        assert [s["kind"] for s in scalers] == [kind]
        assert "replicas" not in deployment["spec"], "the autoscaler owns the replica count"


def test_keda_scales_on_the_workers_consumer_lag(chart):
    docs = render(chart, SCENARIOS["keda"])
    so = one(docs, "ScaledObject")
    cfg = config(docs)
    assert so["apiVersion"] == "keda.sh/v1alpha1"
    assert so["spec"]["scaleTargetRef"]["name"] == workload(docs)["metadata"]["name"]
    assert so["spec"]["minReplicaCount"] == 0
    assert so["spec"]["maxReplicaCount"] == 8
    assert so["spec"]["fallback"] == {"failureThreshold": 3, "replicas": 2}
    (trigger,) = so["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    assert all(isinstance(v, str) for v in meta.values()), "KEDA metadata is map[string]string"
    assert meta["bootstrapServers"] == cfg["MGEO_BOOTSTRAP_SERVERS"]
    assert meta["consumerGroup"] == cfg["MGEO_GROUP_ID"] == "mgeo-workers"
    assert meta["topic"] == cfg["MGEO_INPUT_TOPIC"] == "address-pairs"
    assert meta["lagThreshold"] == "2500"
    assert meta["activationLagThreshold"] == "50"
    assert meta["offsetResetPolicy"] == "earliest"  # the worker's auto.offset.reset
    assert meta["allowIdleConsumers"] == "false"
    assert meta["sasl"] == "scram_sha512" and meta["tls"] == "enable"
    assert trigger["authenticationRef"] == {"name": "kafka-sasl"}
    behavior = so["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 60
    assert of_kind(docs, "TriggerAuthentication") == [], "authenticationRef names an existing one"


@pytest.mark.parametrize("scenario", ["default", "keda", "everything"])
def test_keda_trigger_uses_only_documented_metadata(chart, scenario):
    (trigger,) = one(render(chart, SCENARIOS[scenario]), "ScaledObject")["spec"]["triggers"]
    assert set(trigger["metadata"]) <= KEDA_KAFKA_METADATA, \
        set(trigger["metadata"]) - KEDA_KAFKA_METADATA
    assert {"bootstrapServers", "consumerGroup", "topic", "lagThreshold",
            "activationLagThreshold", "offsetResetPolicy"} <= set(trigger["metadata"])


def test_chart_made_trigger_authentication(chart):
    docs = render(chart, SCENARIOS["everything"])
    auth = one(docs, "TriggerAuthentication")
    (trigger,) = one(docs, "ScaledObject")["spec"]["triggers"]
    assert trigger["authenticationRef"] == {"name": auth["metadata"]["name"]}
    refs = SCENARIOS["everything"]["autoscaling"]["keda"]["secretTargetRef"]
    assert auth["spec"]["secretTargetRef"] == refs
    assert {r["parameter"] for r in refs} <= KEDA_KAFKA_AUTH
    assert trigger["metadata"]["limitToPartitionsWithLag"] == "true"
    # Not in the other modes: it would authenticate nothing.
    values = {**SCENARIOS["everything"], "autoscaling": {
        "mode": "hpa", "maxReplicas": 24, "keda": {"secretTargetRef": refs}}}
    assert of_kind(render(chart, values), "TriggerAuthentication") == []


def test_default_max_replicas_fit_the_partitions(chart):
    so = one(render(chart), "ScaledObject")
    values = chart.values
    assert so["spec"]["maxReplicaCount"] <= values["kafka"]["partitions"]


def test_large_numbers_render_as_integers(chart):
    docs = render(chart, {"autoscaling": {"keda": {"lagThreshold": 5_000_000}},
                          "worker": {"settings": {"cache_size": 2_000_000}}})
    assert one(docs, "ScaledObject")["spec"]["triggers"][0]["metadata"]["lagThreshold"] == "5000000"
    assert config(docs)["MGEO_CACHE_SIZE"] == "2000000"


def test_hpa_is_autoscaling_v2(chart):
    docs = render(chart, SCENARIOS["hpa"])
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    assert hpa["spec"]["scaleTargetRef"]["name"] == workload(docs)["metadata"]["name"]
    external = [{"type": "External", "external": {
        "metric": {"name": "mgeo_consumer_lag_total"},
        "target": {"type": "AverageValue", "averageValue": "10000"}}}]
    docs = render(chart, {"autoscaling": {"mode": "hpa", "hpa": {"metrics": external}}})
    assert one(docs, "HorizontalPodAutoscaler")["spec"]["metrics"] == external


def hpa_metrics(chart, values: dict, api_versions: list[str]) -> list[dict]:
    return one(render(chart, {"autoscaling": {"mode": "hpa", **values}}, api_versions),
               "HorizontalPodAutoscaler")["spec"]["metrics"]


LAG_METRIC = [{"type": "External", "external": {
    "metric": {"name": "kafka_consumergroup_lag_sum",
               "selector": {"matchLabels": {"consumergroup": "mgeo-workers",
                                            "topic": "address-pairs"}}},
    "target": {"type": "AverageValue", "averageValue": "10000"}}}]
CPU_METRIC = [{"type": "Resource", "resource": {
    "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}]


def test_hpa_scales_on_consumer_lag_where_the_cluster_serves_it(chart):
    """auto: an External metric of the group's lag where the cluster serves the external
    metrics API (prometheus-adapter), as KEDA would; CPU where it does not, and where that API
    is KEDA's (it serves only its own ScaledObjects' metrics)."""
    adapter = PROMETHEUS_OPERATOR_API + EXTERNAL_METRICS_API
    assert hpa_metrics(chart, {}, adapter) == LAG_METRIC
    assert hpa_metrics(chart, {}, PROMETHEUS_OPERATOR_API) == CPU_METRIC
    assert hpa_metrics(chart, {}, FULL_CLUSTER) == CPU_METRIC
    assert hpa_metrics(chart, {"hpa": {"metric": "cpu"}}, adapter) == CPU_METRIC
    assert hpa_metrics(chart, {"hpa": {"metric": "lag"}}, FULL_CLUSTER) == LAG_METRIC
    notes = render_raw(chart, {"autoscaling": {"mode": "hpa"}}, adapter)
    assert "on consumer lag" in notes["mgeo-worker/templates/NOTES.txt"]
    notes = render_raw(chart, {"autoscaling": {"mode": "hpa"}}, [])
    assert "on CPU (70%)" in notes["mgeo-worker/templates/NOTES.txt"]


def test_hpa_lag_metric_follows_the_values(chart):
    values = {"hpa": {"lag": {"metricName": "kafka_consumer_group_lag", "groupLabel": "group",
                              "topicLabel": "topic_name", "targetPerReplica": 2500}}}
    (metric,) = hpa_metrics(chart, values, EXTERNAL_METRICS_API)
    assert metric["external"] == {
        "metric": {"name": "kafka_consumer_group_lag",
                   "selector": {"matchLabels": {"group": "mgeo-workers",
                                                "topic_name": "address-pairs"}}},
        "target": {"type": "AverageValue", "averageValue": "2500"}}


# ---- disruption budget, metrics -----------------------------------------------------------------

def test_pdb_service_and_servicemonitor_select_the_workers(chart):
    docs = render(chart, SCENARIOS["everything"])
    pod_labels = workload(docs)["spec"]["template"]["metadata"]["labels"]
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["maxUnavailable"] == 1
    assert selects(pdb["spec"]["selector"]["matchLabels"], pod_labels)

    services = {s["metadata"]["name"]: s for s in of_kind(docs, "Service")}
    service = services[f"{workload(docs)['metadata']['name']}-metrics"]
    assert selects(service["spec"]["selector"], pod_labels)
    (port,) = service["spec"]["ports"]
    assert port["name"] == "metrics" and port["targetPort"] == "metrics"

    sm = one(docs, "ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["labels"]["release"] == "prom"
    # It selects the metrics Service only: the StatefulSet's headless Service fronts the same
    # pods, and selecting both would scrape every pod twice.
    selected = [name for name, s in services.items()
                if selects(sm["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])]
    assert selected == [service["metadata"]["name"]]
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["port"] == port["name"] and endpoint["path"] == "/metrics"


def test_optional_objects_can_be_turned_off(chart):
    docs = render(chart, {"podDisruptionBudget": {"enabled": False},
                          "metrics": {"service": {"enabled": False}},
                          "serviceAccount": {"create": False}})
    kinds = {d["kind"] for d in docs}
    assert kinds.isdisjoint({"PodDisruptionBudget", "Service", "ServiceMonitor",
                             "ServiceAccount"})
    pod = workload(docs)["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "default"


# ---- configuration: ConfigMap, Secret, model ----------------------------------------------------

def worker_environment(docs: list[dict]) -> dict[str, str]:
    """Every variable the worker container gets from the chart: the ConfigMap and chart-made
    Secrets it loads with envFrom, then its own env entries."""
    by_name = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    env: dict[str, str] = {}
    for source in container(docs)["envFrom"]:
        if "configMapRef" in source:
            env.update(by_name[("ConfigMap", source["configMapRef"]["name"])]["data"])
        elif ("Secret", source["secretRef"]["name"]) in by_name:  # else: one the user manages
            env.update(by_name[("Secret", source["secretRef"]["name"])]["stringData"])
    env.update({e["name"]: e["value"] for e in container(docs)["env"] if "value" in e})
    return env


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_every_mgeo_variable_is_a_worker_setting(chart, scenario, monkeypatch):
    """pydantic-settings ignores unknown MGEO_* variables: a misspelt one would do nothing."""
    docs = render(chart, SCENARIOS[scenario])
    data = config(docs)
    env = worker_environment(docs)
    fields = set(WorkerSettings.model_fields)
    for key in data:
        assert key.startswith("MGEO_"), f"ConfigMap key {key} is not a worker setting"
    for key in [k for k in env if k.startswith("MGEO_")]:
        assert key[5:].lower() in fields, \
            f"{key} is not a field of WorkerSettings: the worker would ignore it"
    # And the worker accepts every value: build its settings from exactly this environment.
    for name in [k for k in os.environ if k.upper().startswith("MGEO_")]:
        monkeypatch.delenv(name)
    for key, value in env.items():
        if key.startswith("MGEO_"):
            monkeypatch.setenv(key, value)
    s = WorkerSettings()
    assert s.bootstrap_servers == data["MGEO_BOOTSTRAP_SERVERS"]
    assert s.metrics_port == int(data["MGEO_METRICS_PORT"])
    assert s.delivery == data["MGEO_DELIVERY"]
    if scenario == "everything":
        assert s.positive_labels == ["exact_match", "partial_match"]
        assert s.consumer_config == {"fetch.max.bytes": "1048576"}
        assert (s.cache_size, s.threads, s.token_budget) == (100000, 4, 16384)
        assert s.producer_config == {"sasl.oauthbearer.client.secret": "x"}
        assert "MGEO_PRODUCER_CONFIG" not in data, "secret settings stay out of the ConfigMap"


def test_secret_settings_load_with_envfrom(chart):
    docs = render(chart, SCENARIOS["everything"])
    refs = [src["secretRef"]["name"] for src in container(docs)["envFrom"] if "secretRef" in src]
    made = next(d for d in of_kind(docs, "Secret") if d["metadata"]["name"] == refs[0])
    assert made["stringData"] == {
        "MGEO_PRODUCER_CONFIG": '{"sasl.oauthbearer.client.secret":"x"}'}
    assert refs[1] == "mgeo-extra-env"  # existingSettingsSecret: loaded, not created
    assert all(d["metadata"]["name"] != "mgeo-extra-env" for d in of_kind(docs, "Secret"))
    assert [src for src in container(render(chart))["envFrom"] if "secretRef" in src] == []


def test_kafka_properties_secret_is_the_file_the_worker_reads(chart, tmp_path):
    docs = render(chart, SCENARIOS["everything"])
    (secret,) = [d for d in of_kind(docs, "Secret") if d["metadata"]["name"].endswith("-kafka")]
    (key, text), = secret["stringData"].items()
    (tmp_path / key).write_text(text)
    assert read_properties(tmp_path / key) == SCENARIOS["everything"]["kafka"]["properties"]
    # Credentials stay out of the ConfigMap.
    assert "s3cret" not in yaml.safe_dump(config(docs))

    pod = workload(docs)["spec"]["template"]["spec"]
    mount = next(m for m in container(docs)["volumeMounts"] if m["name"] == "kafka-config")
    volume = next(v for v in pod["volumes"] if v["name"] == "kafka-config")
    assert mount["readOnly"] is True
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    (item,) = volume["secret"]["items"]
    assert config(docs)["MGEO_KAFKA_CONFIG_FILE"] == f"{mount['mountPath']}/{item['path']}"
    assert item["key"] == key


def test_existing_secret_is_mounted_not_created(chart):
    docs = render(chart, {"kafka": {"existingSecret": "kafka-client", "secretKey": "client.properties"}})
    assert of_kind(docs, "Secret") == []
    pod = workload(docs)["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "kafka-config")
    assert volume["secret"]["secretName"] == "kafka-client"
    assert config(docs)["MGEO_KAFKA_CONFIG_FILE"].endswith("/client.properties")
    assert "checksum/secret" not in workload(docs)["spec"]["template"]["metadata"][
        "annotations"]


def test_no_kafka_secret_by_default(chart):
    docs = render(chart)
    assert of_kind(docs, "Secret") == []
    assert "MGEO_KAFKA_CONFIG_FILE" not in config(docs)


@pytest.mark.parametrize("source", ["image", "pvc", "hostPath", "bundled"])
def test_model_sources(chart, source):
    values = {"model": {"source": source, "pvc": {"claimName": "mgeo-model"},
                        "hostPath": {"path": "/srv/models/mgeo"}}}
    docs = render(chart, values)
    pod = workload(docs)["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m for m in container(docs)["volumeMounts"]}
    cfg = config(docs)
    if source == "bundled":
        assert "MGEO_MODEL" not in cfg
        notes = render_raw(chart, values)["mgeo-worker/templates/NOTES.txt"]
        assert "WARNING" in notes
    else:
        assert cfg["MGEO_MODEL"] == "/models/mgeo"
    if source in ("pvc", "hostPath"):
        assert mounts["model"]["mountPath"] == "/models/mgeo"
        assert mounts["model"]["readOnly"] is True
        if source == "pvc":
            assert volumes["model"]["persistentVolumeClaim"] == {"claimName": "mgeo-model",
                                                                 "readOnly": True}
        else:
            assert volumes["model"]["hostPath"]["path"] == "/srv/models/mgeo"
    else:
        assert "model" not in volumes


# ---- values that must not install ---------------------------------------------------------------

BAD_VALUES = {
    "negative replicas": {"replicaCount": -1},
    "unknown delivery mode": {"worker": {"delivery": "at-most-once"}},
    "maxReplicas as a string": {"autoscaling": {"maxReplicas": "12"}},
    "unknown scaling mode": {"autoscaling": {"mode": "vpa"}},
    "unknown device": {"worker": {"device": "tpu"}},
    "zero partitions": {"kafka": {"partitions": 0}},
    "zero lag threshold": {"autoscaling": {"keda": {"lagThreshold": 0}}},
    "bad offset policy": {"autoscaling": {"keda": {"offsetResetPolicy": "none"}}},
    "port out of range": {"worker": {"metricsPort": 70000}},
    "negative shutdown timeout": {"worker": {"shutdownTimeout": -5}},
    "zero GPUs": {"gpu": {"count": 0}},
    "relative model path": {"model": {"path": "models/mgeo"}},
    "unknown model source": {"model": {"source": "s3"}},
    "setting name not a field name": {"worker": {"settings": {"Cache-Size": 10}}},
    "misspelt setting": {"worker": {"settings": {"cache_sise": 10}}},
    "misspelt secret setting": {"worker": {"secretSettings": {"kafka_confg": {"a": "b"}}}},
    "typo at the top level": {"replicas": 3},
    "typo in a section": {"autoscaling": {"maxReplica": 4}},
    "KEDA metadata KEDA does not know": {"autoscaling": {"keda": {
        "extraMetadata": {"lagTreshold": "10"}}}},
    "KEDA metadata the chart sets": {"autoscaling": {"keda": {
        "extraMetadata": {"allowIdleConsumers": "true"}}}},
    "KEDA auth parameter KEDA does not know": {"autoscaling": {"keda": {
        "secretTargetRef": [{"parameter": "user", "name": "s", "key": "k"}]}}},
    "KEDA auth entry without a key": {"autoscaling": {"keda": {
        "secretTargetRef": [{"parameter": "username", "name": "s"}]}}},
    "secret setting name not a field name": {"worker": {"secretSettings": {"SASL": "x"}}},
    "tag with a colon": {"image": {"tag": "v1:latest"}},
    "digest without its algorithm": {"image": {"digest": "0123abcd"}},
    "unknown workload kind": {"worker": {"kind": "DaemonSet"}},
    "zero processes": {"worker": {"processes": 0}},
    "misspelt alert value": {"metrics": {"prometheusRule": {"enable": True}}},
}


@pytest.mark.parametrize("values", BAD_VALUES.values(), ids=list(BAD_VALUES))
def test_schema_rejects_bad_values(chart, values):
    with pytest.raises(helm.HelmValuesError):
        chart.validate_schema(chart.merge_values(values))
    with pytest.raises(helm.HelmValuesError):
        render_raw(chart, values)


CROSS_FIELD = {
    "maxReplicas above partitions": ({"autoscaling": {"maxReplicas": 13}}, "kafka.partitions"),
    "replicaCount above partitions": ({"autoscaling": {"mode": "none"}, "replicaCount": 16},
                                      "kafka.partitions"),
    "minReplicas above maxReplicas": ({"autoscaling": {"minReplicas": 6, "maxReplicas": 4}},
                                      "minReplicas"),
    "hpa cannot scale to zero": ({"autoscaling": {"mode": "hpa", "minReplicas": 0}}, "keda"),
    "grace period not above the drain": ({"terminationGracePeriodSeconds": 60},
                                         "shutdownTimeout"),
    "pvc without a claim": ({"model": {"source": "pvc"}}, "claimName"),
    "hostPath without a path": ({"model": {"source": "hostPath"}}, "hostPath.path"),
    "two kafka secrets": ({"kafka": {"existingSecret": "x", "properties": {"a": "b"}}},
                          "existingSecret"),
    "GPU held by a CPU worker": ({"worker": {"device": "cpu"}}, "gpu.enabled"),
    "cuda without a GPU": ({"gpu": {"enabled": False}, "worker": {"device": "cuda"}},
                           "gpu.enabled"),
    "chart-managed setting": ({"worker": {"settings": {"group_id": "other"}}}, "kafka.groupId"),
    "chart-managed secret setting": ({"worker": {"secretSettings": {"bootstrap_servers": "x"}}},
                                     "kafka.bootstrapServers"),
    "setting given twice": ({"worker": {"settings": {"cache_size": 1},
                                        "secretSettings": {"cache_size": 2}}}, "both"),
    "one transactional id for many pods": ({"worker": {"settings": {"transactional_id": "t"}}},
                                           "fences"),
    "one static member id for many pods": ({"worker": {"secretSettings": {
        "group_instance_id": "w"}}}, "fences"),
    "two GPUs per pod": ({"gpu": {"count": 2}}, "gpu.count (2) was removed"),
    "exactly-once on a Deployment": ({"worker": {"delivery": "exactly-once",
                                                 "kind": "Deployment"}}, "StatefulSet"),
    "fixed transactional id in a StatefulSet": (
        {"worker": {"kind": "StatefulSet", "settings": {"transactional_id": "t"}},
         "autoscaling": {"mode": "none"}, "replicaCount": 1}, "derived from the pod name"),
    "more processes than partitions": ({"worker": {"processes": 2}}, "worker.processes"),
    "chart-managed processes": ({"worker": {"settings": {"processes": 2}}}, "worker.processes"),
    "digest given twice": ({"image": {"tag": "v1@sha256:" + "0" * 64,
                                      "digest": "sha256:" + "1" * 64}}, "image.digest"),
    "two KEDA authentications": ({"autoscaling": {"keda": {
        "authenticationRef": "x",
        "secretTargetRef": [{"parameter": "username", "name": "s", "key": "k"}]}}},
        "authenticationRef"),
}


@pytest.mark.parametrize("values,needle", CROSS_FIELD.values(), ids=list(CROSS_FIELD))
def test_inconsistent_values_fail_with_a_reason(chart, values, needle):
    chart.validate_schema(chart.merge_values(values))  # the schema alone lets them through
    with pytest.raises(helm.HelmRenderError, match=re.escape(needle)):
        render_raw(chart, values)


def test_a_fixed_member_id_is_fine_for_a_single_worker(chart):
    values = {"autoscaling": {"mode": "none"}, "replicaCount": 1,
              "worker": {"settings": {"group_instance_id": "mgeo-0"}}}
    assert config(render(chart, values))["MGEO_GROUP_INSTANCE_ID"] == "mgeo-0"


def test_more_partitions_allow_more_replicas(chart):
    docs = render(chart, {"kafka": {"partitions": 48}, "autoscaling": {"maxReplicas": 48}})
    assert one(docs, "ScaledObject")["spec"]["maxReplicaCount"] == 48


# ---- documentation ------------------------------------------------------------------------------

# Kubernetes objects passed through as a whole get one README row each.
_DOCUMENTED_WHOLE = {"resources", "behavior", "podSecurityContext", "securityContext", "labels",
                     "updateStrategy", "startup", "liveness", "readiness"}


def _leaves(tree: dict, prefix: str = "") -> set[str]:
    out = set()
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and key not in _DOCUMENTED_WHOLE:
            out |= _leaves(value, path + ".")
        else:
            out.add(path)
    return out


def test_readme_documents_every_value(chart):
    readme = (CHART / "README.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^\|\s*`([^`]+)`\s*\|", readme, re.M))
    missing = sorted(_leaves(chart.values) - documented)
    assert not missing, f"values without a row in the README table: {missing}"


def test_schema_knows_every_worker_setting_name(chart):
    """worker.settings and worker.secretSettings accept exactly WorkerSettings' field names, so
    a misspelt setting fails at install instead of being ignored by the worker."""
    worker = chart.schema["properties"]["worker"]["properties"]
    for key in ("settings", "secretSettings"):
        assert set(worker[key]["propertyNames"]["enum"]) == set(WorkerSettings.model_fields), (
            f"worker.{key}: update the enum in values.schema.json to core/settings.py's fields")


def test_schema_covers_every_value(chart):
    schema = chart.schema

    def walk(values: dict, node: dict, path: str):
        props = node.get("properties", {})
        for key, value in values.items():
            assert key in props, f"{path}{key} is in values.yaml but not in values.schema.json"
            if isinstance(value, dict) and props[key].get("additionalProperties") is False:
                walk(value, props[key], f"{path}{key}.")

    walk(chart.values, schema, "")
    chart.validate_schema(chart.values)


# ---- custom resources the cluster must serve ------------------------------------------------------

MISSING_CRDS = {
    "KEDA": ({}, PROMETHEUS_OPERATOR_API, "install KEDA first"),
    "KEDA, chart-made authentication": (
        {"autoscaling": {"keda": {"secretTargetRef": [
            {"parameter": "username", "name": "s", "key": "k"}]}}}, [], "install KEDA first"),
    "ServiceMonitor": ({"metrics": {"serviceMonitor": {"enabled": True}}}, KEDA_API,
                       "metrics.serviceMonitor.enabled needs the Prometheus operator"),
    "PrometheusRule": ({"metrics": {"prometheusRule": {"enabled": True}}}, KEDA_API,
                       "metrics.prometheusRule.enabled needs the Prometheus operator"),
    "external metrics API": ({"autoscaling": {"mode": "hpa", "hpa": {"metric": "lag"}}},
                             PROMETHEUS_OPERATOR_API, "needs the external metrics API"),
}


@pytest.mark.parametrize("values,api_versions,needle", MISSING_CRDS.values(), ids=list(MISSING_CRDS))
def test_a_missing_custom_resource_fails_with_what_to_do(chart, values, api_versions, needle):
    """Not Helm's generic 'no matches for kind ScaledObject' after the install started."""
    with pytest.raises(helm.HelmRenderError, match=re.escape(needle)) as failed:
        render_raw(chart, values, api_versions=api_versions)
    assert "--api-versions" in str(failed.value), "helm template users need the flag"


def test_a_cluster_without_custom_resources_installs_the_plain_modes(chart):
    for values in ({"autoscaling": {"mode": "hpa"}},
                   {"autoscaling": {"mode": "none"}, "metrics": {"dashboard": {"enabled": True}}}):
        docs = render(chart, values, api_versions=[])
        assert {d["kind"] for d in docs}.isdisjoint(CRD_KINDS)


def test_group_versions_alone_satisfy_the_checks(chart):
    """`helm template --api-versions keda.sh/v1alpha1` lists the group/version only."""
    docs = render(chart, SCENARIOS["everything"],
                  api_versions=["keda.sh/v1alpha1", "monitoring.coreos.com/v1"])
    assert {"ScaledObject", "ServiceMonitor", "PrometheusRule"} <= {d["kind"] for d in docs}


# ---- image reference and version label --------------------------------------------------------

LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
DIGEST = "sha256:" + "0123456789abcdef" * 4
APP_VERSION = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]


@pytest.mark.parametrize("image,ref,version", [
    ({}, f"mgeo-worker:{APP_VERSION}", APP_VERSION),
    ({"tag": "v1.2"}, "mgeo-worker:v1.2", "v1.2"),
    ({"tag": f"v1.2@{DIGEST}"}, f"mgeo-worker:v1.2@{DIGEST}", "v1.2"),
    ({"digest": DIGEST}, f"mgeo-worker@{DIGEST}", APP_VERSION),
    ({"tag": "v1.2", "digest": DIGEST}, f"mgeo-worker:v1.2@{DIGEST}", "v1.2"),
], ids=["default", "tag", "tag@digest", "digest", "tag and digest"])
def test_image_reference_and_a_valid_version_label(chart, image, ref, version):
    docs = render(chart, {"image": image})
    assert container(docs)["image"] == ref
    pod = workload(docs)["spec"]["template"]["metadata"]
    for labels in [d["metadata"].get("labels", {}) for d in docs] + [pod["labels"]]:
        for key, value in labels.items():
            assert len(value) <= 63 and LABEL_VALUE.match(value), f"label {key}={value!r}"
        if "app.kubernetes.io/version" in labels:
            assert labels["app.kubernetes.io/version"] == version


# ---- exactly-once: a StatefulSet with stable transactional ids ----------------------------------

def pod_environment(docs: list[dict], pod_name: str) -> dict[str, str]:
    """The environment the worker of pod `pod_name` starts with: envFrom sources, then the env
    entries in order, with `$(VAR)` expanded and metadata.name resolved as the kubelet does."""
    env = {k: v for k, v in worker_environment(docs).items() if k.startswith("MGEO_")}
    for entry in container(docs)["env"]:
        if "valueFrom" in entry:
            assert entry["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}, entry
            env[entry["name"]] = pod_name
        else:
            env[entry["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)),
                                        entry["value"])
    return env


def settings_of(env: dict[str, str], monkeypatch) -> WorkerSettings:
    for name in [k for k in os.environ if k.upper().startswith("MGEO_")]:
        monkeypatch.delenv(name)
    for key, value in env.items():
        if key.startswith("MGEO_"):
            monkeypatch.setenv(key, value)
    return WorkerSettings()


def test_exactly_once_runs_a_statefulset_whose_pods_keep_their_transactional_ids(
        chart, monkeypatch):
    """A Deployment's replacement pod has a new name, so a new transactional id, and the
    crashed pod's open transaction blocks read_committed readers until it times out. In the
    StatefulSet each pod's id is its own and the same after every restart."""
    docs = render(chart, {"worker": {"delivery": "exactly-once"}})
    sts = workload(docs)
    name = sts["metadata"]["name"]
    assert sts["kind"] == "StatefulSet" and of_kind(docs, "Deployment") == []
    assert "replicas" not in sts["spec"], "KEDA owns the count"
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    assert one(docs, "ScaledObject")["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1", "kind": "StatefulSet", "name": name}
    headless = next(s for s in of_kind(docs, "Service")
                    if s["metadata"]["name"] == sts["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    assert selects(headless["spec"]["selector"], sts["spec"]["template"]["metadata"]["labels"])

    ids = {}
    for ordinal in range(3):
        pod = f"{name}-{ordinal}"  # a StatefulSet's pod names: the same after a restart
        s = settings_of(pod_environment(docs, pod), monkeypatch)
        assert s.delivery == "exactly-once"
        assert s.group_instance_id == pod
        ids[pod] = s.transactional_id_or_default()
        assert ids[pod] == f"mgeo-workers-{pod}"
    assert len(set(ids.values())) == 3


def test_a_deployment_sets_no_per_pod_ids(chart):
    docs = render(chart)
    assert workload(docs)["kind"] == "Deployment"
    names = {e["name"] for e in container(docs)["env"]}
    assert not names & {"POD_NAME", "MGEO_TRANSACTIONAL_ID", "MGEO_GROUP_INSTANCE_ID"}


def test_statefulset_with_an_hpa_and_at_least_once(chart, monkeypatch):
    docs = render(chart, SCENARIOS["statefulset at-least-once"])
    sts = workload(docs)
    assert sts["kind"] == "StatefulSet"
    assert one(docs, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]["kind"] == "StatefulSet"
    s = settings_of(pod_environment(docs, f"{sts['metadata']['name']}-1"), monkeypatch)
    assert s.delivery == "at-least-once"
    assert s.group_instance_id == f"{sts['metadata']['name']}-1"


# ---- several worker processes per pod -----------------------------------------------------------

def test_processes_set_mgeo_processes_and_scale_the_cpus(chart, monkeypatch):
    docs = render(chart, SCENARIOS["processes"])
    assert config(docs)["MGEO_PROCESSES"] == "3"
    resources = container(docs)["resources"]
    assert resources["requests"] == {"cpu": "4500m", "memory": "8Gi"}  # 1500m x 3; memory per pod
    assert resources["limits"] == {"cpu": "6", "memory": "16Gi", GPU: 1}
    assert settings_of(worker_environment(docs), monkeypatch).processes == 3

    docs = render(chart)
    assert config(docs)["MGEO_PROCESSES"] == "1"
    assert container(docs)["resources"]["requests"]["cpu"] == "2"


@pytest.mark.parametrize("cpu,processes,expected", [
    ("2", 3, "6"), ("500m", 2, "1"), ("250m", 3, "750m"), (0.5, 3, "1500m"), ("1.5", 2, "3"),
    (1, 4, "4")])
def test_cpu_quantities_multiply(chart, cpu, processes, expected):
    docs = render(chart, {"worker": {"processes": processes},
                          "autoscaling": {"maxReplicas": 2},
                          "resources": {"requests": {"cpu": cpu}}})
    assert container(docs)["resources"]["requests"]["cpu"] == expected


def test_processes_in_a_statefulset_keep_their_ids(chart):
    docs = render(chart, {"worker": {"delivery": "exactly-once", "processes": 2},
                          "autoscaling": {"maxReplicas": 6}})
    names = [e["name"] for e in container(docs)["env"]]
    # One pod-level id for both; the worker appends -<n> per process (test_processes.py), so
    # no two members share one.
    assert {"MGEO_TRANSACTIONAL_ID", "MGEO_GROUP_INSTANCE_ID"} <= set(names)


# ---- alerts and dashboard -----------------------------------------------------------------------

def _monitoring():
    from test_monitoring import monitoring

    return monitoring


def test_prometheus_rule_is_the_unit_tested_rule_file(chart):
    """The rules deploy/monitoring.py builds (and deploy/alerts.test.yml unit-tests), wired to
    this release: its metrics Service's job in its namespace, its group's lag on its topic."""
    monitoring = _monitoring()
    docs = render(chart, SCENARIOS["everything"])
    rule = one(docs, "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "prom"
    service = next(s["metadata"]["name"] for s in of_kind(docs, "Service")
                   if s["metadata"]["name"].endswith("-metrics"))
    wiring = monitoring.Wiring(
        workers=f'namespace="{NAMESPACE}", job="{service}"',
        input_lag='sum(kafka_consumergroup_lag_sum{consumergroup="mgeo-workers", '
                  'topic="address-pairs"})',
        lag_floor="0", runbooks="docs/operations.md")
    assert rule["spec"] == monitoring.rule_file(wiring)
    tested = yaml.safe_load((ROOT / "deploy" / "alerts.yml").read_text(encoding="utf-8"))
    assert [len(g["rules"]) for g in rule["spec"]["groups"]] == [
        len(g["rules"]) for g in tested["groups"]]
    # Prometheus' own templates reach the rule as written, not expanded by Helm.
    annotations = [r["annotations"]["summary"] for g in rule["spec"]["groups"]
                   for r in g["rules"]]
    assert any("{{ $labels." in a for a in annotations)


def test_fleet_alerts_follow_the_values(chart):
    """Which targets are this release's workers, where the lag comes from and at what lag no
    worker need run: from the values, with no placeholder left anywhere."""
    monitoring = _monitoring()
    values = {
        "kafka": {"groupId": "geo-scoring", "inputTopic": "pairs.v2"},
        "autoscaling": {"minReplicas": 0, "keda": {"activationLagThreshold": 50}},
        "metrics": {"prometheusRule": {
            "enabled": True, "workerJob": "kubernetes-pods",
            "runbookUrl": "https://git.example/mgeo-stream/blob/v0.1.0/docs/operations.md",
            "lag": {"metric": "kafka_consumer_lag_sum", "groupLabel": "group",
                    "topicLabel": "topic_name"}}}}
    spec = one(render(chart, values), "PrometheusRule")["spec"]
    assert "__MGEO_" not in json.dumps(spec)
    assert spec == monitoring.rule_file(monitoring.Wiring(
        workers=f'namespace="{NAMESPACE}", job="kubernetes-pods"',
        input_lag='sum(kafka_consumer_lag_sum{group="geo-scoring", topic_name="pairs.v2"})',
        lag_floor="50",
        runbooks="https://git.example/mgeo-stream/blob/v0.1.0/docs/operations.md"))

    keda_lag = 'sum(keda_scaler_metrics_value{namespace="scoring", scaledObject="scorer"})'
    values = {"autoscaling": {"mode": "hpa", "keda": {"activationLagThreshold": 50}},
              "metrics": {"prometheusRule": {"enabled": True, "lag": {"query": keda_lag}}}}
    (absent,) = [r for g in one(render(chart, values), "PrometheusRule")["spec"]["groups"]
                 for r in g["rules"] if r["alert"] == "MgeoWorkersAbsent"]
    # The HPA never scales to zero, so any lag with no worker up is an outage.
    assert absent["expr"].startswith(f"({keda_lag}) > 0 unless on() ")


def test_dashboard_configmap_holds_the_generated_dashboard(chart):
    docs = render(chart, SCENARIOS["everything"])
    (cm,) = [d for d in of_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-dashboard")]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "MGeo"}
    (text,) = cm["data"].values()
    built = (ROOT / "deploy" / "grafana" / "dashboards" / "mgeo-worker.json").read_text("utf-8")
    assert json.loads(text) == json.loads(built)
    assert (CHART / "files" / "mgeo-worker-dashboard.json").read_text("utf-8") == built


def test_alerts_and_dashboard_are_off_by_default(chart):
    docs = render(chart)
    assert of_kind(docs, "PrometheusRule") == []
    assert [d["metadata"]["name"] for d in of_kind(docs, "ConfigMap")] == [
        workload(docs)["metadata"]["name"]]
