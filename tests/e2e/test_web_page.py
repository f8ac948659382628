"""The search page in a real headless Chromium against a real server on loopback.

Needs Debian's ``chromium`` and ``chromium-driver`` (``scripts/test.sh`` installs them) and the
``selenium`` dev extra. Selenium Manager is never consulted: the driver and browser paths
are given, so nothing is downloaded."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from semsearch.adapters.sources.files import iter_documents
from semsearch.api.auth import KeyStore
from semsearch.config import Settings
from semsearch.services.quickstart import sample_dir
from tests.api.conftest import LiveServer, make_home

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WAIT = 20
XSS_TEXT = ("Beware <script>window.__xss = 1</script> and <b>bold</b> markup when storing "
            "cabbage & kale in the cellar.")


def _start(tmp_path_factory: pytest.TempPathFactory, models_dir: Path,
           with_key: bool = False) -> tuple[LiveServer, str]:
    home = make_home(tmp_path_factory.mktemp("web"), models_dir)
    settings = Settings(home=home, embedder_threads=2)
    key = KeyStore(settings.keys_path).create("admin", {"*": "admin"}) if with_key else ""
    return LiveServer(settings).start(), key


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[LiveServer]:
    srv, _ = _start(tmp_path_factory, models_dir)
    with srv.client() as c:
        docs = [{"id": d.id, "text": d.text, "title": d.title, "metadata": dict(d.metadata)}
                for d in iter_documents(sample_dir())]
        assert c.post("/collections", json={"name": "docs"}).status_code == 201
        r = c.post("/collections/docs/documents", json={"documents": docs})
        assert r.status_code == 200 and r.json()["new"] == 12, r.text
        assert c.post("/collections", json={"name": "xss"}).status_code == 201
        evil = {"id": "evil<i>.md", "text": XSS_TEXT, "metadata": {"type": "<u>md</u>"},
                "title": 'Cabbage <img src=x onerror="window.__xss2 = 1">'}
        r = c.post("/collections/xss/documents", json={"documents": [evil]})
        assert r.status_code == 200, r.text
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found: the browser test needs Debian's chromium "
                    "and chromium-driver, which scripts/test.sh installs "
                    "(apt-get install -y chromium chromium-driver)", pytrace=False)
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("selenium is not installed: scripts/test.sh installs the dev extras "
                    "(pip install -e '.[dev]')", pytrace=False)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--window-size=1200,1000",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    drv = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    drv.set_page_load_timeout(WAIT)
    try:
        yield drv
    finally:
        drv.quit()


def _wait(drv: Any, condition: Any, message: str) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(drv, WAIT, poll_frequency=0.05).until(condition, message)


def _css(drv: Any, selector: str) -> Any:
    return drv.find_element("css selector", selector)


def _all(drv: Any, selector: str) -> list[Any]:
    return list(drv.find_elements("css selector", selector))


def _seq(drv: Any) -> int:
    return int(_css(drv, "#results").get_attribute("data-seq"))


def _searched(drv: Any, action: Any) -> str:
    """Run ``action`` (which starts a search) and wait for that search to finish."""
    before = _seq(drv)
    action()

    def done(d: Any) -> str | bool:
        r = _css(d, "#results")
        return int(r.get_attribute("data-seq")) > before and r.get_attribute("data-state")

    state: str = _wait(drv, done, "the search did not finish")
    return state


def _open(drv: Any, url: str, options: int) -> None:
    drv.get(url + "/")
    _wait(drv, lambda d: len(_all(d, "#collection option")) >= options,
          f"the collection picker never listed {options} collection(s)")


def _set(drv: Any, selector: str, text: str) -> None:
    field = _css(drv, selector)
    field.clear()
    if text:
        field.send_keys(text)


def _select(drv: Any, selector: str, value: str) -> None:
    from selenium.webdriver.support.ui import Select

    Select(_css(drv, selector)).select_by_value(value)


def _hits(drv: Any) -> list[dict[str, Any]]:
    rows = []
    for h in _all(drv, "#results .hit"):
        rows.append({
            "doc_id": h.get_attribute("data-doc-id"),
            "title": h.find_element("css selector", ".hit-title").text,
            "score": h.find_element("css selector", ".hit-score").text,
            "components": [b.get_attribute("data-component") for b in
                           h.find_elements("css selector", ".hit-components .badge")],
            "marks": [m.text.lower() for m in h.find_elements("css selector", "mark")],
            "meta": " ".join(m.text for m in h.find_elements("css selector", ".hit-meta")),
        })
    return rows


def test_search_page_end_to_end(server: LiveServer, driver: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.keys import Keys

    drv = driver
    _open(drv, server.url, 2)
    assert drv.title == "semsearch"
    names = [o.get_attribute("value") for o in _all(drv, "#collection option")]
    assert names == ["docs", "xss"]
    assert "12 docs" in _all(drv, "#collection option")[0].text
    assert _css(drv, "input[name=mode][value=hybrid]").is_selected()

    # Hybrid: Enter in the search box searches; the best hit is highlighted with both badges.
    _select(drv, "#collection", "docs")
    _set(drv, "#q", "how do I keep vegetables fresh")
    assert _searched(drv, lambda: _css(drv, "#q").send_keys(Keys.ENTER)) == "done"
    hits = _hits(drv)
    assert hits[0]["doc_id"] == "storing-vegetables.md"
    assert hits[0]["title"] == "Storing vegetables so they last"
    assert "vegetables" in hits[0]["marks"]
    assert sorted(hits[0]["components"]) == ["dense", "keyword"]
    assert float(hits[0]["score"]) > 0 and "type=md" in hits[0]["meta"]
    status = _css(drv, "#status")
    assert "error" not in status.get_attribute("class")
    assert f"{len(hits)} hits" in status.text and "ms" in status.text
    shot = tmp_path / "search-page.png"
    drv.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")

    # Keyword mode (switching re-runs the search): keyword components only.
    assert _searched(drv, lambda: _css(drv, "input[name=mode][value=keyword]").click()) == "done"
    hits = _hits(drv)
    assert hits and all(h["components"] == ["keyword"] for h in hits)
    assert hits[0]["doc_id"] == "storing-vegetables.md"

    # A metadata filter is sent; one matching nothing gives the empty state.
    _set(drv, "#filter", '{"type": "md"}')
    assert _searched(drv, lambda: _css(drv, "#search").click()) == "done"
    assert all("type=md" in h["meta"] for h in _hits(drv))
    _set(drv, "#filter", '{"type": {"in": ["pdf"]}}')
    assert _searched(drv, lambda: _css(drv, "#search").click()) == "empty"
    assert _hits(drv) == [] and "No results" in _css(drv, "#results").text
    assert _css(drv, "#status").text.startswith("0 hits")

    # A malformed filter: a clear message and no request at all.
    drv.execute_script("window.__requests = 0; const f = window.fetch;"
                       "window.fetch = (...a) => { window.__requests++; return f(...a); };")
    before = _seq(drv)
    for bad, says in (('{"type": "md"', "not valid JSON"), ('["md"]', "must be a JSON object")):
        _set(drv, "#filter", bad)
        _css(drv, "#search").click()
        _wait(drv, lambda d, says=says: says in _css(d, "#status").text,
              f"no message for the malformed filter {bad}")
        assert "error" in _css(drv, "#status").get_attribute("class")
        assert _css(drv, "#filter").get_attribute("aria-invalid") == "true"
    assert drv.execute_script("return window.__requests") == 0 and _seq(drv) == before

    # A server error shows error.message (k above the API's limit is refused with 422).
    _set(drv, "#filter", "")
    drv.execute_script("const o = document.createElement('option'); o.value = o.text = '5000';"
                       "document.querySelector('#k').append(o);")
    _select(drv, "#k", "5000")
    assert _searched(drv, lambda: _css(drv, "#search").click()) == "error"
    assert "error" in _css(drv, "#status").get_attribute("class") and _hits(drv) == []
    _select(drv, "#k", "10")

    # Hit text, titles, ids and metadata are shown as text, never run as HTML.
    _select(drv, "#collection", "xss")
    _set(drv, "#q", "cabbage")
    assert _searched(drv, lambda: _css(drv, "#search").click()) == "done"
    hit = _all(drv, "#results .hit")[0]
    snippet = hit.find_element("css selector", ".hit-snippet")
    assert "<script>window.__xss = 1</script>" in snippet.text and "<b>bold</b>" in snippet.text
    assert "&lt;script&gt;" in snippet.get_attribute("innerHTML")
    assert [m.text for m in snippet.find_elements("css selector", "mark")] == ["cabbage"]
    assert hit.find_element("css selector", ".hit-title").text.startswith("Cabbage <img src=x")
    assert "evil<i>.md" in hit.text and "type=<u>md</u>" in hit.text
    assert not _all(drv, "#results script, #results img, #results b, #results i, #results u")
    assert drv.execute_script("return [window.__xss, window.__xss2]") == [None, None]


def test_api_key_field_and_auth_errors(tmp_path_factory: pytest.TempPathFactory,
                                       models_dir: Path, driver: Any) -> None:
    srv, key = _start(tmp_path_factory, models_dir, with_key=True)
    try:
        with srv.client(headers={"Authorization": f"Bearer {key}"}) as c:
            assert c.post("/collections", json={"name": "secured"}).status_code == 201
        drv = driver
        drv.get(srv.url + "/")
        drv.execute_script("sessionStorage.clear()")
        drv.get(srv.url + "/")
        _wait(drv, lambda d: "401" in _css(d, "#status").text, "no 401 message without a key")
        status = _css(drv, "#status")
        assert "error" in status.get_attribute("class") and "API key" in status.text
        _set(drv, "#apikey", "wrong-key")
        _css(drv, "#q").click()  # leaving the field commits it
        _wait(drv, lambda d: "unknown API key" in _css(d, "#status").text,
              "no message for a wrong key")
        _set(drv, "#apikey", key)
        _css(drv, "#q").click()
        _wait(drv, lambda d: [o.get_attribute("value") for o in _all(d, "#collection option")]
              == ["secured"], "the collections did not load with the right key")
        assert _css(drv, "#status").text == ""
        assert drv.execute_script("return sessionStorage.getItem('semsearch.apikey')") == key
        drv.refresh()  # the key survives a reload within the session
        _wait(drv, lambda d: len(_all(d, "#collection option")) == 1 and
              _css(d, "#collection").get_attribute("disabled") is None, "key was not kept")
        assert _css(drv, "#apikey").get_attribute("value") == key
    finally:
        srv.stop()

