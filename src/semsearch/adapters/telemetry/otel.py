"""``Telemetry`` over OpenTelemetry: traces and metrics pushed over OTLP/HTTP (protobuf).

OTLP is what the CloudWatch agent, the Azure Monitor exporter/collector and every major
tracing backend ingest, so one exporter serves them all. Only wiring imports this module,
and only when ``SEMSEARCH_OTLP_ENDPOINT`` is set: the default path loads no OpenTelemetry.

The providers are this object's own, never the process-global ones, so two engines in one
process (tests, a server and a CLI helper) never share or fight over exporters; the engine
shuts them down when it closes, which exports what is still buffered (the batch span
processor's queue, a last collection of every metric).

Spans go to ``<endpoint>/v1/traces`` and metrics to ``<endpoint>/v1/metrics`` and nowhere
else: the endpoints are passed explicitly (the ``OTEL_EXPORTER_OTLP_*_ENDPOINT`` variables
cannot redirect them), and for a loopback endpoint proxy variables are ignored, since a
proxy can only send loopback traffic somewhere it was not meant to go."""

from __future__ import annotations

import ipaddress
import logging
import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from importlib import metadata
from typing import Any
from urllib.parse import urlsplit

from semsearch.errors import InputError

log = logging.getLogger(__name__)

# Seconds: the Prometheus histograms' buckets (api/metrics.py), so both views agree.
SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
EXPORT_TIMEOUT_S = 5.0  # per export request: a collector that is down delays exit by ~this


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def signal_urls(endpoint: str) -> tuple[str, str, bool]:
    """(traces URL, metrics URL, loopback?) of an OTLP/HTTP base URL."""
    url = endpoint.strip().rstrip("/")
    for suffix in ("/v1/traces", "/v1/metrics"):
        if url.endswith(suffix):  # a signal URL given where the base was meant
            url = url[: -len(suffix)]
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InputError(f"SEMSEARCH_OTLP_ENDPOINT={endpoint!r} is not an OTLP/HTTP base URL; "
                         "give e.g. http://127.0.0.1:4318 (traces go to /v1/traces, metrics "
                         "to /v1/metrics)")
    return f"{url}/v1/traces", f"{url}/v1/metrics", _is_loopback(parts.hostname)


class _Span:
    def __init__(self, span: Any) -> None:
        self._span = span

    def set(self, attributes: Mapping[str, Any]) -> None:
        self._span.set_attributes(dict(attributes))


class OtelTelemetry:
    """Implements ``ports.Telemetry``. Instruments are made on first use by name (a counter
    for ``add``, a histogram for ``observe``) and kept."""

    def __init__(self, endpoint: str, *, service_name: str = "semsearch",
                 export_interval_ms: int = 60_000,
                 timeout_s: float = EXPORT_TIMEOUT_S) -> None:
        traces_url, metrics_url, loopback = signal_urls(endpoint)
        try:
            import requests
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
                OTLPMetricExporter,
            )
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.metrics import MeterProvider
            from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError as exc:
            raise InputError(f"SEMSEARCH_OTLP_ENDPOINT is set but OpenTelemetry is not "
                             f"installed ({exc.name} is missing): pip install "
                             "'semsearch[otel]'") from None

        self.traces_url, self.metrics_url = traces_url, metrics_url
        sessions = []
        for _ in range(2):  # one per exporter: each closes its own on shutdown
            session = requests.Session()
            session.trust_env = not loopback  # no proxy, no .netrc for a loopback collector
            sessions.append(session)
        attributes: dict[str, str] = {"service.version": _version()}
        if not os.environ.get("OTEL_SERVICE_NAME"):
            attributes["service.name"] = service_name
        resource = Resource.create(attributes)

        self._tracer_provider = TracerProvider(resource=resource, shutdown_on_exit=False)
        self._tracer_provider.add_span_processor(BatchSpanProcessor(
            OTLPSpanExporter(endpoint=traces_url, timeout=timeout_s, session=sessions[0])))
        reader = PeriodicExportingMetricReader(
            OTLPMetricExporter(endpoint=metrics_url, timeout=timeout_s, session=sessions[1]),
            export_interval_millis=export_interval_ms)
        self._meter_provider = MeterProvider(resource=resource, metric_readers=[reader],
                                             shutdown_on_exit=False)
        self._tracer = self._tracer_provider.get_tracer("semsearch", _version())
        self._meter = self._meter_provider.get_meter("semsearch", _version())
        self._instruments: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()
        self._closed = False

    # -- traces ----------------------------------------------------------------------------
    @contextmanager
    def span(self, name: str, attributes: Mapping[str, Any] | None = None) -> Iterator[_Span]:
        with self._tracer.start_as_current_span(name, attributes=dict(attributes or {})) as s:
            yield _Span(s)

    # -- metrics ---------------------------------------------------------------------------
    def _instrument(self, kind: str, name: str, unit: str, description: str) -> Any:
        key = (kind, name)
        found = self._instruments.get(key)
        if found is not None:
            return found
        with self._lock:
            found = self._instruments.get(key)
            if found is None:
                if kind == "counter":
                    found = self._meter.create_counter(name, unit=unit,
                                                       description=description)
                else:
                    found = self._meter.create_histogram(
                        name, unit=unit, description=description,
                        explicit_bucket_boundaries_advisory=(
                            list(SECONDS_BUCKETS) if unit == "s" else None))
                self._instruments[key] = found
            return found

    def add(self, name: str, value: float, attributes: Mapping[str, Any] | None = None, *,
            unit: str = "1", description: str = "") -> None:
        if value < 0:
            return  # a counter only goes up; a negative delta would be dropped with a warning
        self._instrument("counter", name, unit, description).add(
            value, attributes=dict(attributes or {}))

    def observe(self, name: str, value: float, attributes: Mapping[str, Any] | None = None,
                *, unit: str = "s", description: str = "") -> None:
        self._instrument("histogram", name, unit, description).record(
            value, attributes=dict(attributes or {}))

    def shutdown(self) -> None:
        """Export what is buffered, then stop. Export failures (a collector that is down)
        are logged by the SDK and never fail the command that produced them."""
        if self._closed:
            return
        self._closed = True
        try:
            self._tracer_provider.shutdown()
        except Exception as exc:  # telemetry must never fail the work it describes
            log.warning("could not flush traces to %s: %s", self.traces_url, exc)
        try:
            self._meter_provider.shutdown()
        except Exception as exc:
            log.warning("could not flush metrics to %s: %s", self.metrics_url, exc)


def _version() -> str:
    try:
        return metadata.version("semsearch")
    except metadata.PackageNotFoundError:
        return "0"
