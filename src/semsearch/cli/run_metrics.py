"""What a pipeline run (``index``, ``sync``) reports beyond its summary: its metrics line in
the format asked for (the plain JSON report, or CloudWatch EMF), its counters for an
OpenTelemetry exporter, and the span that parents its batches."""

from __future__ import annotations

import json
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from semsearch.ports import Span

METRICS_FORMATS = ("json", "emf")

metrics_format_option = click.option(
    "--metrics-format", type=click.Choice(METRICS_FORMATS), default="json", show_default=True,
    help="emf: print the run's metrics as one CloudWatch Embedded Metric Format line on "
    "stdout (namespace SEMSEARCH_METRICS_NAMESPACE; the summary goes to stderr)")


def emf_line(engine: Any, command: str, report: Mapping[str, Any]) -> str:
    from semsearch.core.emf import emf_document

    doc = emf_document(command, report, namespace=engine.settings.metrics_namespace)
    return json.dumps(doc, ensure_ascii=False, default=str)


def _otel_unit(name: str, unit: str) -> str:
    if name in ("cost", "saved_cost"):
        return "USD"
    return {"Seconds": "s", "Milliseconds": "ms", "Microseconds": "us"}.get(unit, "1")


def record_run(engine: Any, command: str, report: Mapping[str, Any]) -> None:
    """The run's counters (rows, documents, chunks, tokens, cost, cache) and durations, as
    ``semsearch.run.<field>``, by collection and command. A no-op unless telemetry is
    configured."""
    from semsearch.core.emf import run_measurements

    tel = engine.telemetry
    status = "ok" if str(report.get("status", "ok")) == "ok" else "failed"
    attrs = {"semsearch.collection": str(report.get("collection") or "-"),
             "semsearch.command": command}
    tel.add("semsearch.runs", 1, {**attrs, "semsearch.status": status},
            description="index and sync runs, by status")
    for metric, value in run_measurements(command, report):
        unit = _otel_unit(metric.name, metric.unit)
        if metric.is_duration:
            tel.observe(f"semsearch.run.{metric.name}", value, attrs, unit=unit)
        else:
            tel.add(f"semsearch.run.{metric.name}", value, attrs, unit=unit)


def run_span(engine: Any, command: str, collection: str) -> AbstractContextManager[Span]:
    """The root span of one run: its batches' spans (chunk, embed, store write, index
    apply) are its children."""
    span: AbstractContextManager[Span] = engine.telemetry.span(
        f"semsearch.{command}", {"semsearch.collection": collection,
                                 "semsearch.command": command})
    return span
