"""What the default path (no optional backend configured) imports: run in a fresh
interpreter, so an optional backend's driver imported there shows up."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def modules_loaded_by_default(home: Path, picked: str) -> str:
    """Open an engine and build the API on the embedded default in ``home``; print the
    sorted names of loaded modules ``m`` for which the expression ``picked`` is true."""
    code = ("import sys; from semsearch.config import Settings; "
            "from semsearch.wiring import open_engine; from semsearch.api.app import create_app; "
            f"s = Settings(home={str(home)!r}, embedder='fake'); "
            "open_engine(s).close(); create_app(s); "
            f"print(sorted(m for m in sys.modules if {picked}))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEMSEARCH_")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, cwd=home, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()
