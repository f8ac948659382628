"""``semsearch adapt``: adapt a collection to its domain from labelled pairs, then re-index,
gate and swap like any model change.

Thin: parse, call ``services.adapt.adapt``, print. Exit 0 when the adapted version serves
(or was built with ``--no-swap``), 1 when the gate kept the old version."""

from __future__ import annotations

import sys
from importlib import util
from pathlib import Path

import click

from semsearch.cli.common import _echo_json, _engine, _progress

MODES = ("hybrid", "dense", "keyword")


@click.command()
@click.option("--collection", "-c", required=True, help="collection name (not a version)")
@click.option("--train", "train", required=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="BEIR folder with labelled queries (qrels/<split>.tsv) for the collection")
@click.option("--split", default="train", show_default=True,
              help="qrels split to learn from")
@click.option("--method", type=click.Choice(["linear", "finetune"]), default="linear",
              show_default=True, help="linear: a query-side adapter on the frozen model "
              "(numpy; no document is re-embedded); finetune: needs torch")
@click.option("--gate", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="BEIR folder the gate evaluates on [default: the --train folder]")
@click.option("--gate-split", default="test", show_default=True,
              help="qrels split the gate evaluates on (never the training split)")
@click.option("--tolerance", type=float, default=0.01, show_default=True,
              help="largest nDCG@10 drop (absolute) the gate accepts, per mode")
@click.option("--gate-modes", default=",".join(MODES), show_default=True)
@click.option("--no-swap", is_flag=True, help="build and gate the adapted version, keep the old")
@click.option("--temperature", type=click.FloatRange(min=1e-4), default=0.05,
              show_default=True, help="softmax temperature of the training loss")
@click.option("--l2", type=click.FloatRange(min=0.0), default=0.01, show_default=True,
              help="pull of the adapter toward the identity (larger: a smaller change)")
@click.option("--max-steps", type=click.IntRange(1, 100_000), default=400, show_default=True)
@click.option("--learning-rate", type=click.FloatRange(min=1e-7), default=0.001,
              show_default=True)
@click.option("--holdout", type=click.FloatRange(0.0, 0.9), default=0.2, show_default=True,
              help="share of the training queries held out for early stopping")
@click.option("--epochs", type=click.IntRange(1, 100), default=1, show_default=True,
              help="finetune: passes over the training pairs")
@click.option("--json", "as_json", is_flag=True)
def adapt(collection: str, train: Path, split: str, method: str, gate: Path | None,
          gate_split: str, tolerance: float, gate_modes: str, no_swap: bool,
          temperature: float, l2: float, max_steps: int, learning_rate: float, holdout: float,
          epochs: int, as_json: bool) -> None:
    """Adapt a collection's queries to its domain from labelled pairs (--train), as a new
    version that must pass the gate on held-out queries before it serves; `semsearch
    rollback` undoes it."""
    from semsearch.core.adapter import AdapterConfig
    from semsearch.core.types import Mode
    from semsearch.services.adapt import adapt as run_adapt
    from semsearch.services.collections import document_count

    modes = [Mode(m.strip()) for m in gate_modes.split(",") if m.strip()]
    config = AdapterConfig(temperature=temperature, l2=l2, max_steps=max_steps,
                           learning_rate=learning_rate, holdout=holdout)
    finetuner, finetune_config = None, None
    if method == "finetune":
        from semsearch.core.adapter import FinetuneConfig
        from semsearch.wiring import make_finetuner

        finetune_config = FinetuneConfig(epochs=epochs, holdout=holdout)
        if util.find_spec("torch") and util.find_spec("sentence_transformers"):
            finetuner = make_finetuner()

    def train_step(done: int, total: int) -> None:
        if not as_json and (done == 1 or done == total or done % 10 == 0):
            click.echo(f"fine-tuning: step {done}/{total}", err=True)

    with _engine() as engine:
        total = document_count(engine, collection)
        with _progress(total, "re-indexing", "doc") as tick:
            report = run_adapt(engine, collection, train, split=split, method=method,
                               gate=gate, gate_split=gate_split, tolerance=tolerance,
                               gate_modes=modes, swap=not no_swap, config=config,
                               on_progress=tick, finetuner=finetuner,
                               finetune_config=finetune_config, on_train_step=train_step)
    rep = report.reindex
    assert rep is not None
    if as_json:
        _echo_json(report.to_dict())
    else:
        t = report.train
        what = "fine-tuned the model" if report.method == "finetune" else \
            "trained a query adapter"
        click.echo(f"{what} ({report.fingerprint}) on {t.pairs} pairs of "
                   f"{t.queries} queries ({t.holdout_queries} held out), {t.documents} "
                   f"documents: held-out nDCG@10 {t.holdout_ndcg_before:.4f} -> "
                   f"{t.holdout_ndcg_after:.4f} at step {t.best_step} of {t.steps}")
        b = rep.build
        click.echo(f"built {rep.version}: {b.documents} documents, {b.chunks} chunks, "
                   f"{b.embedded} embedded, {b.cache_hits} from the cache, {b.seconds:.1f} s")
        if rep.gate is not None:
            click.echo(f"gate on {rep.gate.dataset} split {gate_split!r} (tolerance "
                       f"{rep.gate.tolerance}):")
            for mode, r in rep.gate.modes.items():
                click.echo(f"  {mode:<8} nDCG@10 {r['old_ndcg@10']:.4f} -> "
                           f"{r['new_ndcg@10']:.4f} ({r['delta']:+.4f})")
        click.echo(rep.message)
    if rep.gate is not None and not rep.gate.passed:
        sys.exit(1)
