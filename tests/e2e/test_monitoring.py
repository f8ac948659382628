"""The monitoring shipped in deploy/monitoring/ works against the service as it is: the rules
pass ``promtool check rules`` and their unit tests (``promtool test rules``), every alert
carries a severity, a summary and a runbook that the README has, every PromQL expression of
the Grafana dashboard parses, and every metric the rules and the dashboard read is in the
real ``/metrics`` output of a server that indexed and searched.

Needs Debian's ``prometheus`` package for ``promtool`` (``scripts/test.sh`` installs it)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from semsearch.config import Settings
from semsearch.services.ingest import index_path
from semsearch.services.quickstart import sample_dir
from tests.api.conftest import LiveServer, make_home

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "monitoring"
RULES = MONITORING / "alerts.yaml"
RULES_TEST = MONITORING / "alerts_test.yaml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
ALERTS = {"SemsearchSearchP99OverBudget", "SemsearchErrorRateHigh",
          "SemsearchCacheHitRatioCollapsed", "SemsearchEmbeddingCostOverBudget",
          "SemsearchSyncStale", "SemsearchReadinessFlapping", "SemsearchConsumerFallingBehind",
          "SemsearchDeadLetters"}


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found: the monitoring tests need Debian's prometheus package, "
                    "which scripts/test.sh installs (apt-get install -y prometheus)",
                    pytrace=False)
    return path


def _run(*args: str) -> str:
    done = subprocess.run(args, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, f"{' '.join(args)}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [rule for group in doc["groups"] for rule in group["rules"]]


def _dashboard_exprs() -> list[str]:
    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return [t["expr"] for p in panels(dash["panels"]) for t in p.get("targets", [])]


# -- the rules ----------------------------------------------------------------------------------

def test_rules_pass_promtool_check(promtool: str) -> None:
    out = _run(promtool, "check", "rules", str(RULES))
    assert "SUCCESS: 14 rules found" in out


def test_every_alert_fires_when_it_should_and_only_then(promtool: str) -> None:
    out = _run(promtool, "test", "rules", str(RULES_TEST))
    assert "SUCCESS" in out
    # Each alert has a test where it fires and one where it stays silent.
    cases = yaml.safe_load(RULES_TEST.read_text(encoding="utf-8"))["tests"]
    fired: set[str] = set()
    silent: set[str] = set()
    for case in cases:
        for check in case.get("alert_rule_test", []):
            (fired if check["exp_alerts"] else silent).add(check["alertname"])
    assert fired == ALERTS and silent == ALERTS


def _github_anchor(heading: str) -> str:
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_every_alert_has_a_severity_a_summary_and_a_runbook_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    readme = re.sub(r"^```.*?^```", "", readme, flags=re.M | re.S)  # comments in code blocks
    anchors = {_github_anchor(m.group(1)) for m in re.finditer(r"^#+ (.+)$", readme, re.M)}
    alerts = {r["alert"]: r for r in _rules() if "alert" in r}
    assert set(alerts) == ALERTS
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["annotations"]["summary"], name
        path, _, anchor = rule["annotations"]["runbook"].partition("#")
        assert path == "README.md" and anchor in anchors, (name, anchor)


# -- the dashboard ------------------------------------------------------------------------------

def test_every_dashboard_expression_is_valid_promql(promtool: str, tmp_path: Path) -> None:
    exprs = _dashboard_exprs()
    assert len(exprs) >= 15
    # promtool parses PromQL only inside rules: each expression becomes a recording rule.
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:expr_{i}", "expr": expr} for i, expr in enumerate(exprs)]}]}
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump(rules), encoding="utf-8")
    out = _run(promtool, "check", "rules", str(path))
    assert f"SUCCESS: {len(exprs)} rules found" in out


def test_the_dashboard_has_the_panels_operators_need() -> None:
    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    titles = " | ".join(p["title"].lower() for p in dash["panels"])
    for what in ("request rate", "per stage", "errors by code", "cache hit ratio", "tokens",
                 "cost", "documents per collection", "sync lag"):
        assert what in titles, what
    exprs = " ".join(_dashboard_exprs())
    for q in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({q}, sum by (le, stage) (rate(semsearch_stage_seconds_bucket"\
            in exprs, q


KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
            "group_right", "offset", "bool", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: what is left once strings, label matchers,
    ranges, grouping clauses and offsets are cut, less functions (a name before a paren) and
    keywords."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    s = re.sub(r"\boffset\s+\w+", " ", s)
    names: set[str] = set()
    for m in re.finditer(r"(?<![\w.:])[A-Za-z_:][\w:]*", s):
        if s[m.end():].lstrip().startswith("(") or m.group().lower() in KEYWORDS:
            continue
        names.add(m.group())
    return names


def test_metric_names_are_found_and_nothing_else() -> None:
    assert metric_names('sum by (le, stage) (rate(semsearch_stage_seconds_bucket'
                        '{route="/a b", stage=~"x|y"}[5m]))') == {"semsearch_stage_seconds_bucket"}
    assert metric_names("time() - max by (collection) (g{kind=\"sync\"}) > 26 * 3600 and on () "
                        "a:b:c offset 1d < 1e3") == {"g", "a:b:c"}


@pytest.fixture(scope="module")
def scraped(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        tuple[LiveServer, set[str]]]:
    """A real server that indexed through the API and the CLI's service, searched in every
    mode and answered an error, and the sample names of its /metrics."""
    home = make_home(tmp_path_factory.mktemp("monitoring"), models_dir)
    live = LiveServer(Settings(home=home, embedder_threads=2)).start()
    try:
        engine = live.app.state.semsearch.engine
        index_path(engine, "indexed", sample_dir())  # a recorded run, as the CronJob's are
        with live.client() as c:
            assert c.post("/collections", json={"name": "docs"}).status_code == 201
            docs = [{"id": "a", "text": "sourdough starter feeding schedule"},
                    {"id": "b", "text": "composting kitchen scraps at home"}]
            r = c.post("/collections/docs/documents", json={"documents": docs})
            assert r.status_code == 200, r.text
            for mode in ("dense", "keyword", "hybrid"):
                r = c.get("/search", params={"q": "bread", "collection": "docs", "mode": mode})
                assert r.status_code == 200, r.text
            assert c.get("/search", params={"q": "x", "collection": "nope"}).status_code == 404
            assert c.get("/readyz").status_code == 200
            text = c.get("/metrics").text
        names = {s.name for fam in text_string_to_metric_families(text) for s in fam.samples}
        yield live, names
    finally:
        live.stop()


def _consumer_metric_names() -> set[str]:
    """What `semsearch consume --metrics-port` serves, after one batch."""
    from prometheus_client import generate_latest

    from semsearch.cli.consume import _Metrics

    metrics = _Metrics("docs", "redis://127.0.0.1:6379/0 stream s group g")
    metrics.batch({"upserted": 3, "dead_letter": 1}, 0.2, 5)
    text = generate_latest(metrics.registry).decode()
    return {s.name for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_every_metric_the_rules_and_dashboard_read_is_exported(
        scraped: tuple[LiveServer, set[str]]) -> None:
    _, served = scraped
    exported = served | _consumer_metric_names()
    rules = _rules()
    recorded = {r["record"] for r in rules if "record" in r}
    exprs = [str(r["expr"]) for r in rules] + _dashboard_exprs()
    used = set().union(*(metric_names(e) for e in exprs))
    assert "semsearch_last_successful_run_timestamp_seconds" in used
    assert "semsearch_stage_seconds_bucket" in used
    raw = {n for n in used if ":" not in n}
    assert raw - exported == set(), f"read by the rules or dashboard, not in /metrics: " \
        f"{sorted(raw - exported)}; exported: {sorted(exported)}"
    # A name with a colon is a recording rule's output, which alerts.yaml must define.
    assert {n for n in used if ":" in n} <= recorded


def test_the_exported_metrics_pass_promtool_lint(promtool: str,
                                                 scraped: tuple[LiveServer, set[str]]) -> None:
    live, _ = scraped
    with live.client() as c:
        text = c.get("/metrics").text
    done = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


# -- the last-success gauge ---------------------------------------------------------------------

def _gauge(live: LiveServer) -> dict[tuple[str, str], float]:
    with live.client() as c:
        text = c.get("/metrics").text
    return {(s.labels["collection"], s.labels["kind"]): s.value
            for fam in text_string_to_metric_families(text)
            if fam.name == "semsearch_last_successful_run_timestamp_seconds"
            for s in fam.samples}


def test_last_success_gauge_follows_the_run_history(scraped: tuple[LiveServer, set[str]]) -> None:
    live, _ = scraped
    store = live.app.state.semsearch.engine.store
    now = time.time()
    assert abs(_gauge(live)[("indexed", "index")] - now) < 300

    def run(status: str) -> None:
        started = datetime.now(UTC).isoformat(timespec="seconds")
        store.finish_run(store.start_run("products", "sync", started), status, {})

    run("failed")  # no success among its runs: 0, which any staleness threshold catches
    assert _gauge(live)[("products", "sync")] == 0.0
    run("ok")
    run("failed")  # the newest run failed; the success before it is what counts
    assert abs(_gauge(live)[("products", "sync")] - time.time()) < 300
    # A run still going has not succeeded (yet).
    store.start_run("fresh", "sync", datetime.now(UTC).isoformat(timespec="seconds"))
    assert _gauge(live)[("fresh", "sync")] == 0.0
