"""Prometheus metrics, one registry per app so tests and workers never share state.

Histograms give P50/P95/P99 in Prometheus (histogram_quantile); stage histograms come from
the search service's own timings, so dense, keyword and fusion are measured where they run."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

if TYPE_CHECKING:
    from semsearch.api.state import AppState

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class _CollectionGauges:
    """Documents and chunks per collection, and when each collection's index and sync runs
    last succeeded, read from the store at scrape time. The sync CronJob's runs are recorded
    in the store, not in any process Prometheus scrapes, so the API exports them: an alert on
    ``time() - semsearch_last_successful_run_timestamp_seconds`` sees a sync that stopped
    succeeding."""

    def __init__(self, app_state: AppState) -> None:
        self._state = app_state

    def collect(self) -> Iterable[GaugeMetricFamily]:
        from semsearch.services.stats import last_successes

        docs = GaugeMetricFamily("semsearch_documents", "documents per collection",
                                 labels=["collection"])
        chunks = GaugeMetricFamily("semsearch_chunks", "chunks per collection",
                                   labels=["collection"])
        last = GaugeMetricFamily(
            "semsearch_last_successful_run_timestamp_seconds",
            "when the collection's last successful run of this kind (index, sync) finished, "
            "in Unix seconds; 0 when none of its recent runs succeeded",
            labels=["collection", "kind"])
        engine = self._state.engine
        if engine is not None:
            for info in engine.store.list_collections():
                docs.add_metric([info.name], info.documents)
                chunks.add_metric([info.name], info.chunks)
            for (collection, kind), seconds in sorted(last_successes(engine).items()):
                last.add_metric([collection, kind], seconds)
        yield docs
        yield chunks
        yield last


class Metrics:
    def __init__(self, app_state: AppState) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Histogram("semsearch_request_seconds", "request latency",
                                  ["route", "method", "status"], buckets=BUCKETS, registry=r)
        self.stages = Histogram("semsearch_stage_seconds", "search stage latency",
                                ["stage", "mode"], buckets=BUCKETS, registry=r)
        self.tokens = Counter("semsearch_tokens", "tokens sent to the embedding provider",
                              registry=r)
        self.cost = Counter("semsearch_cost_usd", "embedding cost in USD", registry=r)
        self.cache_hits = Counter("semsearch_cache_hits", "embedding cache hits", registry=r)
        self.cache_misses = Counter("semsearch_cache_misses", "embedding cache misses",
                                    registry=r)
        self.errors = Counter("semsearch_errors", "errors by code", ["code"], registry=r)
        self.llm_tokens = Counter("semsearch_llm_tokens", "tokens of LLM answers, by kind "
                                  "(prompt, completion)", ["kind"], registry=r)
        self.llm_cost = Counter("semsearch_llm_cost_usd", "LLM cost in USD", registry=r)
        self.answers = Counter("semsearch_answers", "answers by kind (generated, extractive, "
                               "no_sources)", ["kind"], registry=r)
        self.invalid_citations = Counter("semsearch_invalid_citations", "citations to no "
                                         "source, removed from answers", registry=r)
        self.withheld = Counter("semsearch_instructions_withheld", "recitals of the system "
                                "prompt cut out of answers", registry=r)
        self.registry.register(_CollectionGauges(app_state))
        self._state = app_state

    def observe_stages(self, timings: dict[str, float], mode: str) -> None:
        for stage, seconds in timings.items():
            self.stages.labels(stage=stage, mode=mode).observe(seconds)
        engine = self._state.engine
        if engine is not None:  # the same histograms over OTLP, when it is configured
            tel = engine.telemetry
            for stage, seconds in timings.items():
                if stage == "total":
                    tel.observe("semsearch.search.duration", seconds, {"semsearch.mode": mode},
                                description="search latency, by mode")
                else:
                    tel.observe("semsearch.search.stage.duration", seconds,
                                {"semsearch.mode": mode, "semsearch.stage": stage},
                                description="search stage latency")

    def observe_embedding(self, tokens: int, cost: float, hits: int, misses: int) -> None:
        self.tokens.inc(tokens)
        self.cost.inc(cost)
        self.cache_hits.inc(hits)
        self.cache_misses.inc(misses)
        engine = self._state.engine
        if engine is not None:  # the same counters over OTLP, when it is configured
            tel = engine.telemetry
            tel.add("semsearch.tokens", tokens, unit="{token}",
                    description="tokens sent to the embedding provider")
            tel.add("semsearch.cost", cost, unit="USD", description="embedding cost")
            tel.add("semsearch.cache.hits", hits, description="embedding cache hits")
            tel.add("semsearch.cache.misses", misses, description="embedding cache misses")

    def observe_answer(self, kind: str, timings: dict[str, float], prompt_tokens: int,
                       completion_tokens: int, cost: float, invalid: int, withheld: int) -> None:
        """An answer's stages (mode "ask"), tokens, cost and guard counts; over OTLP too."""
        self.observe_stages(timings, "ask")
        self.answers.labels(kind=kind).inc()
        if kind == "generated":
            self.llm_tokens.labels(kind="prompt").inc(prompt_tokens)
            self.llm_tokens.labels(kind="completion").inc(completion_tokens)
            self.llm_cost.inc(cost)
        self.invalid_citations.inc(invalid)
        self.withheld.inc(withheld)
        engine = self._state.engine
        if engine is not None and kind == "generated":
            tel = engine.telemetry
            tel.add("semsearch.llm.tokens", prompt_tokens, {"semsearch.kind": "prompt"},
                    unit="{token}", description="tokens of LLM answers")
            tel.add("semsearch.llm.tokens", completion_tokens, {"semsearch.kind": "completion"},
                    unit="{token}", description="tokens of LLM answers")
            tel.add("semsearch.llm.cost", cost, unit="USD", description="LLM cost")
