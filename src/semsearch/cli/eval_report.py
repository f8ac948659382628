"""The file side of ``semsearch eval --report``: refuse a path that cannot be written before
an evaluation spends minutes, and write the page whole (a temporary file renamed over the
target) so a crash never leaves half a report."""

from __future__ import annotations

import os
import tempfile
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path
from typing import TYPE_CHECKING

from semsearch.errors import InputError

if TYPE_CHECKING:
    from semsearch.services.evaluate import Evaluation


def check_report_path(path: Path) -> Path:
    """The absolute path to write, or InputError saying why it cannot be written."""
    target = path.expanduser().absolute()
    if target.is_dir():
        raise InputError(f"--report {str(path)!r} is a directory; name a file such as "
                         "report.html")
    parent = target.parent
    if not parent.is_dir():
        what = "is not a folder" if parent.exists() else "does not exist"
        raise InputError(f"--report {str(path)!r}: {str(parent)!r} {what}")
    if target.exists() and not os.access(target, os.W_OK):
        raise InputError(f"--report {str(path)!r}: not writable")
    try:  # the one test that holds for root, read-only mounts and /proc alike: write there
        with tempfile.NamedTemporaryFile(prefix=".report-", dir=parent):
            pass
    except OSError as exc:
        raise InputError(f"--report {str(path)!r}: cannot write in {str(parent)!r} "
                         f"({exc.strerror or exc})") from None
    return target


def write_report(target: Path, after: Evaluation, before: Evaluation | None) -> None:
    """Render and write the page atomically."""
    from semsearch.core.report import render_report

    try:
        version = package_version("semsearch")
    except PackageNotFoundError:
        version = ""
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    page = render_report(after, before, generated=generated, version=version)
    fd, tmp = tempfile.mkstemp(prefix=".report-", suffix=".html", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(page)
        mask = os.umask(0)  # mkstemp makes the file private; a report is for sharing
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
