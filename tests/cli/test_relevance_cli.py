"""``semsearch similar``, ``dedupe`` and ``recommend`` as a user runs them, on the real
model and a real index (a subprocess each); bad input exits non-zero with a message and
no traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from semsearch.cli.main import main
from semsearch.config import Settings
from tests.cli.test_cli import run
from tests.services.relevance_corpus import CLUSTERS, DOCS


@pytest.fixture
def indexed(settings: Settings, tmp_path: Path) -> Settings:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": d.id, "text": d.text, **d.metadata}) + "\n"
                              for d in DOCS))
    out = run(settings, "index", str(corpus), "-c", "rel")
    assert out.returncode == 0, out.stderr
    return settings


def _ok(settings: Settings, *args: str) -> str:
    out = run(settings, *args)
    assert out.returncode == 0, (args, out.stderr)
    assert "Traceback" not in out.stderr
    return out.stdout


def test_similar_dedupe_and_recommend(indexed: Settings) -> None:
    text = _ok(indexed, "similar", "starter", "-c", "rel", "--k", "2")
    assert {line.split()[1] for line in text.splitlines() if line[:3].strip().rstrip(".")
            .isdigit()} == {"starter-copy", "starter-each"}
    got = json.loads(_ok(indexed, "similar", "starter", "-c", "rel", "--k", "5",
                         "--filter", "topic=cars", "--json"))
    assert {h["doc_id"] for h in got["hits"]} == {"engine", "tyres", "brakes"}

    for method in ("exact", "ann"):
        report = json.loads(_ok(indexed, "dedupe", "-c", "rel", "--threshold", "0.95",
                                "--method", method, "--json"))
        assert report["method"] == method
        assert sorted(({m["id"] for m in c["members"]} for c in report["clusters"]),
                      key=sorted) == CLUSTERS
    # A size threshold of 0 sends auto down the ANN path.
    forced = json.loads(_ok(indexed, "dedupe", "-c", "rel", "--exact-limit", "0", "--json"))
    assert forced["method"] == "ann" and forced["clusters_total"] == 3
    text = _ok(indexed, "dedupe", "-c", "rel", "--limit", "1")
    assert text.startswith("3 clusters") and "(keep)" in text and "and 2 more" in text

    rec = json.loads(_ok(indexed, "recommend", "-c", "rel", "--like", "engine:2",
                         "--like", "gone", "--seen", "tyres", "--k", "1", "--json"))
    assert rec["strategy"] == "history" and rec["unknown"] == ["gone"]
    assert [h["doc_id"] for h in rec["items"]] == ["brakes"]
    rec = json.loads(_ok(indexed, "recommend", "-c", "rel", "--profile",
                         "car maintenance and repairs", "--k", "3", "--json"))
    assert rec["strategy"] == "profile"
    assert {h["doc_id"] for h in rec["items"]} == {"engine", "tyres", "brakes"}
    out = run(indexed, "recommend", "-c", "rel", "--dislike", "news", "--k", "2")
    assert out.returncode == 0 and out.stdout.startswith("strategy: central"), out.stderr


BAD = [
    (["similar", "missing", "-c", "rel"], "no document 'missing'"),
    (["similar", "starter", "-c", "nope"], "nope"),
    (["similar", "starter", "-c", "rel", "--k", "0"], "k must be"),
    (["similar", "starter", "-c", "rel", "--filter", "{bad"], "--filter"),
    (["dedupe", "-c", "rel", "--threshold", "1.5"], "threshold"),
    (["dedupe", "-c", "rel", "--threshold", "nan"], "threshold"),
    (["dedupe", "-c", "rel", "--neighbours", "0"], "neighbours"),
    (["dedupe", "-c", "rel", "--method", "fast"], "fast"),
    (["recommend", "-c", "rel", "--like", "engine:-1"], "weight"),
    (["recommend", "-c", "rel", "--dislike", "engine:nan"], "weight"),
    (["recommend", "-c", "rel", "--k", "0"], "k must be"),
    (["recommend", "-c", "nope"], "nope"),
]


def test_bad_input_exits_with_a_message(indexed: Settings,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    # In process (the same main() the console script runs), to keep the test short; the
    # subprocess runs above show the commands as installed.
    for args, needle in BAD:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exited:
            main(args)
        err = capsys.readouterr().err
        assert exited.value.code not in (0, None), (args, err)
        assert needle in err and "Traceback" not in err, (args, err)
