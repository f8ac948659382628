"""`semsearch index` loads the built model from the one per-user cache, whatever the
SEMSEARCH_HOME: a new home (every test, every container with a fresh volume) must not
rebuild the int8 graph (~2.7 s and ~60 MB each time), and must not keep a copy of its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from semsearch.adapters.embedders.onnx_local import LocalOnnxEmbedder


def _state(folder: Path) -> list[tuple[str, int, int]]:
    return sorted((p.name, p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.iterdir())


def test_two_fresh_homes_index_with_the_per_user_model(tmp_path: Path,
                                                       embedder: LocalOnnxEmbedder) -> None:
    built = embedder.model_path()  # the session's int8 build
    user = tmp_path / "user"
    cache = tmp_path / "xdg" / "semsearch" / "models"  # the default place under XDG
    cache.mkdir(parents=True)
    os.link(built, cache / built.name)  # a user whose cache already holds the model
    before = _state(cache)
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"_id": f"d{i}", "text": text}) + "\n" for i, text in
                              enumerate(["Kites fly in steady wind.", "Tea steeps in hot water.",
                                         "Rivers carry silt to the sea."])))
    env = {k: v for k, v in os.environ.items() if k != "SEMSEARCH_MODEL_CACHE_DIR"}
    env |= {"HOME": str(user), "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    for home in ("home-a", "home-b"):
        proc = subprocess.run(
            [sys.executable, "-m", "semsearch", "index", str(corpus), "-c", "docs", "--json"],
            env=env | {"SEMSEARCH_HOME": str(tmp_path / home)}, capture_output=True,
            text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        assert (report["new"], report["embedded"]) == (3, 3)
        # Loaded, not rebuilt: the same files, same inodes and mtimes, no lock or scratch.
        assert _state(cache) == before
        assert not list((tmp_path / home).rglob("*.onnx"))
    assert not user.exists() or not list(user.rglob("*.onnx"))
