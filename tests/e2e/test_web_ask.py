"""The page's Ask view in a real headless Chromium against real servers on loopback.

An extractive answer offline; a generated one streamed from the scripted chat server (the
text grows before the answer is done); [n] markers that link to their numbered sources; a
model's forged citations never shown as markers; a cut stream and an HTTP error in the status
line; document text (HTML in it) shown as text, never run. Uses the browser and helpers of
test_web_page.py (Debian's chromium and chromium-driver, nothing downloaded)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from semsearch.adapters.sources.files import iter_documents
from semsearch.config import Settings
from semsearch.core.prompt import SYSTEM_PROMPT
from semsearch.services.quickstart import sample_dir
from tests.api.conftest import LiveServer, make_home
from tests.e2e import test_web_page as page
from tests.e2e.test_web_page import _all, _css, _open, _select, _set, _wait
from tests.fakes.chat_server import FakeChatServer, cite_first_sentences, obedient

pytestmark = pytest.mark.browser
driver = page.driver  # the same one-browser-per-module fixture as the search page's test

VEG = "how should I keep vegetables fresh"
CABBAGE = "how do I keep cabbage and kale in the cellar"
EVIL_TEXT = ('Cabbage and kale keep for months in a cool cellar <img src=x '
             'onerror="window.__xss = 1"> wrapped in newspaper. Look at them '
             '<script>window.__xss2 = 1</script> every <b>week</b> and remove bad leaves.')
EVIL = {"id": "evil<i>.md", "title": 'Cellar <img src=x onerror="window.__xss3 = 1">'}
# The scripted chat server reads the prompt's <source ...> tags with a pattern that a ">" in
# an attribute ends early: the generated answer's document has a plain id and title.
PLAIN = {"id": "evil.md", "title": "Cellar notes"}

# One read of the Ask view's state, through the DOM the page built.
READ = """
const a = document.querySelector('#answer');
const st = document.querySelector('#status');
return {
  state: a.dataset.state, tokens: Number(a.dataset.tokens),
  kind: document.querySelector('#answer-kind').dataset.kind,
  text: document.querySelector('#answer-text').textContent,
  markers: [...document.querySelectorAll('#answer-text a.cite')].map((c) => ({
    n: Number(c.dataset.n), href: c.getAttribute('href'), text: c.textContent})),
  sources: [...document.querySelectorAll('#sources .source')].map((s) => ({
    n: Number(s.dataset.n), id: s.id, doc_id: s.dataset.docId,
    cited: s.dataset.cited === 'true', number: s.querySelector('.source-n').textContent,
    title: s.querySelector('.hit-title').textContent,
    flag: s.querySelector('.source-flag').textContent,
    text: s.querySelector('.source-text').textContent})),
  meta: document.querySelector('#answer-meta').textContent,
  status: st.textContent, error: st.classList.contains('error')};
