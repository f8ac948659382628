"""What the benchmark scripts share: running the semsearch CLI in a subprocess, as a user
would. Imported as a sibling module (`python bench/<script>.py` puts bench/ on sys.path)."""

from __future__ import annotations

import subprocess
import sys


def semsearch(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``semsearch ARGS`` with ``env``; a failure ends the benchmark with its stderr."""
    out = subprocess.run([sys.executable, "-m", "semsearch", *args], env=env,
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"semsearch {' '.join(args)} failed:\n{out.stderr[-2000:]}")
    return out
