"""``semsearch sync`` (a source database or folder -> a collection) and ``semsearch runs``.

Made for a CronJob: progress and a summary on stderr, one JSON line per source on stdout,
exit 0 only when every source synced (1 = a run failed, 3 = another run holds the
collection, 2 = bad arguments)."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Any

import click

from semsearch.cli.common import _echo_json, _engine, _progress, executor_option
from semsearch.cli.run_metrics import emf_line, metrics_format_option, record_run, run_span
from semsearch.errors import BusyError, InputError, SemsearchError


def _spec_from_flags(opts: dict[str, Any], engine: Any) -> Any:
    from semsearch.services.sync_config import has_password, spec_from_mapping

    given = {k: v for k, v in opts.items() if v not in (None, "", ())}
    collection = given.get("collection")
    if not collection:
        raise InputError("give --collection (or --config FILE)")
    from semsearch.services.sync import stored_spec

    state = None
    with contextlib.suppress(SemsearchError):
        state = stored_spec(engine, collection)
    if "source" not in given:
        if state is None:
            raise InputError(f"collection {collection!r} has not been synced yet: give "
                             "--source and the column options")
        stored = dict(state)
        if has_password(stored.get("source", "")) and "***" in stored["source"]:
            raise InputError(f"the stored source of {collection!r} had a password, which is "
                             "never stored; give --source again")
        stored = {k: v for k, v in stored.items() if v not in (None, "", [], ())}
        return spec_from_mapping({**stored, **given}, "stored sync settings")
    return spec_from_mapping(given, "command line")


@click.command()
@click.option("--source", help="SQLAlchemy URL (postgresql://, mysql://, sqlite:///) or a "
              "folder / .jsonl / .csv path")
@click.option("--table", help="table to read (schema.table allowed)")
@click.option("--query", help="SQL query to read instead of a table")
@click.option("--id", "id_", help="id column  [default: id]")
@click.option("--text", help="text column(s), comma-separated  [default: text]")
@click.option("--title", help="title column")
@click.option("--metadata", help="metadata columns, comma-separated")
@click.option("--updated-at", help="last-modified column: enables incremental runs")
@click.option("--deleted-flag", help="soft-delete column: truthy rows are removed")
@click.option("--lookback", "lookback_seconds", type=float,
              help="re-read this many seconds before the watermark  [default: 60]")
@click.option("--batch-size", type=click.IntRange(min=1),
              help="rows per committed batch  [default: 256]")
@click.option("--collection", "-c", help="collection to keep in step with the source")
@click.option("--config", "config", type=click.Path(path_type=Path),
              help="sync.toml with one [[source]] table per source")
@click.option("--only", help="with --config: sync only the source of this name/collection")
@click.option("--full", is_flag=True, help="read the whole source and delete what it no "
              "longer holds (hard deletes)")
@click.option("--audit", is_flag=True, help="compare source and collection; change nothing")
@click.option("--repair", is_flag=True, help="with --audit: fix the drift found")
@executor_option
@metrics_format_option
def sync(config: Path | None, only: str | None, full: bool, audit: bool, repair: bool,
         executor: str, metrics_format: str, **opts: Any) -> None:
    """Keep a collection in step with a source database table/query or a folder of files.

    Only rows new or changed since the last run are read (watermark on --updated-at with an
    id tie-break), unchanged content is never re-embedded, soft-deleted rows are removed,
    and --full (or --audit --repair) also removes rows deleted outright."""
    from semsearch.services.sync_config import load_sync_file

    if repair and not audit:
        raise click.UsageError("--repair goes with --audit")
    opts["id"] = opts.pop("id_")
    failed = 0
    with _engine(executor) as engine:
        if config is not None:
            specs = load_sync_file(config)
            if only:
                specs = [s for s in specs if only in (s.name, s.collection)]
                if not specs:
                    raise InputError(f"{config}: no source named {only!r}")
        else:
            specs = [_spec_from_flags(opts, engine)]
        for spec in specs:
            failed += _run_one(engine, spec, full=full, audit=audit, repair=repair,
                               emf=metrics_format == "emf")
    if failed:
        sys.exit(failed)


def _run_one(engine: Any, spec: Any, *, full: bool, audit: bool, repair: bool,
             emf: bool = False) -> int:
    """Returns the exit code contribution: 0 ok, 1 failed or drift, 3 busy. The run's
    metrics line is plain JSON, or CloudWatch EMF with ``emf`` (an audit prints its own
    JSON report either way)."""
    from semsearch.services import sync as sync_service
    from semsearch.services.sync_audit import audit as audit_service
    from semsearch.wiring import open_source

    source = None
    try:
        source = open_source(engine, spec)
        with _progress(None, f"{'auditing' if audit else 'syncing'} {spec.collection}",
                       "row") as bar:
            if audit:
                report = audit_service(engine, source, spec, repair=repair,
                                       on_progress=bar)
                _echo_json({"event": "sync_audit", **report.to_dict()})
                _print_audit(report)
                return 1 if report.drift and not repair else 0
            with run_span(engine, "sync", spec.collection):
                result = sync_service.sync(engine, source, spec, full=full,
                                           on_total=bar.set_total, on_progress=bar)
    except BusyError as exc:
        click.echo(f"error: {exc}", err=True)
        return 3
    except SemsearchError as exc:
        click.echo(f"error: sync of {spec.collection!r} failed: {exc}", err=True)
        failed = {"event": "sync_run", "collection": spec.collection, "status": "failed",
                  "error": str(exc)}
        if not audit:
            record_run(engine, "sync", failed)
        click.echo(emf_line(engine, "sync", failed) if emf and not audit
                   else json.dumps(failed, ensure_ascii=False))
        return 1
    finally:
        if source is not None:
            source.close()
    record_run(engine, "sync", result.to_dict())
    click.echo(emf_line(engine, "sync", {"event": "sync_run", **result.to_dict()}) if emf
               else result.json_line())
    for doc_id, reason in result.rejected_reasons.items():
        click.echo(f"warning: skipped row {doc_id}: {reason}", err=True)
    click.echo(
        f"synced {spec.collection!r} ({result.mode}): {result.rows_seen} rows seen, "
        f"{result.new} new, {result.changed} changed, {result.unchanged} unchanged, "
        f"{result.deleted} deleted, {result.rejected} skipped; {result.chunks_written} chunks "
        f"written; {result.embedded} texts embedded in {result.model_calls} model calls, "
        f"{result.cache_hits} cache hits, {result.tokens} tokens, ${result.cost:.4f}; "
        f"{result.seconds:.1f} s", err=True)
    return 0


def _print_audit(report: Any) -> None:
    verdict = "in step" if not report.drift else "DRIFT"
    click.echo(
        f"audit of {report.collection!r}: {verdict}; source {report.source_live} live rows, "
        f"collection {report.indexed_documents} documents; {report.missing} missing, "
        f"{report.stale} stale, {report.extra} gone from the source, "
        f"{report.deleted_still_indexed} soft-deleted but indexed, {report.rejected} "
        f"refused; derived indexes {'in step' if report.derived_in_step else 'behind'} "
        f"({report.vector_entries} vectors, {report.keyword_entries} keyword entries, "
        f"{report.index_chunks} chunks)", err=True)
    for kind, ids in report.examples.items():
        click.echo(f"  {kind}: {', '.join(ids)}", err=True)
    if report.repaired is not None or report.rebuilt_indexes:
        click.echo("  repaired" + (" (derived indexes rebuilt)" if report.rebuilt_indexes
                                   else ""), err=True)


@click.command()
@click.option("--collection", "-c", help="one collection (default: all)")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True)
def runs(collection: str | None, limit: int, as_json: bool) -> None:
    """History of index and sync runs: start, end, status, counts, tokens, cost."""
    from semsearch.services.stats import list_runs

    with _engine() as engine:
        rows = list_runs(engine, collection, limit=limit)
    if as_json:
        _echo_json({"runs": rows})
        return
    if not rows:
        click.echo("no runs recorded yet")
        return
    click.echo(f"{'id':>5} {'collection':<16} {'kind':<6} {'started':<25} {'finished':<25} "
               f"{'status':<11} {'rows':>7} {'new':>6} {'chg':>6} {'del':>6} {'chunks':>7} "
               f"{'tokens':>8} {'cost':>9}")
    for r in rows:
        st = r["stats"]
        click.echo(
            f"{r['id']:>5} {r['collection'][:16]:<16} {r['kind']:<6} {r['started_at']:<25} "
            f"{r['finished_at'] or '-':<25} {r['status']:<11} "
            f"{st.get('rows_seen', st.get('documents', 0)):>7} {st.get('new', 0):>6} "
            f"{st.get('changed', 0):>6} {st.get('deleted', 0):>6} "
            f"{st.get('chunks_written', st.get('chunks', 0)):>7} {st.get('tokens', 0):>8} "
            f"{st.get('cost', 0.0):>9.4f}")
