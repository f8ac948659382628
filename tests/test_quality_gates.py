"""ruff and mypy are part of the test command, so CI and every developer run the same gates."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import semsearch

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("cmd", [
    ["ruff", "check", "src", "tests", "bench"],
    ["mypy", "src"],
])
def test_static_checks_pass(cmd: list[str]) -> None:
    if shutil.which(cmd[0]) is None:
        pytest.fail(f"{cmd[0]} is not installed; run: pip install -e '.[dev]'")
    out = subprocess.run([sys.executable, "-m", *cmd], cwd=REPO, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]


def test_layers_hold() -> None:
    """The import-linter contracts in pyproject.toml: ARCHITECTURE.md's layers, by test."""
    exe = shutil.which("lint-imports")
    if exe is None:
        pytest.fail("lint-imports is not installed; run: pip install -e '.[dev]'")
    out = subprocess.run([exe, "--no-cache"], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, "import contracts broken:\n" + out.stdout[-6000:]
    assert "0 broken" in out.stdout


def test_public_api_does_not_drift() -> None:
    assert semsearch.__all__ == [
        "BackendError", "Chunk", "Document", "EmbedderIdentity", "Engine", "Filter", "Hit",
        "IdentityMismatchError", "IndexReport", "InputError", "InputType", "Mode",
        "NotFoundError", "Rated", "RecommendRequest", "SearchRequest", "SearchResult",
        "SemsearchError", "Settings", "SourceError", "adapt", "delete_documents",
        "evaluate_collection", "evaluate_collections", "find_duplicates", "index_documents",
        "open_engine", "parse_filter", "recommend", "search", "search_defaults", "similar",
        "tune",
    ]
    for name in semsearch.__all__:
        assert getattr(semsearch, name) is not None


def test_import_is_cheap() -> None:
    code = ("import sys, semsearch; heavy = {'onnxruntime', 'numpy', 'tokenizers', 'hnswlib'}"
            " & set(sys.modules); print(sorted(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
