"""The consume service in process, where a test can put a provider in the loop: a text the
embedding API refuses is dead-lettered with the provider's reason and its neighbours in the
batch are applied (on Redis Streams; the broker does not matter for this path, the e2e tests
run every broker)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from semsearch.adapters.embedders.onnx_local import LocalOnnxEmbedder
from semsearch.config import Settings
from semsearch.services.consume import ConsumeOptions, consume
from semsearch.wiring import open_engine, open_event_source
from tests.brokers import harness, require
from tests.fakes.openai_server import FakeOpenAIServer

pytestmark = pytest.mark.brokers


def test_a_text_the_provider_refuses_is_dead_lettered_and_the_rest_applied(
        settings: Settings, models_dir: Path) -> None:
    broker = require(harness("redis"))
    sub = broker.fresh()
    events = [{"op": "upsert", "id": f"n-{i}", "version": 1,
               "text": f"Short note number {i} about tea."} for i in range(5)]
    events.append({"op": "upsert", "id": "long", "version": 1, "text": " ".join(["word"] * 120)})
    broker.publish(sub, [json.dumps(e).encode() for e in events])
    local = LocalOnnxEmbedder(models_dir, threads=2, batch_size=1)
    try:
        with FakeOpenAIServer(local, models=("fake-minilm",), api_key="sk-test",
                              max_input_tokens=64) as strict:
            engine = open_engine(Settings(
                home=settings.home, embedder="openai-compatible", embedder_model="fake-minilm",
                embedder_base_url=strict.url, embedder_api_key="sk-test",
                embedder_dimensions=384))
            source = open_event_source(sub)
            try:
                report = consume(engine, source, "notes", ConsumeOptions(idle_exit=1.0),
                                 threading.Event())
                ids = engine.store.all_doc_ids(engine.resolve("notes"))
                runs = engine.store.list_runs("notes")
            finally:
                source.close()
                engine.close()
        assert (report.upserted, report.dead_lettered, report.status) == (5, 1, "ok")
        assert ids == [f"n-{i}" for i in range(5)]
        ((body, reason),) = broker.dead_letters(sub)
        assert json.loads(body)["id"] == "long"
        assert reason.startswith("the embedder refused it:") and "64" in reason
        assert broker.unsettled(sub) == 0
        assert runs[0]["kind"] == "consume" and runs[0]["status"] == "ok"
    finally:
        broker.cleanup(sub)
