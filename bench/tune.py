"""Title weighting and tuned fusion on a BEIR dataset (e.g. SciFact), measured on the test
split of a collection already indexed in $SEMSEARCH_HOME:

    semsearch index ../shared/data/scifact -c scifact
    python bench/tune.py ../shared/data/scifact -c scifact --title-weights 1,2,3
    python bench/tune.py ../shared/data/scifact -c scifact --tune   # tune on train, then
                                                                    # test before/after

``--title-weights`` prints keyword and hybrid nDCG@10 on the test split for each weight
(everything else at the collection's defaults). ``--tune`` runs ``services.tune.tune`` on
the train split (storing the winner), then the test split with the defaults before and
after, through the search service with nothing set, as any search would be."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from semsearch.config import Settings
from semsearch.core.metrics import evaluate
from semsearch.core.types import InputType, Mode
from semsearch.runtime.engine import Engine
from semsearch.services import tune as svc
from semsearch.services.search import SearchRequest, search
from semsearch.wiring import open_engine

MEASURES = ("ndcg@10", "recall@100")


def run_split(engine: Engine, collection: str, dataset: Path, split: str, mode: Mode,
              **options: object) -> dict[str, float]:
    queries = engine.corpora.queries(dataset, split)
    qrels = engine.corpora.qrels(dataset, split)
    handle = engine.collection(collection)
    if mode != Mode.KEYWORD:
        handle.embedder.embed(list(queries.values()), InputType.QUERY)
    run: dict[str, dict[str, float]] = {}
    for qid, text in queries.items():
        hits = search(engine, handle, SearchRequest(query=text, mode=mode, k=100,
                                                    **options)).hits  # type: ignore[arg-type]
        run[qid] = {h.doc_id: float(len(hits) - i) for i, h in enumerate(hits)}
    return evaluate(run, qrels, MEASURES)


def title_weights(engine: Engine, collection: str, dataset: Path, split: str,
                  weights: list[float]) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for w in weights:
        for mode in (Mode.KEYWORD, Mode.HYBRID):
            t0 = time.perf_counter()
            m = run_split(engine, collection, dataset, split, mode, title_weight=w)
            rows.append({"title_weight": w, "mode": mode.value,
                         **{k: round(v, 4) for k, v in m.items()},
                         "seconds": round(time.perf_counter() - t0, 1)})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def tune_and_compare(engine: Engine, collection: str, dataset: Path, split: str,
                     max_queries: int | None) -> dict[str, object]:
    before = {m.value: run_split(engine, collection, dataset, split, m)
              for m in (Mode.KEYWORD, Mode.HYBRID)}
    print(json.dumps({"before": before}), flush=True)

    def progress(trial: svc.Trial, best: svc.Trial) -> None:
        print(f"  train nDCG@10 {trial.score:.4f} {trial.defaults.describe()} "
              f"({trial.seconds:.0f} s; best {best.score:.4f})", file=sys.stderr, flush=True)

    report = svc.tune(engine, collection, dataset, split="train", max_queries=max_queries,
                      on_trial=progress)
    after = {m.value: run_split(engine, collection, dataset, split, m)
             for m in (Mode.KEYWORD, Mode.HYBRID)}
    out = {"train": {"queries": report.queries, "baseline": round(report.baseline.score, 4),
                     "best": round(report.best.score, 4),
                     "winner": report.best.defaults.settings(),
                     "stored_revision": None if report.stored is None
                     else report.stored.revision, "trials": len(report.trials),
                     "seconds": round(report.seconds, 1)},
           "test_before": before, "test_after": after}
    print(json.dumps(out), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", type=Path)
    ap.add_argument("-c", "--collection", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--title-weights", help="comma list, e.g. 1,2,3")
    ap.add_argument("--tune", action="store_true")
    ap.add_argument("--current", action="store_true",
                    help="keyword and hybrid nDCG@10 with the collection's defaults")
    ap.add_argument("--max-queries", type=int)
    args = ap.parse_args()
    engine = open_engine(Settings())
    try:
        if args.title_weights:
            title_weights(engine, args.collection, args.dataset, args.split,
                          [float(x) for x in args.title_weights.split(",")])
        if args.current:
            d = svc.search_defaults(engine, args.collection)
            print(json.dumps({"defaults": d.to_dict(), **{
                m.value: {k: round(v, 4) for k, v in run_split(
                    engine, args.collection, args.dataset, args.split, m).items()}
                for m in (Mode.KEYWORD, Mode.HYBRID)}}), flush=True)
        if args.tune:
            tune_and_compare(engine, args.collection, args.dataset, args.split,
                             args.max_queries)
    finally:
        engine.close()


if __name__ == "__main__":
    main()
