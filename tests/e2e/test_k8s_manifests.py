"""The Kubernetes manifests of both shapes validate against the API schemas of the oldest
supported and the newest bundled Kubernetes (strict: an unknown field is an error, a missing
schema - an API version that was removed - is a failure), pass checkov with every skipped
check explained, and have the shape each needs: the embedded one a single replica on its
volume, the shared-PostgreSQL one stateless replicas that roll, scale and fail over."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
MANIFESTS = sorted(DEPLOY.rglob("*.yaml"))
CHECKOV_CONFIG = DEPLOY / ".checkov.yml"
OLDEST = "1.30.0"
API = {"app.kubernetes.io/name": "semsearch", "app.kubernetes.io/component": "api"}

Doc = dict[str, Any]


def _newest() -> str:
    import kubernetes_validate

    return str(kubernetes_validate.latest_version())


def _load(path: Path) -> list[Doc]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def _shape(folder: str) -> dict[tuple[str, str], Doc]:
    docs: dict[tuple[str, str], Doc] = {}
    for path in sorted((DEPLOY / folder).rglob("*.yaml")):
        for d in _load(path):
            key = (d["kind"], d["metadata"]["name"])
            assert key not in docs, f"{key} twice in {folder}"
            docs[key] = d
    return docs


def _pod(doc: Doc) -> Doc:
    """The pod spec of a Deployment, Job or CronJob."""
    spec = doc["spec"]
    if doc["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return cast(Doc, spec["template"]["spec"])


def _pod_labels(doc: Doc) -> dict[str, str]:
    spec = doc["spec"]
    if doc["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return cast(dict[str, str], spec["template"]["metadata"]["labels"])


def _workloads(docs: dict[tuple[str, str], Doc]) -> Iterator[Doc]:
    return (d for d in docs.values() if d["kind"] in ("Deployment", "Job", "CronJob"))


# -- schemas ---------------------------------------------------------------------------------

def test_there_are_manifests_for_both_shapes() -> None:
    assert (DEPLOY / "embedded" / "deployment.yaml").is_file()
    assert (DEPLOY / "postgres" / "api.yaml").is_file()
    assert not list(DEPLOY.glob("*.yaml")), "every manifest belongs to one shape's folder"


@pytest.mark.parametrize("version", [OLDEST, "newest"])
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_manifests_validate_strictly(path: Path, version: str) -> None:
    import kubernetes_validate
    from kubernetes_validate.utils import SchemaNotFoundError

    k8s = _newest() if version == "newest" else version
    docs = _load(path)
    assert docs, path
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, k8s, strict=True)
        except SchemaNotFoundError:
            pytest.fail(f"{path.name}: no schema for {doc['apiVersion']} {doc['kind']} in "
                        f"Kubernetes {k8s} (an API version it removed?)")


def test_a_removed_api_version_is_a_failure_not_a_warning() -> None:
    """What the test above relies on: the validator raises for an API it has no schema of."""
    import kubernetes_validate
    from kubernetes_validate.utils import SchemaNotFoundError

    removed = {"apiVersion": "autoscaling/v2beta2", "kind": "HorizontalPodAutoscaler",
               "metadata": {"name": "x"}, "spec": {}}
    for version in (OLDEST, _newest()):
        with pytest.raises(SchemaNotFoundError):
            kubernetes_validate.validate(removed, version, strict=True)


def test_the_newest_bundled_version_is_newer_than_the_oldest_supported() -> None:
    newest = tuple(int(x) for x in _newest().split(".")[:2])
    assert newest > (1, 30)


# -- checkov ---------------------------------------------------------------------------------

def _skips() -> dict[str, str]:
    """The skipped checks and the comment line above each, which must say why."""
    lines = CHECKOV_CONFIG.read_text(encoding="utf-8").splitlines()
    skips: dict[str, str] = {}
    for i, line in enumerate(lines):
        m = re.fullmatch(r"\s*-\s*(CKV2?_[A-Z0-9_]+)\s*(#.*)?", line)
        if m:
            reason = lines[i - 1].strip()
            assert reason.startswith("#"), f"{m.group(1)} has no reason on the line above"
            skips[m.group(1)] = reason.lstrip("# ")
    config = yaml.safe_load(CHECKOV_CONFIG.read_text(encoding="utf-8"))
    assert sorted(config["skip-check"]) == sorted(skips), "a skip-check entry not parsed"
    return skips


def test_every_skipped_checkov_check_is_explained() -> None:
    skips = _skips()
    assert skips
    for check, reason in skips.items():
        assert len(reason.split()) >= 6, f"{check}: '{reason}' is not a reason"


def test_checkov_passes_offline() -> None:
    checkov = os.environ.get("SEMSEARCH_CHECKOV") or shutil.which("checkov")
    if checkov is None:
        pytest.fail("checkov is not installed: pip install checkov (pyproject's k8s-lint "
                    "extra) in its own environment and put it on PATH, or set "
                    "SEMSEARCH_CHECKOV to its path")
    # Offline: no platform key (nothing is uploaded or fetched), no mapping download, no
    # external checks download.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("BC_", "PRISMA_", "CKV_"))}
    env["BC_SKIP_MAPPING"] = "TRUE"
    proc = subprocess.run(
        [checkov, "--config-file", str(CHECKOV_CONFIG), "-d", str(DEPLOY),
         "--framework", "kubernetes", "--skip-download", "-o", "json"],
        capture_output=True, text=True, env=env, timeout=600, check=False)
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"checkov said no report (exit {proc.returncode}):\n{proc.stdout[-2000:]}"
                    f"\n{proc.stderr[-2000:]}")
    for r in report if isinstance(report, list) else [report]:
        summary = r["summary"]
        failed = [(c["check_id"], c["resource"], c["file_path"])
                  for c in r["results"]["failed_checks"]]
        assert not failed, failed
        assert summary["parsing_errors"] == 0, summary
        assert summary["passed"] > 0, summary
    assert proc.returncode == 0, proc.stderr[-2000:]


# -- every pod of both shapes ----------------------------------------------------------------

@pytest.mark.parametrize("shape", ["embedded", "postgres"])
def test_every_pod_runs_locked_down_with_bounded_resources(shape: str) -> None:
    for doc in _workloads(_shape(shape)):
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        pod = _pod(doc)
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] >= 10000, name
        assert pod["automountServiceAccountToken"] is False, name
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"]["drop"] == ["ALL"], name
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), (name, kind)
            assert ":latest" not in c["image"] and ":" in c["image"], name
            # A read-only root needs a writable /tmp.
            assert any(m["mountPath"] == "/tmp" for m in c["volumeMounts"]), name


# -- the embedded shape ----------------------------------------------------------------------

def test_the_embedded_shape_is_one_replica_on_its_volume() -> None:
    docs = _shape("embedded")
    deploy = docs[("Deployment", "semsearch")]
    spec = deploy["spec"]
    assert spec["replicas"] == 1 and spec["strategy"]["type"] == "Recreate"
    pod = _pod(deploy)
    (container,) = pod["containers"]
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"]
              for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert list(claims.values()) == ["semsearch-data"]
    pvc = docs[("PersistentVolumeClaim", "semsearch-data")]
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    (data,) = claims
    assert env["SEMSEARCH_HOME"] == mounts[data]  # the store is on the volume
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert "startupProbe" in container
    service = docs[("Service", "semsearch")]["spec"]
    assert service["selector"].items() <= _pod_labels(deploy).items()
    for job in ("semsearch-sync", "semsearch-sync-full"):
        cron = docs[("CronJob", job)]
        spec = cron["spec"]
        assert spec["concurrencyPolicy"] == "Forbid"
        assert spec["successfulJobsHistoryLimit"] >= 1 and spec["failedJobsHistoryLimit"] >= 1
        assert spec["jobTemplate"]["spec"]["backoffLimit"] >= 1
        jpod = _pod(cron)
        assert [v["persistentVolumeClaim"]["claimName"] for v in jpod["volumes"]
                if "persistentVolumeClaim" in v] == ["semsearch-data"], job
        # ReadWriteOnce: the job must land on the API pod's node to mount the same claim.
        (term,) = jpod["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert term["topologyKey"] == "kubernetes.io/hostname"
        assert term["labelSelector"]["matchLabels"].items() <= _pod_labels(deploy).items()
        (c,) = jpod["containers"]
        jenv = {e["name"]: e.get("value") for e in c["env"]}
        jmounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
        assert jenv["SEMSEARCH_HOME"] == jmounts["data"], job


# -- the shared-PostgreSQL shape -------------------------------------------------------------

def _env_names(container: Doc, docs: dict[tuple[str, str], Doc]) -> dict[str, Doc]:
    """The container's environment: its own variables and those of its ConfigMaps."""
    env: dict[str, Doc] = {}
    for source in container.get("envFrom", []):
        config = docs[("ConfigMap", source["configMapRef"]["name"])]
        env.update({k: {"name": k, "value": v} for k, v in config["data"].items()})
    env.update({e["name"]: e for e in container.get("env", [])})
    return env


