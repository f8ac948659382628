"""A real full disk for tests: a small tmpfs mounted in a private mount namespace
(``unshare -m``, needs root or user namespaces), seen by nothing outside it.

The namespace lives as long as one process, so a whole scenario runs in one driver process
(this file run as a script): it mounts the tmpfs, then runs the steps it is given in order
and prints one JSON result per step. Steps: ``{"cli": [...]}`` runs ``semsearch`` as a user
would; ``{"fill": true}`` writes zeros until the disk refuses (ENOSPC); ``{"free": true}``
deletes them; ``{"py": code}`` runs Python in the driver, with ``fill``, ``free`` and
``mnt`` (the mount point) defined, and returns the ``result`` dict the code fills in. ``env``
applies to every step."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()


def unavailable(tmp: Path) -> str | None:
    """Why a private tmpfs cannot be mounted here, or None when it can."""
    if not sys.platform.startswith("linux") or shutil.which("unshare") is None:
        return "needs Linux with unshare(1)"
    probe = tmp / "probe"
    probe.mkdir(exist_ok=True)
    try:
        done = subprocess.run(["unshare", "-m", "sh", "-c",
                               f"mount -t tmpfs -o size=1m tmpfs '{probe}'"],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unshare -m failed: {exc}"
    if done.returncode != 0:
        return f"cannot mount a tmpfs in a private mount namespace: {done.stderr.strip()}"
    return None


def run(mnt: Path, steps: list[dict[str, Any]], *, size: str = "8m",
        env: dict[str, str] | None = None, timeout: float = 300) -> list[dict[str, Any]]:
    """Mount a tmpfs of ``size`` on ``mnt`` (in a private namespace) and run ``steps``."""
    mnt.mkdir(parents=True, exist_ok=True)
    spec = {"mnt": str(mnt), "size": size, "steps": steps, "env": env or {}}
    done = subprocess.run(["unshare", "-m", sys.executable, str(HERE)], input=json.dumps(spec),
                          capture_output=True, text=True, timeout=timeout,
                          cwd=HERE.parent.parent)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


# -- the driver, inside the namespace -------------------------------------------------------

def _fill(mnt: Path) -> int:
    """Write zeros until ENOSPC; the bytes written."""
    fd = os.open(mnt / "fill", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    total, block = 0, b"\0" * 65536
    try:
        for size in (65536, 4096, 512, 1):
            while True:
                try:
                    total += os.write(fd, block[:size])
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)
    return total


def _main() -> None:
    spec = json.loads(sys.stdin.read())
    mnt = Path(spec["mnt"])
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={spec['size']}", "tmpfs", str(mnt)],
                   check=True)
    os.environ.update({"SEMSEARCH_NO_PROGRESS": "1", **spec["env"]})
    env = dict(os.environ)
    scope: dict[str, Any] = {"mnt": mnt, "fill": lambda: _fill(mnt),
                             "free": lambda: (mnt / "fill").unlink(missing_ok=True)}
    for step in spec["steps"]:
        out: dict[str, Any]
        if "cli" in step:
            done = subprocess.run([sys.executable, "-m", "semsearch", *step["cli"]],
                                  capture_output=True, text=True, env=env, timeout=240)
            out = {"rc": done.returncode, "stdout": done.stdout, "stderr": done.stderr}
        elif "fill" in step:
            out = {"written": _fill(mnt), "free": shutil.disk_usage(mnt).free}
        elif "free" in step:
            (mnt / "fill").unlink(missing_ok=True)
            out = {"free": shutil.disk_usage(mnt).free}
        else:
            result: dict[str, Any] = {}
            try:
                exec(step["py"], {**scope, "result": result})
                out = {"result": result}
            except BaseException:
                out = {"result": result, "error": traceback.format_exc()}
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    _main()
