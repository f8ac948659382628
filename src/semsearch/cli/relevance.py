"""``semsearch similar``, ``semsearch dedupe`` and ``semsearch recommend``: documents like
one, clusters of near-copies, and recommendations from a history (with a cold-start
fallback). Each parses, calls one service, formats."""

from __future__ import annotations

from typing import Any

import click

from semsearch.cli.common import _echo_json, _engine

FILTER_HELP = 'metadata filter: key=value or JSON like \'{"year": {"gte": 2010}}\''


def _print_hits(hits: list[Any]) -> None:
    if not hits:
        click.echo("no results")
    for i, h in enumerate(hits, start=1):
        snippet = " ".join(h.text.split())
        click.echo(f"{i:>2}. {h.doc_id}  {h.score:.4f}")
        if h.title:
            click.echo(f"    {h.title}")
        click.echo(f"    {snippet[:160]}{'...' if len(snippet) > 160 else ''}")


@click.command()
@click.argument("doc_id")
@click.option("--collection", "-c", required=True)
@click.option("--k", "-k", default=10, show_default=True, help="documents to return")
@click.option("--filter", "-f", "filters", multiple=True, help=FILTER_HELP)
@click.option("--json", "as_json", is_flag=True)
def similar(doc_id: str, collection: str, k: int, filters: tuple[str, ...],
            as_json: bool) -> None:
    """Documents similar to DOC_ID (its near-copies first), itself left out.

    Scores are cosines between DOC_ID's vector (the mean of its chunks') and each hit's
    closest chunk. No model runs: document vectors are stored with the documents."""
    from semsearch.core.filters import parse_cli_filters
    from semsearch.services.neighbours import similar as find_similar

    filt = parse_cli_filters(list(filters))
    with _engine() as engine:
        result = find_similar(engine, collection, doc_id, k, filt)
    if as_json:
        _echo_json({"doc_id": doc_id, "hits": [h.to_dict() for h in result.hits],
                    "version": result.version})
        return
    _print_hits(result.hits)


@click.command()
@click.option("--collection", "-c", required=True)
@click.option("--threshold", "-t", type=float, default=0.95, show_default=True,
              help="cosine of document vectors at or above which two are near-copies")
@click.option("--method", type=click.Choice(["auto", "exact", "ann"]), default="auto",
              show_default=True, help="exact: every pair; ann: each document's nearest "
              "neighbours in the vector index; auto: exact up to --exact-limit documents")
@click.option("--exact-limit", type=int, default=20_000, show_default=True,
              help="auto: the largest collection compared pair by pair")
@click.option("--neighbours", type=int, default=10, show_default=True,
              help="ann: nearest documents checked per document")
@click.option("--limit", type=click.IntRange(min=1), help="clusters shown at most")
@click.option("--json", "as_json", is_flag=True)
def dedupe(collection: str, threshold: float, method: str, exact_limit: int, neighbours: int,
           limit: int | None, as_json: bool) -> None:
    """List clusters of near-duplicate documents, largest first.

    A cluster is a connected group of documents whose vectors are at least THRESHOLD
    apart in cosine; its first member (the one most similar to the others) is the one to
    keep. Nothing is deleted: `semsearch delete` the others if you mean to."""
    from semsearch.services.dedupe import find_duplicates

    with _engine() as engine:
        report = find_duplicates(engine, collection, threshold, method, neighbours,
                                 exact_limit, limit)
    if as_json:
        _echo_json(report.to_dict())
        return
    click.echo(f"{report.clusters_total} clusters of near-duplicates among "
               f"{report.documents} documents (threshold {report.threshold:g}, "
               f"{report.method}, {report.seconds:.1f} s); {report.duplicates} documents "
               "would go if each cluster kept its first")
    for i, c in enumerate(report.clusters, start=1):
        click.echo(f"[{i}] {len(c.members)} documents, cosine {c.min_similarity:.4f} to "
                   f"{c.max_similarity:.4f}")
        for j, m in enumerate(c.members):
            click.echo(f"    {m.id}  {'(keep)' if j == 0 else f'{m.similarity:.4f}'}")
    if len(report.clusters) < report.clusters_total:
        click.echo(f"... and {report.clusters_total - len(report.clusters)} more clusters")


def _rated(items: tuple[str, ...]) -> tuple[Any, ...]:
    """``ID`` or ``ID:WEIGHT``: what follows the last ':' is a weight when it reads as a
    number, so an id that holds ':' and ends in a number (``urn:x:1``) is given with its
    weight (``urn:x:1:1``)."""
    from semsearch.services.recommend import Rated

    out = []
    for item in items:
        doc_id, sep, tail = item.rpartition(":")
        try:
            weight = float(tail) if sep and doc_id else None
        except ValueError:
            weight = None
        out.append(Rated(item) if weight is None else Rated(doc_id, weight))
    return tuple(out)


@click.command()
@click.option("--collection", "-c", required=True)
@click.option("--like", "likes", multiple=True, metavar="ID[:WEIGHT]",
              help="a liked item, optionally weighted (repeatable)")
@click.option("--dislike", "dislikes", multiple=True, metavar="ID[:WEIGHT]",
              help="a disliked item: steer away from it (repeatable)")
@click.option("--seen", multiple=True, metavar="ID", help="an item not to recommend")
@click.option("--profile", default="", metavar="TEXT",
              help="stated interests: used when no liked item is known")
@click.option("--k", "-k", default=10, show_default=True, help="items to return")
@click.option("--filter", "-f", "filters", multiple=True, help=FILTER_HELP)
@click.option("--json", "as_json", is_flag=True)
def recommend(collection: str, likes: tuple[str, ...], dislikes: tuple[str, ...],
              seen: tuple[str, ...], profile: str, k: int, filters: tuple[str, ...],
              as_json: bool) -> None:
    """Recommend items not yet seen, and say which strategy answered.

    \b
    history  some --like is in the collection: near the weighted mean of the liked items,
             away from the disliked ones (Rocchio)
    profile  no known like: near the --profile text, embedded as a query
    central  neither: the items nearest the collection's centroid (its most typical)
    Ids not in the collection are ignored and reported; liked, disliked and seen items are
    never recommended."""
    from semsearch.core.filters import parse_cli_filters
    from semsearch.services.recommend import RecommendRequest
    from semsearch.services.recommend import recommend as run

    req = RecommendRequest(positive=_rated(likes), negative=_rated(dislikes), seen=seen,
                           profile=profile, k=k, filter=parse_cli_filters(list(filters)))
    with _engine() as engine:
        result = run(engine, collection, req)
    if as_json:
        _echo_json(result.to_dict())
        return
    if result.unknown:
        click.echo(f"warning: not in {collection!r}, ignored: {', '.join(result.unknown)}",
                   err=True)
    click.echo(f"strategy: {result.strategy}")
    _print_hits(result.hits)