"""


def _docs() -> list[dict[str, Any]]:
    return [{"id": d.id, "text": d.text, "title": d.title, "metadata": dict(d.metadata)}
            for d in iter_documents(sample_dir())]


def _start(tmp_path_factory: pytest.TempPathFactory, models_dir: Path, names: dict[str, str],
           **settings: Any) -> LiveServer:
    """A server with the sample documents in "docs" and one document of HTML in "xss"."""
    home = make_home(tmp_path_factory.mktemp("web-ask"), models_dir)
    srv = LiveServer(Settings(home=home, embedder_threads=2, **settings)).start()
    with srv.client() as c:
        assert c.post("/collections", json={"name": "docs"}).status_code == 201
        r = c.post("/collections/docs/documents", json={"documents": _docs()})
        assert r.status_code == 200 and r.json()["new"] == 12, r.text
        assert c.post("/collections", json={"name": "xss"}).status_code == 201
        evil = {**names, "text": EVIL_TEXT, "metadata": {"type": "<u>md</u>"}}
        r = c.post("/collections/xss/documents", json={"documents": [evil]})
        assert r.status_code == 200, r.text
    return srv


@pytest.fixture(scope="module")
def offline(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[LiveServer]:
    srv = _start(tmp_path_factory, models_dir, EVIL)  # no LLM configured: extractive answers
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def llm() -> Iterator[FakeChatServer]:
    with FakeChatServer(piece_delay=0.02) as srv:
        yield srv


@pytest.fixture(scope="module")
def online(tmp_path_factory: pytest.TempPathFactory, models_dir: Path,
           llm: FakeChatServer) -> Iterator[LiveServer]:
    srv = _start(tmp_path_factory, models_dir, PLAIN, llm="openai-compatible",
                 llm_base_url=llm.url, llm_model="fake-chat", llm_price_per_mtok_input=1.0,
                 llm_price_per_mtok_output=4.0)
    yield srv
    srv.stop()


def _seq(drv: Any) -> int:
    return int(_css(drv, "#answer").get_attribute("data-seq"))


def _asked(drv: Any, action: Any) -> str:
    """Run ``action`` (which asks) and wait for that answer to finish; its final state."""
    before = _seq(drv)
    action()

    def done(d: Any) -> str | bool:
        a = _css(d, "#answer")
        return int(a.get_attribute("data-seq")) > before and a.get_attribute("data-state")

    state: str = _wait(drv, done, "the answer did not finish")
    return state


def _ask(drv: Any, question: str) -> str:
    _set(drv, "#question", question)
    return _asked(drv, lambda: _css(drv, "#ask").click())


def _read(drv: Any) -> dict[str, Any]:
    got: dict[str, Any] = drv.execute_script(READ)
    return got


def _open_ask(drv: Any, url: str, collection: str) -> None:
    _open(drv, url, 2)
    _css(drv, "#view-ask").click()
    _wait(drv, lambda d: _css(d, "#question").is_displayed(), "the Ask view did not open")
    _select(drv, "#collection", collection)


def _check_markers(ans: dict[str, Any]) -> None:
    """Every [n] shown is a link to listed source n, and the cited sources are the linked."""
    numbers = {s["n"] for s in ans["sources"]}
    assert ans["markers"], ans["text"]
    for m in ans["markers"]:
        assert m["n"] in numbers and m["href"] == f"#source-{m['n']}" and \
            m["text"] == f"[{m['n']}]", (m, numbers)
    # no bracketed number in the answer that is not one of those links
    assert re.findall(r"\[(\d+)\]", ans["text"]) == [str(m["n"]) for m in ans["markers"]]
    assert {m["n"] for m in ans["markers"]} == {s["n"] for s in ans["sources"] if s["cited"]}
    for s in ans["sources"]:
        assert s["id"] == f"source-{s['n']}" and s["number"] == f"[{s['n']}]"
        assert s["flag"] == ("cited" if s["cited"] else "not cited")


def _follow(drv: Any, n: int) -> None:
    """Click the first [n] marker: source n alone is highlighted, focused and scrolled to."""
    drv.execute_script("window.scrollTo(0, 0)")
    marker = next(m for m in _all(drv, "#answer-text a.cite") if m.get_attribute("data-n")
                  == str(n))
    marker.click()
    target = _css(drv, f"#source-{n}")
    _wait(drv, lambda d: "highlight" in target.get_attribute("class"),
          f"source {n} was not highlighted")
    assert [s.get_attribute("data-n") for s in _all(drv, "#sources .source.highlight")] \
        == [str(n)]
    assert target.get_attribute("aria-current") == "true"
    assert drv.execute_script("return document.activeElement.id") == f"source-{n}"
    _wait(drv, lambda d: d.execute_script(
        "const r = arguments[0].getBoundingClientRect();"
        "return r.top >= 0 && r.top < window.innerHeight;", target),
        f"source {n} was not scrolled into view")


def _no_markup_ran(drv: Any) -> None:
    assert not _all(drv, "#answer script, #answer img, #answer b, #answer i, #answer u")
    assert drv.execute_script("return [window.__xss, window.__xss2, window.__xss3]") == \
        [None, None, None]


def test_extractive_answer_offline(offline: LiveServer, driver: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.keys import Keys

    drv = driver
    _open_ask(drv, offline.url, "docs")
    assert not _css(drv, "#results").is_displayed() and not _css(drv, "#q").is_displayed()

    # An empty question is not sent.
    assert _seq(drv) == 0
    _css(drv, "#ask").click()
    _wait(drv, lambda d: "Type a question" in _css(d, "#status").text, "no empty-question note")
    assert _seq(drv) == 0

    # Enter in the question box asks.
    _set(drv, "#question", VEG)
    assert _asked(drv, lambda: _css(drv, "#question").send_keys(Keys.ENTER)) == "done"
    ans = _read(drv)
    assert ans["kind"] == "extractive" and ans["tokens"] == 1
    label = _css(drv, "#answer-kind")
    assert label.is_displayed() and label.text.startswith("Extractive")
    assert "Extractive answer from" in ans["status"] and " ms" in ans["status"]
    assert not ans["error"] and "removed" not in ans["status"]
    assert "model=extractive" in ans["meta"] and re.search(r"tokens=\d+ embedded", ans["meta"])
    assert "retrieve" in ans["meta"] and "generate" in ans["meta"]
    assert "cost=" not in ans["meta"]  # quoting the sources costs nothing
    assert ans["sources"][0]["doc_id"] == "storing-vegetables.md"
    assert ans["sources"][0]["title"] == "Storing vegetables so they last"
    assert ans["sources"][0]["cited"] and "leafy greens" in ans["sources"][0]["text"]
    assert any(not s["cited"] for s in ans["sources"])  # the uncited are listed and marked
    _check_markers(ans)
    # the quoted sentences are marked in their source
    marks = [m.text for m in _all(drv, "#source-1 .source-text mark")]
    assert marks and all(m in ans["text"] for m in marks)

    # Each marker leads to its source; the highlight moves with the next click.
    cited = sorted({m["n"] for m in ans["markers"]})
    _follow(drv, cited[-1])
    _follow(drv, cited[0])
    shot = tmp_path / "ask-extractive.png"
    drv.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")

    # The Search view keeps its own results and status; the answer waits in the Ask view.
    _css(drv, "#view-search").click()
    _wait(drv, lambda d: _css(d, "#q").is_displayed(), "the Search view did not open")
    assert not _css(drv, "#answer").is_displayed() and _css(drv, "#status").text == ""
    _css(drv, "#view-ask").click()
    _wait(drv, lambda d: _css(d, "#answer").is_displayed(), "the answer was not kept")
    assert "Extractive answer from" in _css(drv, "#status").text

    # A filter that matches nothing: the no-sources answer, no sources listed.
    _set(drv, "#filter", '{"type": {"in": ["pdf"]}}')
    assert _ask(drv, VEG) == "empty"
    ans = _read(drv)
    assert ans["kind"] == "no_sources" and ans["sources"] == [] and ans["markers"] == []
    assert "No document" in ans["status"] and not ans["error"]
    _set(drv, "#filter", "")


def test_html_in_documents_is_shown_as_text(offline: LiveServer, online: LiveServer,
                                            driver: Any) -> None:
    drv = driver
    for srv, kind, names in ((offline, "extractive", EVIL), (online, "generated", PLAIN)):
        _open_ask(drv, srv.url, "xss")
        assert _ask(drv, CABBAGE) == "done"
        ans = _read(drv)
        source = ans["sources"][0]
        assert ans["kind"] == kind and source["doc_id"] == names["id"]
        assert source["title"] == names["title"] and source["text"] == EVIL_TEXT
        assert '<img src=x onerror="window.__xss = 1">' in ans["text"], ans["text"]
        assert "type=<u>md</u>" in _css(drv, "#source-1").text
        _check_markers(ans)
        _no_markup_ran(drv)
        html = drv.execute_script("return document.querySelector('#answer').innerHTML")
        assert "&lt;img src=x" in html and "&lt;script&gt;" in html


def test_generated_answer_streams_then_links_its_sources(online: LiveServer, driver: Any,
                                                         llm: FakeChatServer) -> None:
    drv = driver
    _open_ask(drv, online.url, "docs")
    # What the answer's text was each time the page changed it, and in which state.
    drv.execute_script("""
        window.__seen = [];
        const a = document.querySelector('#answer');
        window.__watch = new MutationObserver(() => window.__seen.push(
            [a.dataset.state, document.querySelector('#answer-text').textContent.length]));
        window.__watch.observe(a, {subtree: true, childList: true, characterData: true,
                                   attributes: true, attributeFilter: ['data-state']});""")
    served = len(llm.requests)
    assert _ask(drv, VEG) == "done"
    seen = drv.execute_script("window.__watch.disconnect(); return window.__seen")
    ans = _read(drv)
    assert len(llm.requests) == served + 1 and llm.requests[-1].body["stream"] is True
    assert ans["kind"] == "generated" and _css(drv, "#answer-kind").text == "Generated"
    assert ans["tokens"] > 1
    streaming = [n for state, n in seen if state == "streaming"]
    assert any(0 < n < len(ans["text"]) for n in streaming), seen  # partial text was shown
    assert len(set(streaming)) > 2, seen
    assert ans["text"].strip() == cite_first_sentences(llm.requests[-1].messages)
    _check_markers(ans)
    assert len(ans["markers"]) >= 2
    assert "model=openai-compatible · fake-chat" in ans["meta"], ans["meta"]
    assert re.search(r"tokens=\d+ in · \d+ out · \d+ total", ans["meta"]), ans["meta"]
    assert "cost=$" in ans["meta"]
    assert "Generated answer from" in ans["status"] and not ans["error"]
    for n in sorted({m["n"] for m in ans["markers"]}, reverse=True):
        _follow(drv, n)


def test_forged_citations_are_never_markers(online: LiveServer, driver: Any,
                                            llm: FakeChatServer) -> None:
    drv = driver
    _open_ask(drv, online.url, "docs")
    _select(drv, "#ask-k", "5")  # at most 5 sources: the model's [7] and [42] name none
    llm.reply = obedient
    try:
        assert _ask(drv, VEG) == "done"
    finally:
        llm.reply = cite_first_sentences
        _select(drv, "#ask-k", "")
    ans = _read(drv)
    assert ans["kind"] == "generated" and 1 <= len(ans["sources"]) <= 5
    _check_markers(ans)
    assert "[42]" not in ans["text"] and "[7]" not in ans["text"]
    assert "2 citations to missing sources removed" in ans["status"], ans["status"]
    assert "1 recital of the instructions withheld" in ans["status"]
    assert not ans["error"]
    assert [w.text for w in _all(drv, "#answer-text .withheld")] == ["[instructions withheld]"]
    assert SYSTEM_PROMPT[:60] not in _css(drv, "body").text


def test_errors_show_in_the_status_line(online: LiveServer, driver: Any,
                                        llm: FakeChatServer) -> None:
    drv = driver
    _open_ask(drv, online.url, "docs")

    # The LLM's stream is cut after two pieces: the stream's error event.
    llm.script("cut")
    assert _ask(drv, VEG) == "error"
    status = _css(drv, "#status")
    assert "error" in status.get_attribute("class")
    assert status.text.startswith("Error 502: ") and "cut after" in status.text, status.text
    assert "Traceback" not in status.text and "File \"" not in status.text
    assert _read(drv)["kind"] == "incomplete" and not _all(drv, "#sources .source")
    assert not _css(drv, "#ask").get_attribute("disabled")

    # Refused before any stream (an unknown collection): the JSON error's message.
    drv.execute_script("const o = document.createElement('option'); o.value = o.text = 'gone';"
                       "document.querySelector('#collection').append(o);")
    _select(drv, "#collection", "gone")
    assert _ask(drv, VEG) == "error"
    status = _css(drv, "#status")
    assert "error" in status.get_attribute("class")
    assert status.text.startswith("Error 404: ") and "gone" in status.text, status.text

    # The next good answer clears the error.
    _select(drv, "#collection", "docs")
    assert _ask(drv, VEG) == "done"
    assert "error" not in _css(drv, "#status").get_attribute("class")
