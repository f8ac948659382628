"""The evaluation report in a real headless Chromium that can reach nothing: opened from a
file, its charts draw bars of real size, its tables show, the console stays clean and no
request leaves the page, alone and with ``--compare``'s before/after.

Needs Debian's ``chromium`` and ``chromium-driver`` (scripts/test.sh installs them) and the
``selenium`` dev extra; the browser is the one tests/api/test_docs_browser.py starts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from semsearch.adapters.sources.files import iter_documents
from semsearch.config import Settings
from semsearch.core.report import render_report
from semsearch.core.types import Mode
from semsearch.services.evaluate import Evaluation, evaluate_collections
from semsearch.services.ingest import delete_documents, index_documents
from semsearch.services.versions import reindex
from semsearch.wiring import open_engine

# The offline Chromium of the /docs test, as a fixture of this module (hence the F811s).
from tests.api.test_docs_browser import browser  # noqa: F401
from tests.conftest import shared_embedding_cache
from tests.services.test_eval_report import scifact_slice

pytestmark = pytest.mark.browser

MODES = [Mode.KEYWORD, Mode.DENSE, Mode.HYBRID]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory,
         models_dir: Path) -> Iterator[tuple[Evaluation, Evaluation]]:
    """A real slice of SciFact indexed, a second version with a few judged documents
    deleted, both evaluated: (after, before)."""
    dataset = scifact_slice(tmp_path_factory.mktemp("data"), queries=16, distractors=6)
    engine = open_engine(Settings(home=tmp_path_factory.mktemp("home"), embedder_threads=2,
                                  cache_url=shared_embedding_cache()))
    try:
        index_documents(engine, "sf", iter_documents(dataset))
        reindex(engine, "sf")
        qrels = engine.corpora.qrels(dataset, "test")
        delete_documents(engine, "sf", sorted({d for q in list(qrels)[:4] for d in qrels[q]}))
        after, before = evaluate_collections(engine, ["sf", "sf@v1"], dataset, MODES)
        yield after, before
    finally:
        engine.close()


def _open(drv: Any, page: Path) -> None:
    drv.get_log("browser")  # start each page with an empty console
    drv.get_log("performance")
    drv.get(page.as_uri())


def _requests(drv: Any) -> set[str]:
    urls = set()
    for entry in drv.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.add(message["params"]["request"]["url"])
    return urls


def _check_page(drv: Any, page: Path) -> dict[str, Any]:
    from selenium.webdriver.common.by import By

    _open(drv, page)
    chart = drv.find_element(By.CSS_SELECTOR, "svg.chart.metrics")
    assert chart.is_displayed() and chart.size["width"] > 200 and chart.size["height"] > 100
    bars = drv.find_elements(By.CSS_SELECTOR, "svg.chart.metrics rect.bar")
    assert bars
    for bar in bars:  # every mean here is above zero, so every bar has an area on screen
        assert bar.is_displayed()
        assert bar.size["width"] > 0 and bar.size["height"] > 0, bar.get_attribute("outerHTML")
    # Bar heights follow the values: the tallest bar is the largest mean.
    heights = {(b.get_attribute("data-mode"), b.get_attribute("data-measure"),
                b.get_attribute("data-series")): b.size["height"] for b in bars}
    table = drv.find_element(By.CSS_SELECTOR, "table.metrics")
    assert table.is_displayed() and table.size["height"] > 0
    for t in drv.find_elements(By.CSS_SELECTOR, "details[open] table.queries"):
        assert t.is_displayed()
    assert drv.find_element(By.CSS_SELECTOR, "svg.chart.deltas").is_displayed()
    problems = [e["message"] for e in drv.get_log("browser")
                if e["level"] in ("SEVERE", "WARNING")]
    assert not problems, problems
    assert _requests(drv) <= {page.as_uri()}, _requests(drv)
    return {"heights": heights, "bars": len(bars)}


def test_the_report_renders_offline(browser: Any,  # noqa: F811
                                    runs: tuple[Evaluation, Evaluation],
                                    tmp_path: Path) -> None:
    after, _ = runs
    page = tmp_path / "report.html"
    page.write_text(render_report(after), encoding="utf-8")
    seen = _check_page(browser, page)
    assert seen["bars"] == 9  # three measures by three modes
    by_value = sorted((r.metrics[m], (r.mode, m, "after")) for r in after.modes
                       for m in ("ndcg@10", "mrr@10", "recall@100"))
    assert max(seen["heights"], key=seen["heights"].get) in {
        k for v, k in by_value if v == by_value[-1][0]}


def test_the_comparison_renders_offline(browser: Any,  # noqa: F811
                                        runs: tuple[Evaluation, Evaluation],
                                        tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    after, before = runs
    page = tmp_path / "compare.html"
    page.write_text(render_report(after, before), encoding="utf-8")
    seen = _check_page(browser, page)
    assert seen["bars"] == 18  # before and after of each
    summary = browser.find_element(By.CSS_SELECTOR, "table.summary")
    assert summary.is_displayed()
    assert browser.find_element(By.CSS_SELECTOR, "table.metrics.compare").is_displayed()
    lost = browser.find_elements(
        By.CSS_SELECTOR, "#before-after details[open].losses table.queries tr[data-qid]")
    assert lost and all(row.is_displayed() for row in lost)  # hybrid lost the deleted ones