def test_the_shared_shape_scales_without_shared_volumes() -> None:
    docs = _shape("postgres")
    deploy = docs[("Deployment", "semsearch")]
    spec = deploy["spec"]
    assert spec["replicas"] > 1 and spec["strategy"]["type"] == "RollingUpdate"
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = _pod(deploy)
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["startupProbe"]["failureThreshold"] > 1
    labels = _pod_labels(deploy)
    assert docs[("Service", "semsearch")]["spec"]["selector"].items() <= labels.items()
    pdb = docs[("PodDisruptionBudget", "semsearch")]["spec"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    assert 1 <= pdb["minAvailable"] < spec["replicas"]
    for doc in _workloads(docs):
        name = doc["metadata"]["name"]
        jpod = _pod(doc)
        assert all("persistentVolumeClaim" not in v for v in jpod["volumes"]), name
        (c,) = jpod["containers"]
        env = _env_names(c, docs)
        assert env["SEMSEARCH_STORE"]["valueFrom"]["secretKeyRef"]["name"] == "semsearch-db"
        # Only the API pods carry the API's labels: the Service never routes to a job.
        if doc["kind"] != "Deployment":
            assert _pod_labels(doc)["app.kubernetes.io/component"] != "api", name


def test_the_shared_shape_settings_are_real_settings() -> None:
    from semsearch.config import Settings

    known = {f"SEMSEARCH_{name.upper()}" for name in Settings.model_fields} | {"SEMSEARCH_STORE"}
    config = _shape("postgres")[("ConfigMap", "semsearch-config")]["data"]
    assert not set(config) - known, set(config) - known
    assert "SEMSEARCH_STORE" not in config  # the database URL holds a password: a Secret


def test_the_provider_key_is_an_optional_secret_file() -> None:
    docs = _shape("postgres")
    key_file = docs[("ConfigMap", "semsearch-config")]["data"]["SEMSEARCH_EMBEDDER_API_KEY_FILE"]
    for name in ("semsearch", "semsearch-sync", "semsearch-sync-full",
                 "semsearch-reindex-docs"):
        doc = next(d for d in _workloads(docs) if d["metadata"]["name"] == name)
        pod = _pod(doc)
        secrets = {v["name"]: v["secret"] for v in pod["volumes"] if "secret" in v}
        (c,) = pod["containers"]
        (mount,) = [m for m in c["volumeMounts"] if key_file.startswith(m["mountPath"] + "/")]
        secret = secrets[mount["name"]]
        assert secret["secretName"] == "semsearch-embedder-key" and secret["optional"], name
        assert mount["readOnly"] is True


def test_the_autoscaler_reads_cpu_and_the_adapters_requests_per_second() -> None:
    docs = _shape("postgres")
    hpa = docs[("HorizontalPodAutoscaler", "semsearch")]
    assert hpa["apiVersion"] == "autoscaling/v2"
    spec = hpa["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                      "name": "semsearch"}
    assert 2 <= spec["minReplicas"] < spec["maxReplicas"]
    by_type = {m["type"]: m for m in spec["metrics"]}
    assert by_type["Resource"]["resource"]["name"] == "cpu"
    pods_metric = by_type["Pods"]["pods"]["metric"]["name"]

    adapter = docs[("ConfigMap", "prometheus-adapter")]
    (rule,) = yaml.safe_load(adapter["data"]["config.yaml"])["rules"]
    assert rule["name"]["as"] == pods_metric
    assert "semsearch_request_seconds_count" in rule["seriesQuery"]
    assert re.search(r"\brate\(<<\.Series>>\{<<\.LabelMatchers>>", rule["metricsQuery"])
    assert "<<.GroupBy>>" in rule["metricsQuery"]
    assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}
    assert re.fullmatch(rule["name"]["matches"], "semsearch_request_seconds_count")
    # The rule sits in a subfolder: `kubectl apply -f deploy/k8s/postgres/` leaves it alone.
    assert (DEPLOY / "postgres" / "prometheus-adapter" / "rules.yaml").is_file()


def test_the_adapter_rule_matches_what_the_service_exports() -> None:
    """The series and the routes the rule names are the ones the API really exports."""
    from prometheus_client import generate_latest

    from semsearch.api.metrics import Metrics
    from semsearch.api.routes import router

    metrics = Metrics(cast(Any, types.SimpleNamespace(engine=None)))
    metrics.requests.labels(route="/search", method="POST", status="200").observe(0.01)
    text = generate_latest(metrics.registry).decode()
    assert re.search(r'^semsearch_request_seconds_count\{method="POST",route="/search",'
                     r'status="200"\} 1\.0$', text, re.M), text
    adapter = _shape("postgres")[("ConfigMap", "prometheus-adapter")]
    (rule,) = yaml.safe_load(adapter["data"]["config.yaml"])["rules"]
    (excluded,) = re.findall(r'route!~"([^"]+)"', rule["metricsQuery"])
    paths = {getattr(r, "path", None) for r in router.routes}
    assert set(excluded.split("|")) <= paths, excluded


def test_the_shared_shape_jobs_run_once_each() -> None:
    docs = _shape("postgres")
    for name in ("semsearch-sync", "semsearch-sync-full"):
        spec = docs[("CronJob", name)]["spec"]
        assert spec["concurrencyPolicy"] == "Forbid"
        assert spec["successfulJobsHistoryLimit"] >= 1 and spec["failedJobsHistoryLimit"] >= 1
        assert spec["jobTemplate"]["spec"]["backoffLimit"] >= 1
    reindex = docs[("Job", "semsearch-reindex-docs")]
    (c,) = _pod(reindex)["containers"]
    command = c["command"]
    assert command[:2] == ["semsearch", "reindex"] and "-c" in command
    gate = command[command.index("--gate") + 1]
    assert any(m["mountPath"] == gate for m in c["volumeMounts"])
    keys = docs[("Job", "semsearch-keys-create")]
    (k,) = _pod(keys)["containers"]
    assert k["command"][:3] == ["semsearch", "keys", "create"]
    # Run-once Jobs are not applied with the folder: they live in jobs/, created on purpose.
    for path in (DEPLOY / "postgres").glob("*.yaml"):
        assert all(d["kind"] != "Job" for d in _load(path)), path


def test_the_network_policy_lets_in_the_api_port_and_out_only_dns_db_and_redis() -> None:
    docs = _shape("postgres")
    deploy = docs[("Deployment", "semsearch")]
    (container,) = _pod(deploy)["containers"]
    api_port = container["ports"][0]["containerPort"]
    policies = [d["spec"] for d in docs.values() if d["kind"] == "NetworkPolicy"]
    api = next(p for p in policies
               if p["podSelector"].get("matchLabels", {}).items() <= _pod_labels(deploy).items()
               and p["podSelector"].get("matchLabels"))
    assert sorted(api["policyTypes"]) == ["Egress", "Ingress"]
    assert {port["port"] for rule in api["ingress"] for port in rule["ports"]} == {api_port}
    for policy in policies:
        assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"]
        ports = {port["port"] for rule in policy["egress"] for port in rule["ports"]}
        assert ports == {53, 5432, 6379}, ports
        assert all(rule.get("to") for rule in policy["egress"]), "an egress rule to anywhere"
    # Every semsearch pod is covered by some policy.
    jobs = next(p for p in policies if "matchExpressions" in p["podSelector"])
    (components,) = [e["values"] for e in jobs["podSelector"]["matchExpressions"]
                     if e["key"] == "app.kubernetes.io/component"]
    for doc in _workloads(docs):
        component = _pod_labels(doc)["app.kubernetes.io/component"]
        assert component == "api" or component in components, doc["metadata"]["name"]
