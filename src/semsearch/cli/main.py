"""The ``semsearch`` command. Each command parses, calls one service, formats the result;
heavy imports happen inside commands so ``--help`` stays instant."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from semsearch.cli.adapt import adapt
from semsearch.cli.ask import ask
from semsearch.cli.common import _echo_json, _engine, _progress, executor_option
from semsearch.cli.consume import consume
from semsearch.cli.relevance import dedupe, recommend, similar
from semsearch.cli.run_metrics import emf_line, metrics_format_option, record_run, run_span
from semsearch.cli.serve import keys, serve
from semsearch.cli.sync import runs, sync
from semsearch.cli.tune import tune
from semsearch.cli.versions import activate, compact, reindex, rollback
from semsearch.errors import BusyError, SemsearchError

MODES = ("hybrid", "dense", "keyword")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="semsearch")
def cli() -> None:
    """Embed documents and search them: dense, keyword (BM25) and hybrid.

    Data lives in $SEMSEARCH_HOME (default ./.semsearch); every setting is an environment
    variable SEMSEARCH_*."""


@cli.command()
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--collection", "-c", required=True, help="collection to index into")
@click.option("--batch-size", type=click.IntRange(min=1), help="documents per commit  "
              "[default: 256; 1024 with --executor ray, where each commit is a Ray job]")
@click.option("--strict", is_flag=True,
              help="stop at the first invalid document instead of skipping it")
@click.option("--json", "as_json", is_flag=True, help="print the summary as one JSON object")
@executor_option
@metrics_format_option
def index(source: Path, collection: str, batch_size: int | None, strict: bool, as_json: bool,
          executor: str, metrics_format: str) -> None:
    """Index SOURCE into a collection (created with the configured model if new).

    \b
    SOURCE is one of:
      a BEIR folder       corpus.jsonl (+ queries.jsonl, qrels/) as BEIR publishes it
      a folder            every .txt, .md, .html file (and .jsonl/.csv) below it; the id is
                          the path relative to the folder, the title the first '# heading'
                          (Markdown) or <title> (HTML), metadata {"path", "type"}
      a .jsonl file       one JSON object per line
      a .csv file         a header row, then one document per row

    \b
    Fields read from .jsonl objects and .csv columns:
      id        "_id", "id" or "doc_id" (required)
      text      "text" (a .csv must have this column)
      title     "title" (optional)
      metadata  "metadata" (a JSON object, .jsonl only), else every other field

    Documents with no text (or over SEMSEARCH_MAX_TEXT_CHARS) are skipped and reported,
    unless --strict; a repeated id keeps its last copy and is reported; an unreadable file
    or corpus line stops the run with an error, keeping what was committed before it."""
    from semsearch.services.ingest import index_path, validate_name

    if "@" not in collection:
        validate_name(collection)  # before any progress is drawn
    emf = metrics_format == "emf"
    # A Ray job starts its actors (and their models) afresh: larger commits amortize that
    # (bench/RESULTS.md, "Distributed batch embedding (Ray)").
    batch_size = batch_size or (256 if executor.strip() in ("", "local") else 1024)
    with _engine(executor) as engine, _progress(None, "indexing", "doc") as tick:
        try:
            with run_span(engine, "index", collection):
                report = index_path(engine, collection, source, batch_size=batch_size,
                                    skip_invalid=not strict, on_total=tick.set_total,
                                    on_progress=tick)
        except Exception as exc:  # the error itself is printed by main()
            failed = {"collection": collection, "status": "failed", "error": str(exc)}
            record_run(engine, "index", failed)
            if emf:
                click.echo(emf_line(engine, "index", failed))
            raise
        record_run(engine, "index", report.to_dict())
    for reason in report.skipped_reasons:
        click.echo(f"warning: skipped: {reason}", err=True)
    if report.skipped > len(report.skipped_reasons):
        click.echo(f"warning: skipped {report.skipped - len(report.skipped_reasons)} more",
                   err=True)
    if report.duplicates:
        more = report.duplicates - len(report.duplicate_ids)
        click.echo(f"warning: {report.duplicates} documents repeated an id seen earlier in "
                   f"this run; the last copy of each was kept: "
                   f"{', '.join(report.duplicate_ids)}{f' and {more} more' if more > 0 else ''}",
                   err=True)
    if report.cache_errors:
        click.echo(f"warning: the embedding cache failed {report.cache_errors} times (see the "
                   "log); texts were embedded without it", err=True)
    if emf:
        click.echo(emf_line(engine, "index", report.to_dict()))
    elif as_json:
        _echo_json(report.to_dict())
        return
    click.echo(f"indexed {report.documents} documents into {collection!r}: "
               f"{report.new} new, {report.changed} changed, {report.unchanged} unchanged, "
               f"{report.skipped} skipped, {report.duplicates} repeated ids; "
               f"{report.chunks} chunks written; {report.embedded} texts embedded in "
               f"{report.model_calls} model calls, {report.cache_hits} cache hits, "
               f"{report.tokens} tokens, ${report.cost:.4f} (cache saved "
               f"${report.saved_cost:.4f}); {report.seconds:.1f} s", err=emf)


def _search_request(query: str, mode: str, k: int, filters: tuple[str, ...],
                    fusion: str | None, weights: str | None, chunks: bool,
                    **options: Any) -> Any:
    from semsearch.core.filters import parse_cli_filters
    from semsearch.core.types import Mode
    from semsearch.errors import InputError
    from semsearch.services.search import SearchRequest

    parsed_weights = None
    if weights:
        try:
            parsed_weights = {name: float(w) for name, w in
                              (part.split("=", 1) for part in weights.split(","))}
        except ValueError:
            raise InputError(f"--weights {weights!r}: use dense=0.7,keyword=0.3") from None
    return SearchRequest(query=query, mode=Mode(mode), k=k, filter=parse_cli_filters(
        list(filters)), fusion=fusion, weights=parsed_weights, group=not chunks, **options)


@cli.command()
@click.argument("query", required=False, default="")
@click.option("--collection", "-c", required=True)
@click.option("--mode", "-m", type=click.Choice(MODES), default="hybrid", show_default=True)
@click.option("--k", "-k", default=10, show_default=True, help="results to return")
@click.option("--filter", "-f", "filters", multiple=True,
              help='metadata filter: key=value or JSON like \'{"year": {"gte": 2010}}\'')
@click.option("--fusion", type=click.Choice(["rrf", "minmax", "zscore"]),
              help="hybrid fusion method  [default: the collection's tuned one, else rrf]")
@click.option("--weights", help="hybrid weights, e.g. dense=0.6,keyword=0.4")
@click.option("--title-weight", type=float,
              help="BM25 weight of the title against the body (1: one field)")
@click.option("--mmr", type=click.FloatRange(0, 1), metavar="LAMBDA",
              help="diversify with maximal marginal relevance (1: relevance only, "
                   "0: novelty only; 0.5-0.7 is usual)")
@click.option("--rerank", type=click.IntRange(0, 1000), metavar="N",
              help="re-score the top N with the configured re-ranker (SEMSEARCH_RERANKER); "
                   "0: off  [default: SEMSEARCH_RERANK_TOP]")
@click.option("--plus", multiple=True, metavar="TEXT",
              help="vector arithmetic: add this text's vector (repeatable)")
@click.option("--minus", multiple=True, metavar="TEXT",
              help="vector arithmetic: subtract this text's vector (repeatable)")
@click.option("--plus-id", "plus_ids", multiple=True, metavar="DOC_ID",
              help="vector arithmetic: add this document's vector (repeatable)")
@click.option("--minus-id", "minus_ids", multiple=True, metavar="DOC_ID",
              help="vector arithmetic: subtract this document's vector (repeatable)")
@click.option("--chunks", is_flag=True, help="return chunks, not one hit per document")
@click.option("--json", "as_json", is_flag=True)
def search(query: str, collection: str, mode: str, k: int, filters: tuple[str, ...],
           fusion: str | None, weights: str | None, title_weight: float | None,
           mmr: float | None, rerank: int | None, plus: tuple[str, ...],
           minus: tuple[str, ...], plus_ids: tuple[str, ...], minus_ids: tuple[str, ...],
           chunks: bool, as_json: bool) -> None:
    """Search a collection.

    \b
    With --plus/--minus (texts) or --plus-id/--minus-id (documents) the query is a vector
    sum, searched densely; QUERY, if given, is one more positive term:
      semsearch search -c words --plus woman --plus king --minus man"""
    from semsearch.services import search as svc

    req = _search_request(query, mode, k, filters, fusion, weights, chunks,
                          title_weight=title_weight, mmr=mmr, rerank=rerank, plus=plus,
                          minus=minus, plus_ids=plus_ids, minus_ids=minus_ids)
    with _engine() as engine:
        result = svc.search(engine, collection, req)
    if as_json:
        _echo_json({"hits": [h.to_dict() for h in result.hits],
                    "timings_ms": {k: round(v * 1000, 3) for k, v in result.timings.items()}})
        return
    _print_hits(result.hits)


def _score(value: float) -> str:
    """Four significant digits: BM25 scores on a small corpus are ~1e-6 and printed as
    0.000 with fixed decimals, which reads as 'no match'."""
    return f"{value:.4g}"


def _print_hits(hits: list[Any]) -> None:
    if not hits:
        click.echo("no results")
    for i, h in enumerate(hits, start=1):
        parts = ", ".join(f"{name} #{c.rank} {_score(c.score)}"
                          for name, c in h.components.items())
        snippet = " ".join(h.text.split())
        click.echo(f"{i:>2}. {h.doc_id}  {_score(h.score)}  ({parts})")
        if h.title:
            click.echo(f"    {h.title}")
        click.echo(f"    {snippet[:160]}{'...' if len(snippet) > 160 else ''}")


@cli.command()
@click.argument("texts", nargs=-1, required=True)
@click.option("--query", "as_query", is_flag=True, help="embed as queries, not passages")
def embed(texts: tuple[str, ...], as_query: bool) -> None:
    """Print the embedding of each text as JSON."""
    from semsearch.core.types import InputType
    from semsearch.services.search import embed_texts

    with _engine() as engine:
        vectors = embed_texts(engine, list(texts),
                              InputType.QUERY if as_query else InputType.PASSAGE).tolist()
        identity = engine.embedder.identity
    if len(vectors) == 1:
        _echo_json(vectors[0])
    else:
        _echo_json({"model": identity.to_dict(), "vectors": vectors})


@cli.command(name="eval")
@click.argument("dataset", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--collection", "-c", required=True)
@click.option("--modes", default="keyword,dense,hybrid", show_default=True)
@click.option("--split", default="test", show_default=True)
@click.option("--fusion", type=click.Choice(["rrf", "minmax", "zscore"]),
              help="hybrid fusion  [default: the collection's tuned one, else rrf]")
@click.option("--compare", "compare", metavar="OTHER",
              help="also evaluate OTHER (a collection or a version such as NAME@v1) the same "
                   "way, as the 'before' of -c")
@click.option("--report", "report", type=click.Path(path_type=Path), metavar="FILE",
              help="write a self-contained HTML page: charts, per-query wins and losses")
@click.option("--per-query", "with_queries", is_flag=True,
              help="with --json: every query's text and scores by mode")
@click.option("--json", "as_json", is_flag=True)
def eval_(dataset: Path, collection: str, modes: str, split: str, fusion: str | None,
          compare: str | None, report: Path | None, with_queries: bool,
          as_json: bool) -> None:
    """Measure nDCG@10, MRR@10, Recall@100 and MAP@100 on a BEIR dataset."""
    from semsearch.cli.eval_report import check_report_path, write_report
    from semsearch.core.types import Mode
    from semsearch.errors import InputError
    from semsearch.services.evaluate import count_queries, evaluate_collections

    try:
        mode_list = [Mode(m.strip()) for m in modes.split(",") if m.strip()]
    except ValueError:
        raise InputError(f"--modes {modes!r}: use a comma list of {', '.join(MODES)}") from None
    target = check_report_path(report) if report is not None else None
    names = [collection] + ([compare] if compare else [])
    with _engine() as engine, _progress(None, "evaluating", "query") as tick:
        tick.set_total(count_queries(engine, dataset, split) * len(mode_list) * len(names))
        runs = evaluate_collections(engine, names, dataset, mode_list, split=split,
                                    fusion=fusion, on_progress=tick)
    after, before = runs[0], (runs[1] if len(runs) > 1 else None)
    if target is not None:
        write_report(target, after, before)
        click.echo(f"report written to {target}", err=True)
    reports = after.modes
    if as_json:
        if before is None and not with_queries:
            _echo_json({r.mode: {k: round(v, 4) for k, v in r.metrics.items()}
                        for r in reports})
        else:
            _echo_json({"evaluation": after.to_dict(with_queries),
                        "compare": before.to_dict(with_queries) if before else None})
        return
    click.echo(f"{'mode':<8} {'nDCG@10':>8} {'MRR@10':>8} {'R@100':>8} {'MAP@100':>8} "
               f"{'p50 ms':>8} {'p99 ms':>8}")
    for r in reports:
        m = r.metrics
        click.echo(f"{r.mode:<8} {m['ndcg@10']:>8.4f} {m['mrr@10']:>8.4f} "
                   f"{m['recall@100']:>8.4f} {m['map@100']:>8.4f} "
                   f"{r.latency_ms['p50']:>8.2f} {r.latency_ms['p99']:>8.2f}")
    click.echo(f"{reports[0].queries if reports else 0} queries, split {split!r}")
    if before is not None:
        click.echo(f"against {before.collection} ({before.version}), nDCG@10 before -> after:")
        for r in reports:
            b = next((x for x in before.modes if x.mode == r.mode), None)
            if b is not None:
                old, new = b.metrics["ndcg@10"], r.metrics["ndcg@10"]
                click.echo(f"{r.mode:<8} {old:.4f} -> {new:.4f} ({new - old:+.4f})")


@cli.command()
@click.option("--json", "as_json", is_flag=True)
def collections(as_json: bool) -> None:
    """List collections with their model, counts and size on disk."""
    from semsearch.services.collections import describe_collections

    with _engine() as engine:
        rows = describe_collections(engine)
    if as_json:
        _echo_json({"collections": [r.to_dict() for r in rows]})
        return
    if not rows:
        click.echo("no collections yet; try: semsearch quickstart")
    for r in rows:
        c, ident = r.current, r.identity
        click.echo(f"{r.name} -> {r.active} (v{r.active_version}): "
                   f"{c.documents} documents, {c.chunks} chunks live, "
                   f"{c.vectors_deleted} deleted vectors awaiting compact, "
                   f"{ident['model']} ({ident['revision']}), "
                   f"{ident['dimension']}-d {ident['metric']}, "
                   f"{c.bytes_on_disk / 1e6:.1f} MB on disk")
        for v in r.versions:
            if not v.active:
                click.echo(f"    kept v{v.version} {v.name}: {v.model}, "
                           f"{v.documents} documents, {v.bytes_on_disk / 1e6:.1f} MB")


@cli.command()
@click.option("--collection", "-c", help="one collection (default: all)")
@click.option("--json", "as_json", is_flag=True)
def stats(collection: str | None, as_json: bool) -> None:
    """Cumulative cost and cache metering per collection, from the run history."""
    from semsearch.services.stats import collection_stats

    with _engine() as engine:
        rows = collection_stats(engine, collection)
    if as_json:
        _echo_json({"collections": [r.to_dict() for r in rows]})
        return
    if not rows:
        click.echo("no runs recorded yet")
    for r in rows:
        lat = r.provider_latency_ms
        click.echo(f"{r.collection}: {r.runs} runs ({r.failed_runs} failed), "
                   f"{r.provider_calls} provider calls, {r.items_embedded} texts, "
                   f"{r.tokens} tokens, ${r.cost:.4f}; cache {r.cache_hits} hits / "
                   f"{r.cache_misses} misses ({r.cache_hit_rate:.0%}), "
                   f"{r.cache_errors} cache errors, saved "
                   f"${r.saved_cost:.4f}; provider latency p50 {lat['p50']} ms, "
                   f"p95 {lat['p95']} ms, p99 {lat['p99']} ms")


@cli.command()
@click.option("--json", "as_json", is_flag=True)
def models(as_json: bool) -> None:
    """List the embedders available here (and which one is configured)."""
    from semsearch.config import Settings
    from semsearch.wiring import available_models

    rows = available_models(Settings())
    if as_json:
        _echo_json({"models": rows})
        return
    for r in rows:
        mark = "*" if r["configured"] else " "
        state = "installed" if r["installed"] else "not installed"
        extra = f" {r['precision']}" if "precision" in r else ""
        dim = f", {r['dimension']}-d" if r["dimension"] else ""
        click.echo(f"{mark} {r['provider']}: {r['id']}{extra}{dim} ({state}) - {r['how']}")


@cli.command()
@click.option("--collection", "-c", required=True)
@click.option("--json", "as_json", is_flag=True)
def rebuild(collection: str, as_json: bool) -> None:
    """Drop and rebuild a collection's derived indexes from the canonical store."""
    from dataclasses import asdict

    from semsearch.services.maintenance import chunk_count, rebuild_indexes

    with _engine() as engine, _progress(None, "rebuilding", "chunk") as tick:
        tick.set_total(chunk_count(engine, collection))
        report = rebuild_indexes(engine, collection, on_progress=tick)
    if as_json:
        _echo_json(asdict(report))
        return
    click.echo(f"rebuilt {collection!r}: {report.chunks} chunks, {report.embedded} embedded, "
               f"{report.cache_hits} from the cache, {report.seconds:.1f} s")


