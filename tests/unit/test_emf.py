"""CloudWatch Embedded Metric Format: the documents ``core.emf`` builds obey the
specification, checked by a validator written from it (its JSON schema, through
``jsonschema``, plus the rules the schema leaves to prose: at most 100 metric definitions,
every referenced member present at the root, metric values numbers, dimension values
strings of at most 1,024 characters)."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from typing import Any

import jsonschema
import pytest

from semsearch.core.emf import (
    MAX_CONTEXT_BYTES,
    RUN_METRICS,
    UNITS,
    emf_document,
    run_measurements,
)
from semsearch.services.ingest import IndexReport
from semsearch.services.sync import SyncReport

_NAME = {"type": "string", "minLength": 1, "maxLength": 1024}
_UNIT_PATTERN = "^(" + "|".join(u.replace("/", "\\/") for u in (
    "Seconds", "Microseconds", "Milliseconds", "Bytes", "Kilobytes", "Megabytes", "Gigabytes",
    "Terabytes", "Bits", "Kilobits", "Megabits", "Gigabits", "Terabits", "Percent", "Count",
    "Bytes/Second", "Kilobytes/Second", "Megabytes/Second", "Gigabytes/Second",
    "Terabytes/Second", "Bits/Second", "Kilobits/Second", "Megabits/Second",
    "Gigabits/Second", "Terabits/Second", "Count/Second", "None")) + ")$"

# The specification's schema (root, metadata, metric directive, dimension set, metric
# definition), restated.
EMF_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["_aws"],
    "properties": {"_aws": {
        "type": "object",
        "required": ["Timestamp", "CloudWatchMetrics"],
        "properties": {
            "Timestamp": {"type": "integer"},
            "CloudWatchMetrics": {"type": "array", "items": {
                "type": "object",
                "required": ["Namespace", "Dimensions", "Metrics"],
                "properties": {
                    "Namespace": _NAME,
                    "Dimensions": {"type": "array", "minItems": 1, "items": {
                        "type": "array", "minItems": 0, "maxItems": 30,
                        "items": {"type": "string", "minLength": 1, "maxLength": 250}}},
                    "Metrics": {"type": "array", "items": {
                        "type": "object",
                        "required": ["Name"],
                        "properties": {
                            "Name": _NAME,
                            "Unit": {"type": "string", "pattern": _UNIT_PATTERN},
                            "StorageResolution": {"type": "integer"}}}},
                }}},
        }}},
}


def _numeric(value: Any) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value))


def validate_emf(doc: Mapping[str, Any]) -> None:
    """Raise AssertionError (or jsonschema's ValidationError) unless ``doc`` is a valid EMF
    document. Used by the CLI tests too."""
    jsonschema.validate(doc, EMF_SCHEMA)
    now_ms = time.time() * 1000
    assert abs(doc["_aws"]["Timestamp"] - now_ms) < 86_400_000, "Timestamp is not epoch ms"
    for directive in doc["_aws"]["CloudWatchMetrics"]:
        metrics = directive["Metrics"]
        assert len(metrics) <= 100, "over 100 MetricDefinitions in one directive"
        for definition in metrics:
            name = definition["Name"]
            assert name in doc, f"metric {name!r} is not a member of the root"
            value = doc[name]
            if isinstance(value, list):
                assert len(value) <= 100 and all(_numeric(v) for v in value), name
            else:
                assert _numeric(value), f"metric {name!r} has a non-numeric value {value!r}"
            if "StorageResolution" in definition:
                assert definition["StorageResolution"] in (1, 60)
        for dimension_set in directive["Dimensions"]:
            assert len(dimension_set) <= 30
            for key in dimension_set:
                assert key in doc, f"dimension {key!r} is not a member of the root"
                assert isinstance(doc[key], str) and len(doc[key]) <= 1024, key
    # The log event itself: one JSON object, well under CloudWatch Logs' event size.
    assert len(json.dumps(doc).encode("utf-8")) < 256 * 1024


def _index_report(**kw: Any) -> dict[str, Any]:
    report = IndexReport(collection="docs", documents=120, new=100, changed=15, unchanged=5,
                         chunks=340, embedded=300, cache_hits=40, cache_misses=300,
                         model_calls=38, tokens=51_234, cost=0.001025, seconds=12.5,
                         embed_seconds=9.75, provider_latency_ms={"p50": 21.5, "p95": 48.0,
                                                                  "p99": 70.1}, **kw)
    return report.to_dict()


def _sync_report(**kw: Any) -> dict[str, Any]:
    report = SyncReport(collection="products", source="postgresql://db/shop", mode="incremental",
                        status="ok", rows_seen=500, new=20, changed=3, deleted=2, rejected=1,
                        chunks_written=40, model_calls=5, embedded=35, tokens=4096, cost=0.5,
                        cache_hits=8, cache_misses=35, embed_p50_ms=12.0, embed_p95_ms=30.0,
                        seconds=3.25, watermark={"updated_at": "2024-05-01T10:00:00", "id": 7},
                        run_id=42, rejected_reasons={"r9": "the text is NULL"}, **kw)
    return {"event": "sync_run", **report.to_dict()}


def test_index_report_is_a_valid_emf_document_with_its_values() -> None:
    doc = emf_document("index", _index_report(), timestamp_ms=int(time.time() * 1000))
    validate_emf(doc)
    (directive,) = doc["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == "semsearch"
    assert directive["Dimensions"] == [["Collection", "Command"]]
    assert doc["Collection"] == "docs" and doc["Command"] == "index"
    units = {m["Name"]: m["Unit"] for m in directive["Metrics"]}
    assert units["documents"] == units["tokens"] == units["cache_hits"] == "Count"
    assert units["seconds"] == "Seconds" and units["embed_p95_ms"] == "Milliseconds"
    assert units["cost"] == "None"
    assert doc["tokens"] == 51_234 and doc["cost"] == 0.001025 and doc["failed"] == 0
    # the nested latency percentiles become members of their own
    assert doc["embed_p50_ms"] == 21.5 and doc["embed_p95_ms"] == 48.0
    # the plain report is still all there: a parser of the JSON line keeps working
    assert doc["provider_latency_ms"] == {"p50": 21.5, "p95": 48.0, "p99": 70.1}
    assert doc["status"] == "ok"


def test_sync_report_carries_its_context_beside_the_metrics() -> None:
    doc = emf_document("sync", _sync_report(), namespace="shop/search")
    validate_emf(doc)
    assert doc["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "shop/search"
    names = {m["Name"] for m in doc["_aws"]["CloudWatchMetrics"][0]["Metrics"]}
    assert {"rows_seen", "new", "deleted", "rejected", "tokens", "cost", "seconds",
            "failed"} <= names
    # context rides as members that are not metrics
    assert not names & {"run_id", "status", "source", "watermark", "event"}
    assert doc["run_id"] == 42 and doc["source"] == "postgresql://db/shop"
    assert doc["watermark"] == {"updated_at": "2024-05-01T10:00:00", "id": 7}
    json.dumps(doc)  # one JSON object, nothing else


def test_a_failed_run_publishes_failed_and_nothing_invented() -> None:
    doc = emf_document("sync", {"event": "sync_run", "collection": "products",
                                "status": "failed", "error": "connection refused"})
    validate_emf(doc)
    assert [m["Name"] for m in doc["_aws"]["CloudWatchMetrics"][0]["Metrics"]] == ["failed"]
    assert doc["failed"] == 1 and doc["error"] == "connection refused"
    # an index run's failure reads the status the same way
    assert emf_document("index", _index_report(status="failed: disk full"))["failed"] == 1


def test_values_that_are_not_json_numbers_are_never_metrics() -> None:
    report = _index_report()
    report.update(tokens=True, cost=float("nan"), seconds=float("inf"), chunks=None,
                  documents="12")
    doc = emf_document("index", report)
    names = {m["Name"] for m in doc["_aws"]["CloudWatchMetrics"][0]["Metrics"]}
    assert not names & {"tokens", "cost", "seconds", "chunks", "documents"}
    assert "new" in names
    doc.pop("cost"), doc.pop("seconds")  # NaN and infinity are not JSON either
    validate_emf(doc)


def test_bulky_context_is_cut_so_the_line_stays_one_log_event() -> None:
    files = {f"folder/file-{i:06d}.md": [1_700_000_000_000_000_000 + i, 512]
             for i in range(20_000)}
    report = _sync_report()
    report["watermark"] = {"files": files}
    report["error"] = "x" * 100_000
    doc = emf_document("sync", report)
    validate_emf(doc)
    assert isinstance(doc["watermark"], str) and "omitted" in doc["watermark"]
    assert len(doc["error"]) <= MAX_CONTEXT_BYTES
    assert doc["rows_seen"] == 500  # metrics are never cut


def test_every_table_entry_is_a_field_of_its_report_and_a_cloudwatch_unit() -> None:
    fields = {"index": set(emf_document("index", _index_report())),
              "sync": set(emf_document("sync", _sync_report()))}
    for command, metrics in RUN_METRICS.items():
        names = [m.name for m in metrics]
        assert len(names) == len(set(names)) <= 100
        assert set(names) <= fields[command], set(names) - fields[command]
        assert {m.unit for m in metrics} <= UNITS
    assert len(UNITS) == 27  # the specification's list


def test_measurements_for_otlp_skip_summaries_and_keep_the_failure_flag() -> None:
    got = {m.name: v for m, v in run_measurements("sync", _sync_report())}
    assert got["tokens"] == 4096 and got["failed"] == 0 and got["seconds"] == 3.25
    assert "embed_p95_ms" not in got  # a percentile of one run is not a histogram sample
    assert run_measurements("index", {"collection": "x", "status": "failed"})[0][1] == 1


def test_bad_namespace_and_unknown_command_are_refused() -> None:
    with pytest.raises(ValueError, match="namespace"):
        emf_document("index", _index_report(), namespace="")
    with pytest.raises(ValueError, match="index, sync"):
        emf_document("consume", {})


@pytest.mark.parametrize("breakage", [
    "missing_member", "string_value", "bad_unit", "too_many_dimensions", "too_many_metrics",
    "dimension_not_string", "seconds_timestamp", "no_aws"])
def test_the_validator_refuses_what_the_specification_refuses(breakage: str) -> None:
    doc = emf_document("index", _index_report())
    directive = doc["_aws"]["CloudWatchMetrics"][0]
    if breakage == "missing_member":
        del doc["tokens"]
    elif breakage == "string_value":
        doc["tokens"] = "51234"
    elif breakage == "bad_unit":
        directive["Metrics"][0]["Unit"] = "Tokens"
    elif breakage == "too_many_dimensions":
        keys = [f"d{i}" for i in range(31)]
        doc.update({k: "v" for k in keys})
        directive["Dimensions"] = [keys]
    elif breakage == "too_many_metrics":
        extra = {f"m{i}": i for i in range(101)}
        doc.update(extra)
        directive["Metrics"] = [{"Name": k, "Unit": "Count"} for k in extra]
    elif breakage == "dimension_not_string":
        doc["Collection"] = 7
    elif breakage == "seconds_timestamp":
        doc["_aws"]["Timestamp"] = int(time.time())
    else:
        del doc["_aws"]
    with pytest.raises((AssertionError, jsonschema.ValidationError)):
        validate_emf(doc)
