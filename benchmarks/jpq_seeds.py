"""``ar2 jpq`` (or ``ar2 repconc``) over several seeds: each system's mean ± sd, and paired
t-tests over every (seed, query) pair (the protocol of ``benchmarks/ablations.py``) and over
the queries, each the mean of its seeds (the stricter one here: two of the three systems are
the same in every seed, so the pooled test counts their queries three times).

Each folder is an ``ar2 jpq`` output of one run, with its own ``seed`` (the batches and
the dropout). The three systems of its report are evaluated again per query on the split:
``uncompressed`` (the run's retriever and flat index), ``opq-pq`` (FAISS's post-hoc OPQ + PQ,
the same in every seed: FAISS seeds its clustering itself) and ``jpq``. An ``ar2 repconc``
output adds ``repconc`` (its ``jpq`` is JPQ's stage over FAISS's codes, in ``jpq/``).

With ``--ranker`` (test split only) the run's ranker also reranks each retriever's top
``rerank_k`` (the run's) fused with it, ``(1 - w) z(G) + w z(D)``: ``uncompressed+d`` with the
ranker's saved ``w`` (the run's ``ar2-g+d``), and ``jpq+d`` with ``w`` tuned for the JPQ
retriever on the run's dev split, by the run's ``eval_measure`` (with ``tune_fusion``; else
the saved ``w``).

    .venv/bin/python benchmarks/jpq_seeds.py runs/jpq15/m48 runs/jpq15/m48-seed43 \\
        runs/jpq15/m48-seed44 --split test --out jpq_seeds.json [--ranker]
    .venv/bin/python benchmarks/jpq_seeds.py runs/repconc42 runs/repconc43 runs/repconc44
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

MEASURES = ["nDCG@10", "R@100"]
PAIRS = (("jpq", "uncompressed"), ("opq-pq", "uncompressed"), ("jpq", "opq-pq"))
REPCONC_PAIRS = (("repconc", "jpq"), ("repconc", "opq-pq"), ("repconc", "uncompressed"))
RANKER_PAIRS = (("jpq+d", "uncompressed+d"), ("jpq+d", "jpq"), ("uncompressed+d", "uncompressed"))


def per_seed(
    folder: Path, split: str, ranker: bool = False, cache: dict | None = None
) -> dict[str, dict[str, dict[str, float]]]:
    """``system -> measure -> query -> value`` for one ``ar2 jpq`` or ``ar2 repconc`` output
    (``cache`` keeps the systems that are the same in every seed)."""
    from ar2.data.beir import load_qrels, load_queries
    from ar2.encoders import BiEncoder
    from ar2.evaluate import per_query
    from ar2.index import FaissIndex
    from ar2.pipeline import DenseRetriever
    from ar2.train.data import dev_split_qrels

    repconc = (folder / "repconc.json").is_file()
    record = json.loads((folder / ("repconc.json" if repconc else "jpq.json")).read_text())
    run = Path(record["run"])
    data = Path(json.loads((run / "config.json").read_text())["data"]["path"])
    dev = dev_split_qrels(data, json.loads((run / "dev_split.json").read_text()))
    qrels = dev if split == "dev" else load_qrels(data / "qrels" / f"{split}.tsv")
    queries = load_queries(data / "queries.jsonl")
    systems = {
        "uncompressed": (run / "retriever", run / "index"),
        "opq-pq": (run / "retriever", folder / "posthoc"),
        "jpq": (folder / "jpq" / "retriever", folder / "jpq" / "index") if repconc
        else (folder / "retriever", folder / "index"),
    }  # fmt: skip
    if repconc:
        systems["repconc"] = (folder / "retriever", folder / "index")
    values, cache = {}, {} if cache is None else cache
    for name, (model, index) in systems.items():
        retriever = DenseRetriever(BiEncoder.load(model), FaissIndex.load(index))
        asked = [q for q in queries if q.id in qrels]
        values[name] = per_query(retriever.retrieve(asked, 100), qrels, MEASURES)
        key = (name, str(run))  # the uncompressed system is the same for every seed of a run
        if ranker and name not in ("opq-pq", "repconc") and (name == "jpq" or key not in cache):
            cache[key] = _fused(retriever, run, data, (queries, dev, qrels), name == "jpq")
        if ranker and name not in ("opq-pq", "repconc"):
            weight, fused = cache[key]
            print(f"  {folder} {name}+d: fusion weight {weight}")
            values[f"{name}+d"] = fused
    return values


def _fused(retriever: Any, run: Path, data: Path, sets: tuple, tune: bool) -> tuple[float, dict]:
    """The fusion weight (``tune``: tuned on dev for ``retriever`` as ``ar2 train`` tunes it;
    else the ranker's saved one) and the per-query values of ``retriever``'s run reranked by
    ``run``'s ranker with it (``sets``: all queries, dev qrels, test qrels)."""
    from ar2.data.beir import load_corpus
    from ar2.encoders import CrossEncoder
    from ar2.evaluate import per_query
    from ar2.fusion import fused_run, tune_weight
    from ar2.train.rounds import score_heads
    from ar2.train.run_config import read_run_config

    queries, dev, qrels = sets
    config = read_run_config(run / "config.json")
    ranker, k = CrossEncoder.load(run / "ranker"), config["rerank_k"]
    docs = {d.id: d for d in load_corpus(data / "corpus.jsonl")}
    weight = ranker.config.fusion_weight
    if tune and config["tune_fusion"]:
        asked = [q for q in queries if q.id in dev]
        found = retriever.retrieve(asked, 100)
        scored = score_heads(found, asked, ranker, docs, k, "dev")
        weight, _ = tune_weight(scored, found, dev, config["eval_measure"])
    asked = [q for q in queries if q.id in qrels]
    found = retriever.retrieve(asked, 100)
    fused = fused_run(score_heads(found, asked, ranker, docs, k, "test"), found, weight)
    return weight, per_query(fused, qrels, MEASURES)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "folders", nargs="+", type=Path, help="ar2 jpq (or repconc) outputs, one per seed"
    )
    p.add_argument("--split", default="test")
    p.add_argument("--out", type=Path)
    p.add_argument("--ranker", action="store_true", help="add uncompressed+d and jpq+d")
    args = p.parse_args()
    if args.ranker and args.split != "test":
        p.error("--ranker tunes the fusion weight on the run's dev split: use --split test")

    from ar2.evaluate import compare

    cache: dict = {}
    seeds = {str(f): per_seed(f, args.split, args.ranker, cache) for f in args.folders}
    names = list(next(iter(seeds.values())))
    pairs = PAIRS + (RANKER_PAIRS if args.ranker else ())
    pairs += REPCONC_PAIRS if "repconc" in names else ()
    result: dict = {"split": args.split, "folders": list(seeds), "systems": {}, "tests": {}}
    for name in names:
        result["systems"][name] = {}
        for m in MEASURES:
            means = [statistics.fmean(v[name][m].values()) for v in seeds.values()]
            sd = statistics.stdev(means) if len(means) > 1 else 0.0
            result["systems"][name][m] = {"mean": statistics.fmean(means), "sd": sd,
                                          "per_seed": means}  # fmt: skip
    pooled = {
        name: {m: {f"{s}/{q}": x for s, v in seeds.items() for q, x in v[name][m].items()}
               for m in MEASURES}
        for name in names
    }  # fmt: skip
    averaged = {  # each query's mean over the seeds: a test over the queries themselves
        name: {m: {q: statistics.fmean(v[name][m][q] for v in seeds.values())
                   for q in next(iter(seeds.values()))[name][m]} for m in MEASURES}
        for name in names
    }  # fmt: skip
    result["tests_over_query_means"] = {}
    for key, values in (("tests", pooled), ("tests_over_query_means", averaged)):
        for a, b in pairs:
            rows = compare({a: values[a], b: values[b]}, b, MEASURES)
            result[key][f"{a} - {b}"] = {r["measure"]: {"diff": r["mean_diff"],
                                         "p": r["p_value"]} for r in rows}  # fmt: skip
    print(f"{args.split}, {len(seeds)} seeds")
    for name, ms in result["systems"].items():
        print(f"  {name:13}" + "  ".join(f"{m} {v['mean']:.4f} ± {v['sd']:.4f}"
                                          for m, v in ms.items()))  # fmt: skip
    for key, what in (
        ("tests", "paired over the (seed, query) pairs"),
        ("tests_over_query_means", "paired over the queries, each its seeds' mean"),
    ):
        print(f"  {what}:")
        for pair, ms in result[key].items():
            print(f"    {pair:25}" + "  ".join(f"{m} {v['diff']:+.4f} (p = {v['p']:.2g})"
                                              for m, v in ms.items()))  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
