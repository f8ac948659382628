"""``semsearch reindex``, ``rollback``, ``activate`` and ``compact``: a collection's versions.

Thin: parse, call ``services.versions`` / ``services.collections``, print. Exit 0 when the
swap happened (or the dry run/compaction succeeded), 1 when the gate kept the old version."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from semsearch.cli.common import _echo_json, _engine, _progress

MODES = ("hybrid", "dense", "keyword")


@click.command()
@click.option("--collection", "-c", required=True, help="collection name (not a version)")
@click.option("--model", help="model to re-index with (see: semsearch models); default: the "
              "configured embedder")
@click.option("--chunk-max-tokens", type=click.IntRange(16, 512), help="new chunk size")
@click.option("--chunk-overlap-tokens", type=click.IntRange(0, 256), help="new overlap")
@click.option("--chunk-strategy", type=click.Choice(["sentence", "paragraph", "window"]))
@click.option("--dry-run", is_flag=True, help="estimate chunks, tokens, cost and time only")
@click.option("--gate", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="BEIR folder with labelled queries: swap only if nDCG@10 holds")
@click.option("--tolerance", type=float, default=0.01, show_default=True,
              help="largest nDCG@10 drop (absolute) the gate accepts, per mode")
@click.option("--gate-modes", default=",".join(MODES), show_default=True)
@click.option("--split", default="test", show_default=True, help="qrels split for the gate")
@click.option("--no-swap", is_flag=True, help="build (and gate) the new version, keep the old")
@click.option("--json", "as_json", is_flag=True)
def reindex(collection: str, model: str | None, chunk_max_tokens: int | None,
            chunk_overlap_tokens: int | None, chunk_strategy: str | None, dry_run: bool,
            gate: Path | None, tolerance: float, gate_modes: str, split: str, no_swap: bool,
            as_json: bool) -> None:
    """Re-index a collection with another model or chunker into a new version, while the
    current version keeps serving; then gate it and swap the name over atomically."""
    from semsearch.core.types import Mode
    from semsearch.services.collections import document_count
    from semsearch.services.versions import plan_reindex
    from semsearch.services.versions import reindex as run_reindex

    chunker = {"max_tokens": chunk_max_tokens, "overlap_tokens": chunk_overlap_tokens,
               "strategy": chunk_strategy}
    modes = [Mode(m.strip()) for m in gate_modes.split(",") if m.strip()]
    with _engine() as engine:
        if dry_run:
            plan = plan_reindex(engine, collection, model, chunker)
            if as_json:
                _echo_json(plan.to_dict())
                return
            secs = "unknown (remote API)" if plan.estimated_seconds is None \
                else f"~{plan.estimated_seconds:.0f} s"
            click.echo(f"re-index {collection!r} ({plan.active} -> {plan.target}) with "
                       f"{plan.identity['model']}: {plan.documents} documents, {plan.chunks} "
                       f"chunks, {plan.tokens} tokens; {plan.cached_chunks} chunks already "
                       f"cached, {plan.tokens_to_embed} tokens to embed, "
                       f"${plan.estimated_cost:.4f}, {secs}")
            return
        total = document_count(engine, collection)
        with _progress(total, "re-indexing", "doc") as tick:
            report = run_reindex(engine, collection, model=model, chunker=chunker, gate=gate,
                                 tolerance=tolerance, gate_modes=modes, gate_split=split,
                                 swap=not no_swap, on_progress=tick)
    if as_json:
        _echo_json(report.to_dict())
    else:
        b = report.build
        click.echo(f"built {report.version}: {b.documents} documents, {b.chunks} "
                   f"chunks, {b.embedded} embedded, {b.cache_hits} from the cache, "
                   f"{b.seconds:.1f} s (estimated {report.plan.estimated_seconds} s)")
        if report.gate is not None:
            click.echo(f"gate on {report.gate.dataset} (tolerance {report.gate.tolerance}):")
            for mode, r in report.gate.modes.items():
                click.echo(f"  {mode:<8} nDCG@10 {r['old_ndcg@10']:.4f} -> "
                           f"{r['new_ndcg@10']:.4f} ({r['delta']:+.4f})")
        click.echo(report.message)
    if report.gate is not None and not report.gate.passed:
        sys.exit(1)


@click.command()
@click.option("--collection", "-c", required=True)
@click.option("--json", "as_json", is_flag=True)
def rollback(collection: str, as_json: bool) -> None:
    """Serve the version that was active before the last swap (the current one is kept)."""
    from semsearch.services.versions import rollback as run_rollback

    with _engine() as engine:
        out = run_rollback(engine, collection)
    _report_swap(out, as_json)


@click.command()
@click.option("--collection", "-c", required=True)
@click.option("--version", "version", required=True, help="version number or name@vN")
@click.option("--json", "as_json", is_flag=True)
def activate(collection: str, version: str, as_json: bool) -> None:
    """Serve a kept version of a collection."""
    from semsearch.services.versions import activate as run_activate

    with _engine() as engine:
        out = run_activate(engine, collection, int(version) if version.isdigit() else version)
    _report_swap(out, as_json)


def _report_swap(out: dict[str, Any], as_json: bool) -> None:
    if as_json:
        _echo_json(out)
        return
    click.echo(f"{out['collection']!r} now serves {out['active']} (was {out['previous']}, "
               "kept)")


@click.command()
@click.option("--collection", "-c", required=True)
@click.option("--no-store", is_flag=True, help="leave the shared canonical store alone")
@click.option("--json", "as_json", is_flag=True)
def compact(collection: str, no_store: bool, as_json: bool) -> None:
    """Reclaim the space deleted documents still hold; report the bytes freed."""
    from semsearch.services.collections import compact_collection

    with _engine() as engine:
        report = compact_collection(engine, collection, store=not no_store)
    if as_json:
        _echo_json(report.to_dict())
        return
    click.echo(f"compacted {collection!r} ({report.version}): {report.bytes_freed:,} bytes "
               f"freed ({sum(report.bytes_before.values()):,} -> "
               f"{sum(report.bytes_after.values()):,}); deleted vectors "
               f"{report.vectors_deleted_before} -> {report.vectors_deleted_after}; "
               f"{report.seconds:.1f} s")
