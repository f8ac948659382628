"""``semsearch search`` with vector arithmetic and MMR, as a user runs it (the README's
king - man + woman example on examples/words.jsonl)."""

from __future__ import annotations

import json
from pathlib import Path

from semsearch.config import Settings
from tests.cli.test_cli import run

WORDS = Path(__file__).parents[2] / "examples" / "words.jsonl"


def test_the_readme_word_arithmetic_example(settings: Settings) -> None:
    assert run(settings, "index", str(WORDS), "-c", "words").returncode == 0
    out = run(settings, "search", "-c", "words", "--plus", "woman", "--plus", "king",
              "--minus", "man", "--k", "3")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0].split()[1] == "queen", out.stdout
    out = run(settings, "search", "princess", "-c", "words", "--mmr", "0.5", "--json")
    assert out.returncode == 0, out.stderr
    assert all("mmr" in h["components"] for h in json.loads(out.stdout)["hits"])


def test_bad_options_exit_with_a_message(settings: Settings) -> None:
    assert run(settings, "index", str(WORDS), "-c", "words").returncode == 0
    for args, text in [
        (["--plus", "king", "--mode", "keyword"], "dense index"),
        (["--minus", "man"], "at least one positive"),
        (["king", "--mmr", "1.5"], "1.5"),
        ([], "the query is empty"),
    ]:
        out = run(settings, "search", "-c", "words", *args)
        assert out.returncode != 0, (args, out.stdout)
        assert text in out.stderr and "Traceback" not in out.stderr, (args, out.stderr)


def test_search_rerank_from_the_command_line(settings: Settings) -> None:
    from tests.fakes.rerank_server import FakeRerankServer

    assert run(settings, "index", str(WORDS), "-c", "words").returncode == 0
    with FakeRerankServer("tei") as fake:
        out = run(settings, "search", "queen", "-c", "words", "--rerank", "4", "--json",
                  SEMSEARCH_RERANKER="http", SEMSEARCH_RERANKER_URL=fake.url)
        assert out.returncode == 0, out.stderr
        hits = json.loads(out.stdout)["hits"]
        assert all("rerank" in h["components"] for h in hits[:4])
        assert len(fake.requests) == 1
    out = run(settings, "search", "queen", "-c", "words", "--rerank", "4")
    assert out.returncode != 0 and "SEMSEARCH_RERANKER" in out.stderr
    assert "Traceback" not in out.stderr
