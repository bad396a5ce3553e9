"""Probe: weight-space interpolation between the start model and an ``ar2 pretrain``
retriever (WiSE-FT, Wortsman et al. 2022; JaColBERTv2.5 averages checkpoints likewise):
``θ(α) = (1 − α) θ_start + α θ_pretrained``, each ``α`` measured on the training queries
(SciFact has no dev split; pretraining read none of them), then the best ``α`` on them and
the two ends on test.

    .venv/bin/python benchmarks/pretrain_interpolation.py runs/pre42 --alphas 0,0.25,0.5,0.75,1 \\
        --out runs/pre42/interpolation.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ar2._io import atomic_write_json

MEASURE = "nDCG@10"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="an ar2 pretrain output")
    p.add_argument("--alphas", default="0,0.25,0.5,0.75,1")
    p.add_argument("--data", type=Path, default=Path("data/scifact"))
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()

    from ar2.data.beir import load_corpus, load_qrels, load_queries
    from ar2.encoders import BiEncoder
    from ar2.evaluate import compare, per_query
    from ar2.index import FaissIndex
    from ar2.pipeline import DenseRetriever

    corpus = load_corpus(args.data / "corpus.jsonl")
    queries = load_queries(args.data / "queries.jsonl")
    encoder = BiEncoder.load(args.run / "retriever")
    if not encoder.shared:
        p.error(f"{args.run}/retriever has separate towers; this probe mixes one")
    pretrained = {k: v.clone() for k, v in encoder.query_model.state_dict().items()}
    start = BiEncoder.load(None).query_model.state_dict()

    def measure(alpha: float) -> dict[str, dict[str, float]]:
        """``split -> query -> nDCG@10`` of ``θ(alpha)``, one corpus encoding for both."""
        mixed = {k: (1 - alpha) * start[k] + alpha * v if v.is_floating_point() else v
                 for k, v in pretrained.items()}  # fmt: skip
        encoder.query_model.load_state_dict(mixed)  # the towers are shared: the documents too
        index = FaissIndex.build(encoder.encode_docs(corpus), [d.id for d in corpus])
        out = {}
        for split in ("train", "test"):
            qrels = load_qrels(args.data / "qrels" / f"{split}.tsv")
            asked = [q for q in queries if q.id in qrels]
            found = DenseRetriever(encoder, index).retrieve(asked, 100)
            out[split] = per_query(found, qrels, [MEASURE])[MEASURE]
        return out

    alphas = [float(a) for a in args.alphas.split(",")]
    if 0.0 not in alphas or 1.0 not in alphas:
        p.error("--alphas must hold 0 (the start) and 1 (the pretrained retriever)")
    began = time.perf_counter()
    values = {a: measure(a) for a in alphas}
    train = {a: sum(v["train"].values()) / len(v["train"]) for a, v in values.items()}
    best = max(alphas, key=train.__getitem__)  # chosen on the training queries only
    test = {a: values[a]["test"] for a in sorted({0.0, best, 1.0})}  # the rest stay unread
    record: dict = {"run": str(args.run), "train": train,
                    "test": {a: sum(v.values()) / len(v) for a, v in test.items()}}  # fmt: skip
    record["best_on_train"] = best
    [row] = compare({"best": {MEASURE: values[best]["train"]},
                     "start": {MEASURE: values[0.0]["train"]}}, "start", [MEASURE])  # fmt: skip
    record["train_best_vs_start"] = {"diff": row["mean_diff"], "p": row["p_value"]}
    rows = compare({str(a): {MEASURE: v} for a, v in test.items()}, "0.0", [MEASURE])
    record["test_vs_start"] = {r["system"]: {"diff": r["mean_diff"], "p": r["p_value"]}
                               for r in rows}  # fmt: skip
    record["seconds"] = round(time.perf_counter() - began, 1)
    atomic_write_json(args.out, record)
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