@cli.command()
@click.option("--dry-run", is_flag=True, help="print the SQL that would run; change nothing")
def migrate(dry_run: bool) -> None:
    """Create or upgrade the shared database's schema (SEMSEARCH_STORE); also done on first
    use, this lets a deploy run it once, ahead of the servers."""
    from semsearch.config import Settings
    from semsearch.wiring import migrate_store

    statements = migrate_store(Settings(), dry_run=dry_run)
    if statements is None:
        click.echo("the embedded store (SQLite in SEMSEARCH_HOME) needs no migration: it "
                   "upgrades itself when opened; set SEMSEARCH_STORE=postgresql://... to "
                   "migrate a shared database")
        return
    if not statements:
        click.echo("the schema is up to date; nothing to do")
        return
    for sql in statements:
        click.echo(sql.rstrip(";") + ";")
    if dry_run:
        click.echo(f"-- dry run: {len(statements)} statements would run; nothing changed")
    else:
        click.echo(f"-- applied {len(statements)} statements")


@cli.command()
@click.argument("name")
def drop(name: str) -> None:
    """Delete a collection (every version) and its indexes, or one kept version (NAME@vN)."""
    from semsearch.services.collections import drop_collection

    with _engine() as engine:
        dropped = drop_collection(engine, name)
    click.echo(f"dropped {', '.join(repr(d) for d in dropped)}")


