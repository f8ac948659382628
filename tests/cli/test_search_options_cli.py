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
