"""The Kubernetes manifests validate against the API schemas (strict: an unknown field is an
error, a missing schema is a failure), and the shared-database variant has the shape that
makes it scale: stateless replicas with rolling updates, jobs without volumes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
MANIFESTS = sorted(DEPLOY.rglob("*.yaml"))
K8S_VERSION = "1.31.0"


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_manifests_validate_strictly(path: Path) -> None:
    import kubernetes_validate

    docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
    assert docs, path
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def _docs(name: str) -> dict[tuple[str, str], dict[str, Any]]:
    docs = yaml.safe_load_all((DEPLOY / name).read_text(encoding="utf-8"))
    return {(d["kind"], d["metadata"]["name"]): d for d in docs if d}


def test_the_shared_database_variant_scales_without_shared_volumes() -> None:
    docs = _docs("postgres/semsearch.yaml")
    deploy = docs[("Deployment", "semsearch")]["spec"]
    assert deploy["replicas"] > 1 and deploy["strategy"]["type"] == "RollingUpdate"
    pod = deploy["template"]["spec"]
    assert all("persistentVolumeClaim" not in v for v in pod["volumes"])
    (container,) = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["SEMSEARCH_STORE"]["valueFrom"]["secretKeyRef"]["name"] == "semsearch-db"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert docs[("HorizontalPodAutoscaler", "semsearch")]["spec"]["minReplicas"] >= 2
    for job in ("semsearch-sync", "semsearch-sync-full"):
        spec = docs[("CronJob", job)]["spec"]
        assert spec["concurrencyPolicy"] == "Forbid"
        jpod = spec["jobTemplate"]["spec"]["template"]["spec"]
        assert all("persistentVolumeClaim" not in v for v in jpod["volumes"]), job
        (c,) = jpod["containers"]
        assert any(e["name"] == "SEMSEARCH_STORE" for e in c["env"])