@cli.command()
@click.argument("doc_ids", nargs=-1, required=True)
@click.option("--collection", "-c", required=True)
def delete(doc_ids: tuple[str, ...], collection: str) -> None:
    """Delete documents by id."""
    from semsearch.services.ingest import delete_documents

    with _engine() as engine:
        n = delete_documents(engine, collection, list(doc_ids))
    click.echo(f"deleted {n} of {len(doc_ids)} documents from {collection!r}")


@cli.command()
def quickstart() -> None:
    """Index the bundled sample corpus and run an example query in each mode."""
    from semsearch.services.quickstart import QUERY, run_quickstart

    with _engine() as engine:
        click.echo("indexing the sample corpus that ships with semsearch ...")
        with _progress(None, "indexing", "doc") as tick:
            report, results = run_quickstart(engine, on_progress=tick)
        home = engine.settings.home.resolve()
    click.echo(f"{report.documents} documents, {report.chunks} chunks, {report.embedded} "
               f"embedded, {report.cache_hits} cache hits, {report.seconds:.1f} s\n")
    for mode, hits in results.items():
        click.echo(f"== {mode}: {QUERY!r}")
        _print_hits(hits[:3])
        click.echo("")
    click.echo(f"Data is in {home} (set SEMSEARCH_HOME to move it). Search your own files:\n"
               "  semsearch index ./my-docs --collection mine\n"
               "  semsearch search \"your question\" --collection mine --mode hybrid\n"
               "  semsearch eval <BEIR folder> --collection <name>   # measure quality")


cli.add_command(adapt)
cli.add_command(ask)
cli.add_command(serve)
cli.add_command(sync)
cli.add_command(consume)
cli.add_command(runs)
for _command in (reindex, rollback, activate, compact):
    cli.add_command(_command)
cli.add_command(keys)
for _command in (similar, dedupe, recommend):
    cli.add_command(_command)
cli.add_command(tune)


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, standalone_mode=False)
    except BusyError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(3)
    except SemsearchError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except ValueError as exc:
        from pydantic import ValidationError

        if not isinstance(exc, ValidationError):
            raise
        # A SEMSEARCH_* variable (or semsearch.toml key) out of range: name it, no traceback.
        problems = "; ".join(f"SEMSEARCH_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}"
                             for e in exc.errors())
        click.echo(f"error: invalid setting: {problems}", err=True)
        sys.exit(2)
    except OSError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
