"""``semsearch tune``: tune a collection's search defaults on labelled queries, show them
with their history, or revert the last tuning. Thin: parse, call ``services.tune``, print."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from semsearch.cli.common import _echo_json, _engine


@click.command()
@click.option("--collection", "-c", required=True, help="collection name")
@click.option("--train", "dataset", type=click.Path(path_type=Path),
              help="BEIR folder with queries.jsonl and qrels/<split>.tsv to tune on")
@click.option("--split", default="train", show_default=True,
              help="qrels split to tune on (never the one you report)")
@click.option("--max-queries", type=click.IntRange(min=1),
              help="tune on a fixed random sample of this many queries (faster)")
@click.option("--passes", type=click.IntRange(1, 5), default=2, show_default=True,
              help="coordinate-search passes at most")
@click.option("--dry-run", is_flag=True, help="report the winner; store nothing")
@click.option("--show", is_flag=True, help="print the defaults in force and their history")
@click.option("--revert", is_flag=True,
              help="undo the last tuning (the first one reverts to the built-in defaults)")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def tune(collection: str, dataset: Path | None, split: str, max_queries: int | None,
         passes: int, dry_run: bool, show: bool, revert: bool, as_json: bool) -> None:
    """Tune hybrid search's defaults (fusion, RRF k, candidates, weights, title weight) on
    the labelled queries of a split, and store the winner as the collection's defaults.

    \b
    Searches that leave an option unset use the collection's defaults; they follow the
    collection name across re-index versions. Each tuning is a revision:
      semsearch tune -c scifact --train ./scifact     tune on qrels/train.tsv, store
      semsearch tune -c scifact --show                 defaults in force, history
      semsearch tune -c scifact --revert               back to the previous revision"""
    from semsearch.errors import InputError
    from semsearch.services import tune as svc

    if sum((dataset is not None, show, revert)) != 1:
        raise InputError("give exactly one of --train FOLDER, --show or --revert")
    with _engine() as engine:
        if show:
            _print_history(svc.defaults_history(engine, collection).to_dict(), as_json)
            return
        if revert:
            undone, now = svc.revert_defaults(engine, collection)
            if as_json:
                _echo_json({"collection": svc.collection_key(collection),
                            "reverted": undone.revision, "current": now.to_dict()})
                return
            where = f"revision {now.revision}" if now.revision else "the built-in defaults"
            click.echo(f"reverted revision {undone.revision} of {collection!r}; now in force: "
                       f"{where}: {now.describe()}")
            return
        assert dataset is not None

        def progress(trial: svc.Trial, best: svc.Trial) -> None:
            if not as_json:
                click.echo(f"  nDCG@10 {trial.score:.4f}  {trial.defaults.describe()}  "
                           f"({trial.seconds:.1f} s; best {best.score:.4f})", err=True)

        if not as_json:
            click.echo(f"tuning {collection!r} on {dataset} split {split!r} ...", err=True)
        report = svc.tune(engine, collection, dataset, split=split, max_queries=max_queries,
                          passes=passes, store=not dry_run, on_trial=progress)
    if as_json:
        _echo_json(report.to_dict())
        return
    b, w = report.baseline, report.best
    click.echo(f"{report.queries} queries of split {report.split!r}, {len(report.trials)} "
               f"settings tried, {report.seconds:.0f} s")
    click.echo(f"current defaults: nDCG@10 {b.score:.4f}  {b.defaults.describe()}")
    click.echo(f"best:             nDCG@10 {w.score:.4f}  {w.defaults.describe()} "
               f"({w.score - b.score:+.4f} on train)")
    if report.stored is not None:
        click.echo(f"stored as revision {report.stored.revision} of {report.collection!r}'s "
                   f"search defaults (undo: semsearch tune -c {report.collection} --revert)")
    elif not report.improved:
        click.echo("nothing beat the current defaults on train; they stay")
    else:
        click.echo("dry run: nothing stored")


def _print_history(history: dict[str, Any], as_json: bool) -> None:
    if as_json:
        _echo_json(history)
        return
    cur = history["current"]
    where = f"revision {cur['revision']}" if cur["revision"] else "built-in"
    click.echo(f"{history['collection']}: {where} defaults in force: " + _settings(cur))
    click.echo(f"built-in: {_settings(history['builtin'])}")
    if not history["history"]:
        click.echo("never tuned")
    for r in history["history"]:
        note = r["note"]
        score = f", train nDCG@10 {note['ndcg@10']:.4f} (was {note['baseline_ndcg@10']:.4f})" \
            if "ndcg@10" in note and "baseline_ndcg@10" in note else ""
        state = "live" if r["live"] else (f"reverted {r['reverted_at']}" if r["reverted_at"]
                                          else "superseded")
        click.echo(f"  r{r['revision']} {r['created_at']} [{state}] {_settings(r['settings'])}"
                   f"{score}")


def _settings(s: dict[str, Any]) -> str:
    w = s.get("weights") or {"dense": 1.0, "keyword": 1.0}
    tw = s.get("title_weight")
    return (f"fusion={s['fusion']} rrf_k={s['rrf_k']} candidates={s['candidates']} "
            f"weights=dense:{w['dense']:g},keyword:{w['keyword']:g} "
            f"title_weight={1.0 if tw is None else tw:g}")
