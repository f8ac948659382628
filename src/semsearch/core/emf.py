"""Per-run metrics as CloudWatch Embedded Metric Format (EMF) documents.

A CronJob's stdout usually lands in CloudWatch Logs already; an EMF line there becomes
CloudWatch metrics with no agent and no API call. The document is the run's own JSON report
(every field kept, so whatever parsed the plain line still works) plus ``_aws``, which tells
CloudWatch which members are metrics, in which unit, under which namespace and dimensions.
The dimension members (``Collection``, ``Command``) are added as strings.

The table of which report fields are metrics, and in which unit, lives here once: the EMF
document and the OpenTelemetry per-run counters (``run_measurements``) both read it."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# The units CloudWatch accepts (the specification's MetricUnit pattern).
UNITS = frozenset({
    "Seconds", "Microseconds", "Milliseconds", "Bytes", "Kilobytes", "Megabytes", "Gigabytes",
    "Terabytes", "Bits", "Kilobits", "Megabits", "Gigabits", "Terabits", "Percent", "Count",
    "Bytes/Second", "Kilobytes/Second", "Megabytes/Second", "Gigabytes/Second",
    "Terabytes/Second", "Bits/Second", "Kilobits/Second", "Megabits/Second",
    "Gigabits/Second", "Terabits/Second", "Count/Second", "None"})

MAX_METRICS = 100  # MetricDefinitions per directive
MAX_DIMENSIONS = 30  # keys per DimensionSet
MAX_DIMENSION_VALUE = 1024  # characters of a dimension's value
# A log event is at most 256 KB to 1 MB depending on where it lands; one context member (a
# folder sync's watermark names every file) must not push the line past that.
MAX_CONTEXT_BYTES = 4096
DIMENSIONS = ("Collection", "Command")
DEFAULT_NAMESPACE = "semsearch"


@dataclass(frozen=True)
class RunMetric:
    """One numeric report field. ``otlp`` is False for fields that are already summaries
    (a p95 of this run's latencies): exported as a histogram they would mislead."""

    name: str
    unit: str
    otlp: bool = True

    @property
    def is_duration(self) -> bool:
        return self.unit in ("Seconds", "Milliseconds", "Microseconds")


def _metrics(counts: str, *extra: RunMetric) -> tuple[RunMetric, ...]:
    return (*(RunMetric(n, "Count") for n in counts.split()), *extra)


_EMBED = (RunMetric("cost", "None"), RunMetric("saved_cost", "None"),
          RunMetric("embed_p50_ms", "Milliseconds", otlp=False),
          RunMetric("embed_p95_ms", "Milliseconds", otlp=False),
          RunMetric("seconds", "Seconds"))

# failed is 0 or 1: an alarm on its sum catches a CronJob that stopped succeeding.
RUN_METRICS: dict[str, tuple[RunMetric, ...]] = {
    "index": _metrics("documents new changed unchanged skipped duplicates chunks embedded "
                      "cache_hits cache_misses cache_errors model_calls tokens truncated "
                      "retries failed", *_EMBED, RunMetric("embed_seconds", "Seconds")),
    "sync": _metrics("rows_seen new changed unchanged deleted rejected chunks_written "
                     "batches model_calls embedded tokens cache_hits cache_misses "
                     "cache_errors failed", *_EMBED),
}


def _number(value: Any) -> float | int | None:
    """A JSON number CloudWatch takes, or None: booleans are JSON true/false, and NaN or
    infinity are not JSON at all."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _flatten(report: Mapping[str, Any]) -> dict[str, Any]:
    """The report with what the metric table expects at top level: the failure flag, and
    an index run's provider latency percentiles (nested in its JSON) as their own members."""
    out = dict(report)
    status = str(out.get("status", "ok"))
    out.setdefault("failed", 0 if status == "ok" else 1)
    latency = out.get("provider_latency_ms")
    if isinstance(latency, Mapping):
        out.setdefault("embed_p50_ms", latency.get("p50", 0.0))
        out.setdefault("embed_p95_ms", latency.get("p95", 0.0))
    return out


def run_metrics(command: str) -> tuple[RunMetric, ...]:
    try:
        return RUN_METRICS[command]
    except KeyError:
        raise ValueError(f"no metric table for command {command!r}; known: "
                         f"{', '.join(sorted(RUN_METRICS))}") from None


def emf_document(command: str, report: Mapping[str, Any], *,
                 namespace: str = DEFAULT_NAMESPACE,
                 timestamp_ms: int | None = None) -> dict[str, Any]:
    """The EMF document of one run of ``command`` ("index" or "sync"). Metrics absent from
    the report (a run that failed before counting) are left out of the directive rather
    than published as zeros; the report's other members ride along as context."""
    if not namespace or len(namespace) > 1024:
        raise ValueError("the CloudWatch namespace must be 1 to 1024 characters")
    doc = _flatten(report)
    definitions: list[dict[str, str]] = []
    for metric in run_metrics(command):
        value = _number(doc.get(metric.name))
        if value is None:
            continue  # absent or not a number: context at most, never a metric
        doc[metric.name] = value
        definitions.append({"Name": metric.name, "Unit": metric.unit})
    metric_names = {d["Name"] for d in definitions}
    for key, value in list(doc.items()):
        if key in metric_names or isinstance(value, int | float | bool | None):
            continue
        if isinstance(value, str):
            if len(value) > MAX_CONTEXT_BYTES // 4:  # <= 4 bytes per character in UTF-8
                doc[key] = value[: MAX_CONTEXT_BYTES // 4] + "..."
            continue
        size = len(json.dumps(value, ensure_ascii=False, default=str).encode("utf-8"))
        if size > MAX_CONTEXT_BYTES:
            doc[key] = f"<{size:,} bytes, omitted from the metrics line>"
    collection = str(report.get("collection") or "-")[:MAX_DIMENSION_VALUE]
    doc["Collection"], doc["Command"] = collection, command
    doc["_aws"] = {
        "Timestamp": int(time.time() * 1000) if timestamp_ms is None else int(timestamp_ms),
        "CloudWatchMetrics": [{"Namespace": namespace, "Dimensions": [list(DIMENSIONS)],
                               "Metrics": definitions[:MAX_METRICS]}],
    }
    return doc


def run_measurements(command: str,
                     report: Mapping[str, Any]) -> list[tuple[RunMetric, float | int]]:
    """The run's metrics for a push exporter (OpenTelemetry): every numeric field the table
    marks as exportable, with its value."""
    doc = _flatten(report)
    out: list[tuple[RunMetric, float | int]] = []
    for metric in run_metrics(command):
        value = _number(doc.get(metric.name))
        if metric.otlp and value is not None:
            out.append((metric, value))
    return out
