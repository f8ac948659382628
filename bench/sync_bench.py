"""Sync of a 10k-row PostgreSQL table: cold, then after 1% of the rows change, in one run.

    python bench/sync_bench.py ../shared/data --rows 10000

Rows are product-like texts (three sentences each) cut from the BEIR corpora in the folder,
loaded into a private database on the local PostgreSQL (created and dropped here). Measured
in the same process, each in its own fresh home and cache:

  baseline   ``index_documents`` of the same 10k documents (no source, no watermark)
  cold       first ``sync`` of the table
  no change  the next incremental sync (nothing changed)
  1% change  after 1% of the rows get new text (and a newer updated_at)
  full       ``--full`` reconciliation after 1% of the rows are hard-deleted

The model is loaded before any timing; ratios compare runs of this one process."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import re
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from semsearch.config import Settings
from semsearch.core.types import Document
from semsearch.services.ingest import index_documents
from semsearch.services.sync import sync
from semsearch.services.sync_config import SourceSpec
from semsearch.wiring import open_engine

PG = "postgresql+psycopg://postgres@127.0.0.1:5432"
T0 = dt.datetime(2026, 11, 1, 12, 0, 0)


def make_rows(data: Path, n: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for corpus in sorted(data.glob("*/corpus.jsonl")):
        with corpus.open(encoding="utf-8") as fh:
            for line in fh:
                doc = json.loads(line)
                sents = re.split(r"(?<=[.!?])\s+", doc.get("text", "").strip())
                for i in range(0, len(sents) - 2, 3):
                    text = " ".join(sents[i:i + 3])
                    if len(text) < 40:
                        continue
                    rid = len(rows) + 1
                    rows.append({"id": rid, "title": doc.get("title", "")[:200],
                                 "description": text, "category": corpus.parent.name,
                                 "price": round(1 + (rid * 37 % 500) / 7, 2),
                                 "updated_at": T0 + dt.timedelta(seconds=rid % 600)})
                    if len(rows) == n:
                        return rows
    raise SystemExit(f"only {len(rows)} rows could be made from {data}")


def run_sync(home: Path, spec: SourceSpec, full: bool = False) -> dict[str, Any]:
    from semsearch.wiring import make_source

    engine = open_engine(Settings(home=home))
    try:
        engine.embedder.embedder.embed(["warm up"])
        source = make_source(spec, engine.settings)
        started = time.perf_counter()
        report = sync(engine, source, spec, full=full)
        wall = time.perf_counter() - started
        source.close()
        return report.to_dict() | {"wall": wall}
    finally:
        engine.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data", type=Path, help="folder of BEIR corpora, e.g. ../shared/data")
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--models", type=Path, default=Path(".semsearch/models"),
                    help="a models folder to reuse (the built graph)")
    args = ap.parse_args()
    rows = make_rows(args.data, args.rows)
    dbname = f"semsearch_bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(f"{PG}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{dbname}"'))
    src = sa.create_engine(f"{PG}/{dbname}")
    tmp = Path(tempfile.mkdtemp(prefix="semsearch-sync-bench-"))
    results: dict[str, dict[str, Any]] = {}
    try:
        with src.begin() as c:
            c.execute(sa.text("CREATE TABLE products (id INTEGER PRIMARY KEY, title TEXT, "
                              "description TEXT, category TEXT, price NUMERIC(10,2), "
                              "updated_at TIMESTAMP NOT NULL, is_deleted BOOLEAN NOT NULL "
                              "DEFAULT FALSE)"))
            c.execute(sa.text("INSERT INTO products (id, title, description, category, price,"
                              " updated_at) VALUES (:id, :title, :description, :category, "
                              ":price, :updated_at)"), rows)
            c.execute(sa.text("CREATE INDEX ON products (updated_at, id)"))
        homes = {k: tmp / k for k in ("baseline", "sync")}
        for h in homes.values():
            h.mkdir()
            (h / "models").symlink_to(args.models.resolve(), target_is_directory=True)
        spec = SourceSpec(collection="products", source=f"{PG}/{dbname}", table="products",
                          text=("description",), title="title",
                          metadata=("category", "price"), updated_at="updated_at",
                          deleted_flag="is_deleted", lookback_seconds=60).validate()

        engine = open_engine(Settings(home=homes["baseline"]))
        try:
            engine.embedder.embedder.embed(["warm up"])
            docs = [Document(id=str(r["id"]), title=r["title"], text=r["description"],
                             metadata={"category": r["category"], "price": float(r["price"])})
                    for r in rows]
            started = time.perf_counter()
            rep = index_documents(engine, "products", docs)
            results["baseline: index the same rows"] = rep.to_dict() | {
                "wall": time.perf_counter() - started, "rows_seen": rep.documents,
                "chunks_written": rep.chunks}
        finally:
            engine.close()

        results["sync cold"] = run_sync(homes["sync"], spec)
        results["sync, no change"] = run_sync(homes["sync"], spec)
        changed = random.Random(7).sample(rows, len(rows) // 100)
        with src.begin() as c:
            c.execute(sa.text("UPDATE products SET description = description || :s, "
                              "updated_at = :u WHERE id = :id"),
                      [{"s": " Now revised.", "u": T0 + dt.timedelta(hours=1), "id": r["id"]}
                       for r in changed])
        results["sync, 1% changed"] = run_sync(homes["sync"], spec)
        gone = random.Random(8).sample(rows, len(rows) // 100)
        with src.begin() as c:
            c.execute(sa.text("DELETE FROM products WHERE id = :id"),
                      [{"id": r["id"]} for r in gone])
        results["sync --full, 1% hard-deleted"] = run_sync(homes["sync"], spec, full=True)
    finally:
        src.dispose()
        with admin.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)'))
        admin.dispose()

    base = results["baseline: index the same rows"]["wall"]
    cold = results["sync cold"]["wall"]
    print(f"{len(rows)} rows; wall seconds and ratios measured in this one run")
    print(f"{'run':<32} {'rows':>6} {'new':>6} {'chg':>5} {'del':>5} {'embedded':>8} "
          f"{'wall s':>8} {'vs baseline':>11} {'cold / this':>11}")
    for name, r in results.items():
        print(f"{name:<32} {r.get('rows_seen', 0):>6} {r.get('new', 0):>6} "
              f"{r.get('changed', 0):>5} {r.get('deleted', 0):>5} {r.get('embedded', 0):>8} "
              f"{r['wall']:>8.2f} {r['wall'] / base:>10.2f}x {cold / r['wall']:>10.1f}x")


if __name__ == "__main__":
    main()
