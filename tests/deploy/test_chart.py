"""The container image and the Helm chart, checked with the tools platform teams use."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest
import yaml

from consumer.http import Health, MetricsServer
from consumer.metrics import Metrics

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "unlearn"
VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
RENDERED = REPO / "deploy" / "k8s" / "unlearn.yaml"


def tool(name: str, env: str | None = None) -> str:
    path = os.environ.get(env, "") if env else ""
    path = path or shutil.which(name) or ""
    if not path:
        if os.environ.get("CI"):
            pytest.fail(f"{name} missing in CI: .ci/run installs it")
        pytest.skip(f"{name} not installed")
    return path


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([tool("helm", "UNLEARN_HELM"), *args], capture_output=True, text=True)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def render(*args: str) -> list[dict]:
    out = helm("template", "unlearn", str(CHART), *args).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [doc for doc in docs if doc["kind"] == kind]


@pytest.mark.parametrize("values", VALUES, ids=[v.name for v in VALUES])
def test_lint_template_and_validate_strictly(values, tmp_path):
    helm("lint", str(CHART), "-f", str(values))
    manifest = tmp_path / "rendered.yaml"
    manifest.write_text(helm("template", "unlearn", str(CHART), "-f", str(values)).stdout)
    result = subprocess.run(
        [tool("kubernetes-validate"), "--strict", "--quiet", str(manifest)],
        capture_output=True,
        text=True,
    )
    # Custom resources (ServiceMonitor, PrometheusRule, ScaledObject) have no bundled schema:
    # those are warnings; anything else is a failure.
    assert result.returncode == 0, result.stdout + result.stderr


def test_yamllint_and_hadolint():
    result = subprocess.run(
        [tool("yamllint"), "-s", "deploy", ".yamllint"], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout
    result = subprocess.run(
        [tool("hadolint"), "Dockerfile"], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout


def test_probes_point_at_endpoints_the_service_serves():
    docs = render("-f", str(CHART / "ci" / "full-values.yaml"))
    (deployment,) = by_kind(docs, "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    port = {p["name"]: p["containerPort"] for p in container["ports"]}["metrics"]
    (config,) = [c for c in by_kind(docs, "ConfigMap") if "UNLEARN_METRICS_PORT" in c["data"]]
    assert int(config["data"]["UNLEARN_METRICS_PORT"]) == port
    health = Health(deadline_s=60, redis_ok=lambda: True)
    health.assigned = 1
    server = MetricsServer(0, Metrics(), health, host="127.0.0.1")
    try:
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            get = container[probe]["httpGet"]
            assert get["port"] == "metrics"
            with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{get['path']}") as response:
                assert response.status == 200, probe
    finally:
        server.stop()


def test_no_secret_value_reaches_a_configmap():
    docs = render("-f", str(CHART / "ci" / "full-values.yaml"))
    for config in by_kind(docs, "ConfigMap"):
        text = yaml.safe_dump(config["data"]).lower()
        assert "password" not in text and "secret" not in text
    env = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["env"]
    secrets = {
        e["name"]: e["valueFrom"]["secretKeyRef"]["name"]
        for e in env
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert secrets == {
        "UNLEARN_KAFKA_SASL_PASSWORD": "unlearn-kafka",
        "UNLEARN_REDIS_PASSWORD": "unlearn-redis",
    }
    leak = helm(
        "template",
        "x",
        str(CHART),
        "--set",
        "kafka.properties.sasl\\.password=hunter2",
        check=False,
    )
    assert leak.returncode != 0 and "reference a Secret" in leak.stderr
    leak = helm(
        "template", "x", str(CHART), "--set", "redis.url=redis://:hunter2@r:6379/0", check=False
    )
    assert leak.returncode != 0 and "redis.passwordSecret" in leak.stderr


def test_keda_never_allows_more_replicas_than_partitions():
    docs = render(
        "--set", "keda.enabled=true", "--set", "kafka.partitions=4", "--set", "keda.maxReplicas=4"
    )
    (scaled,) = by_kind(docs, "ScaledObject")
    assert scaled["spec"]["maxReplicaCount"] <= 4
    assert "replicas" not in by_kind(docs, "Deployment")[0]["spec"]  # KEDA owns the count
    too_many = helm(
        "template",
        "x",
        str(CHART),
        "--set",
        "keda.enabled=true",
        "--set",
        "kafka.partitions=4",
        "--set",
        "keda.maxReplicas=5",
        check=False,
    )
    assert too_many.returncode != 0 and "kafka.partitions" in too_many.stderr


def test_pods_run_as_non_root_with_a_read_only_root_filesystem():
    docs = render("-f", str(CHART / "ci" / "full-values.yaml"))
    pods = [
        d["spec"]["template"]["spec"] for d in by_kind(docs, "Deployment") + by_kind(docs, "Job")
    ] + [d["spec"] for d in by_kind(docs, "Pod")]
    assert len(pods) == 3
    for pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert pod["automountServiceAccountToken"] is False
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]


def test_threads_follow_the_cpu_limit_and_shutdown_fits_the_grace_period():
    docs = render("--set", "resources.limits.cpu=2500m")
    (deployment,) = by_kind(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["OMP_NUM_THREADS"] == "3" and env["OPENBLAS_NUM_THREADS"] == "1"
    assert env["UNLEARN_SOLVE_THREADS"] == "3"
    (config,) = by_kind(docs, "ConfigMap")
    assert pod["terminationGracePeriodSeconds"] > float(config["data"]["UNLEARN_REVOKE_BUDGET_S"])
    # Rolling: a new pod joins before the old one leaves (each shard's fence keeps them safe).
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    ids = {e["name"]: e.get("valueFrom") for e in pod["containers"][0]["env"]}
    assert ids["UNLEARN_INSTANCE_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}


def test_plain_manifests_are_the_chart_rendered_with_defaults():
    current = helm("template", "unlearn", str(CHART), "--skip-tests").stdout
    assert RENDERED.read_text() == current, (
        "deploy/k8s/unlearn.yaml is stale: helm template unlearn deploy/helm/unlearn "
        "--skip-tests > deploy/k8s/unlearn.yaml"
    )


def test_dockerfile_is_multi_stage_non_root_with_a_healthcheck():
    text = (REPO / "Dockerfile").read_text()
    assert sum(line.startswith("FROM ") for line in text.splitlines()) == 2
    assert "USER 10001" in text and "HEALTHCHECK" in text and 'ENTRYPOINT ["unlearn"]' in text
    final_stage = text.rsplit("FROM ", 1)[1]
    assert "pip install" not in final_stage and "gcc" not in final_stage


STRICT = CHART / "ci" / "strict-values.yaml"
FULL = CHART / "ci" / "full-values.yaml"


def egress_ports(docs: list[dict]) -> list[list[int]]:
    (policy,) = by_kind(docs, "NetworkPolicy")
    return [sorted(p["port"] for p in rule["ports"]) for rule in policy["spec"]["egress"]]


@pytest.mark.parametrize(
    ("values", "kafka", "redis"),
    [
        ([], [9092], [6379]),
        (["-f", str(FULL)], [9093], [6380]),  # both from the configured addresses
        (["-f", str(STRICT)], [29092, 29093], [6379, 26379]),  # a URL without a port; explicit
        (["--set", "networkPolicy.kafkaPorts={9094,9095}"], [9094, 9095], [6379]),
    ],
)
def test_the_network_policy_lets_the_pods_reach_the_configured_servers(values, kafka, redis):
    assert egress_ports(render(*values))[:2] == [kafka, redis]


@pytest.mark.parametrize(
    ("setting", "complaint"),
    [
        ("kafka.bootstrapServer=kafka:9092", "additional properties 'bootstrapServer'"),
        ("replicaCount=two", "want integer"),
        ("redis.port=6380", "additional properties 'port'"),  # moved to networkPolicy
        ("podAntiAffinity=sometimes", "podAntiAffinity"),
        ("metrics.port=70000", "metrics/port"),
        ("redis.url=http://redis:6379", "redis/url"),
    ],
)
def test_the_values_schema_rejects_typos_and_wrong_types(setting, complaint):
    result = helm("template", "x", str(CHART), "--set", setting, check=False)
    assert result.returncode != 0 and complaint in result.stderr, result.stderr


def test_every_value_is_described_by_the_schema():
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def missing(node: dict, described: dict, path: str) -> list[str]:
        out = []
        for key, value in node.items():
            where = f"{path}.{key}".lstrip(".")
            if key not in described.get("properties", {}):
                out.append(where)
            elif isinstance(value, dict) and "properties" in described["properties"][key]:
                out += missing(value, described["properties"][key], where)
        return out

    assert missing(values, schema, "") == []


def test_keda_authenticates_as_the_service_does():
    docs = render("-f", str(FULL))
    (scaled,) = by_kind(docs, "ScaledObject")
    (auth,) = by_kind(docs, "TriggerAuthentication")
    assert scaled["spec"]["triggers"][0]["authenticationRef"]["name"] == auth["metadata"]["name"]
    from_env = {e["parameter"]: e["name"] for e in auth["spec"]["env"]}
    secrets = {e["parameter"]: (e["name"], e["key"]) for e in auth["spec"]["secretTargetRef"]}
    assert secrets == {"password": ("unlearn-kafka", "password"),
                       "ca": ("unlearn-kafka-tls", "ca.crt")}  # fmt: skip
    (deployment,) = by_kind(docs, "Deployment")
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]
           ["containers"][0]["env"]}  # fmt: skip
    assert {p: env[name] for p, name in from_env.items()} == {
        "sasl": "scram_sha512",
        "username": "unlearn",
        "tls": "enable",
    }
    # SASL without TLS: no CA, no tls parameter.
    auth = by_kind(render("-f", str(STRICT)), "TriggerAuthentication")[0]["spec"]
    assert {e["parameter"] for e in auth["env"]} == {"sasl", "username"}
    assert [e["parameter"] for e in auth["secretTargetRef"]] == ["password"]
    plain = render("--set", "keda.enabled=true")
    assert by_kind(plain, "TriggerAuthentication") == []
    assert "authenticationRef" not in by_kind(plain, "ScaledObject")[0]["spec"]["triggers"][0]
    unsupported = helm(
        "template", "x", str(CHART), "-f", str(FULL),
        "--set", "kafka.properties.sasl\\.mechanism=GSSAPI", check=False,
    )  # fmt: skip
    assert unsupported.returncode != 0 and "GSSAPI" in unsupported.stderr


def test_the_bootstrap_load_is_a_hook_that_never_overwrites_by_surprise():
    (job,) = by_kind(render("-f", str(FULL)), "Job")
    hooks = job["metadata"]["annotations"]
    assert hooks["helm.sh/hook"] == "pre-install"
    assert "before-hook-creation" in hooks["helm.sh/hook-delete-policy"]
    assert job["spec"]["activeDeadlineSeconds"] > 0
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert "--replace" in container["args"] and "--if-absent" not in container["args"]
    # It runs before the release's ConfigMap exists: its settings are its own environment.
    assert "envFrom" not in container
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["UNLEARN_REDIS_URL"] == "rediss://redis-cluster:6380/0"
    assert env["UNLEARN_REDIS_CLUSTER"] == "true"
    (job,) = by_kind(render("-f", str(STRICT)), "Job")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--if-absent" in args and "--replace" not in args
    # A retrained model on every upgrade: swapped into the running service, never replaced.
    swap = ["--set", "bootstrap.swap=true", "--set", "bootstrap.trainedAt=2026-12-01T02:00:00"]
    (job,) = by_kind(render("-f", str(STRICT), *swap), "Job")
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--swap" in args and "--trained-at=2026-12-01T02:00:00" in args
    assert "--if-absent" not in args and "--replace" not in args
    both = helm("template", "x", str(CHART), "-f", str(FULL), *swap, check=False)
    assert both.returncode != 0 and "exclude each other" in both.stderr


def pod_spec(docs: list[dict]) -> dict:
    return by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]


def test_replicas_spread_over_nodes_and_zones():
    spec = pod_spec(render())
    (soft,) = spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert soft["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    selector = by_kind(render(), "Deployment")[0]["spec"]["selector"]["matchLabels"]
    assert soft["podAffinityTerm"]["labelSelector"]["matchLabels"] == selector
    (zones,) = spec["topologySpreadConstraints"]
    assert zones["topologyKey"] == "topology.kubernetes.io/zone"
    assert zones["labelSelector"]["matchLabels"] == selector
    strict = pod_spec(render("-f", str(STRICT)))
    anti = strict["affinity"]["podAntiAffinity"]
    (hard,) = anti["requiredDuringSchedulingIgnoredDuringExecution"]
    assert hard["topologyKey"] == "kubernetes.io/hostname"
    assert "topologySpreadConstraints" not in strict
    custom = pod_spec(render("--set", "affinity.nodeAffinity.x=1", "--set", "podAntiAffinity=none"))
    assert custom["affinity"] == {"nodeAffinity": {"x": 1}}
    assert "affinity" not in pod_spec(render("--set", "podAntiAffinity=none"))


def test_helm_test_checks_the_endpoints_through_the_service():
    docs = render("-f", str(FULL))
    (check,) = by_kind(docs, "Pod")
    assert check["metadata"]["annotations"]["helm.sh/hook"] == "test"
    (service,) = by_kind(docs, "Service")
    script = check["spec"]["containers"][0]["args"][0]
    port = service["spec"]["ports"][0]["port"]
    assert f"http://{service['metadata']['name']}:{port}" in script
    for path in ("/healthz", "/readyz", "/metrics"):
        assert f'"{path}"' in script
    # The NetworkPolicy lets the test in beside the scrapers.
    (policy,) = by_kind(docs, "NetworkPolicy")
    sources = policy["spec"]["ingress"][0]["from"]
    assert {"app.kubernetes.io/component": "test",
            "app.kubernetes.io/instance": "unlearn"} in [
        s.get("podSelector", {}).get("matchLabels") for s in sources
    ]  # fmt: skip
    assert by_kind(render("-f", str(STRICT)), "Pod") == []
