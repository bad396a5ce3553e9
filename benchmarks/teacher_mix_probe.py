"""Probe: does any per-query mix of an ADORE student, the run's ranker and BM25 rerank the
student's own top K better than the student alone? Every weighting on the 0.1 grid
(``ar2.train.teacher.grid``), min-max and z-score, on the run's dev split and on test; prints
the student, the best mix on dev, and three fixed mixes. Run as it was on 2026-12-03 (~10
minutes on 2 cores beside other work):

    .venv/bin/python benchmarks/teacher_mix_probe.py runs/q42 runs/adore42 20
"""

import json
import sys
import time
from pathlib import Path

import numpy as np

from ar2.data.beir import load_corpus, load_queries
from ar2.encoders import BiEncoder, CrossEncoder
from ar2.evaluate import evaluate
from ar2.fusion import fused_run, mix
from ar2.index import BM25Index, FaissIndex
from ar2.train.derived import run_splits
from ar2.train.teacher import grid


def main() -> None:
    run, student_dir, k = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    data = Path("data/scifact")
    corpus = load_corpus(data / "corpus.jsonl")
    docs = {d.id: d for d in corpus}
    queries = {q.id: q for q in load_queries(data / "queries.jsonl")}
    student = BiEncoder.load(student_dir / "retriever")
    index = FaissIndex.load(run / "index")
    ranker = CrossEncoder.load(run / "ranker")
    bm25 = BM25Index.build(corpus)
    out = {}
    for split, qrels in run_splits(run, data).items():
        asked = [queries[q] for q in qrels if q in queries]
        hits = index.search(student.encode_queries(asked), k)
        t = time.time()
        parts = {}
        for q, hs in zip(asked, hits):
            parts[q.id] = (
                hs,
                {
                    "retriever": np.array([h.score for h in hs]),
                    "bm25": bm25.score(q.text, [h.doc_id for h in hs]),
                    "ranker": np.asarray(
                        ranker.score(q.text, [docs[h.doc_id] for h in hs]), dtype=np.float64
                    ),
                },
            )
        print(split, "scored", round(time.time() - t), "s", flush=True)
        base = {qid: hs for qid, (hs, _) in parts.items()}

        def value(w, norm, parts=parts, base=base, qrels=qrels):
            scored = {qid: (hs, mix(p, w, norm, 1.0)) for qid, (hs, p) in parts.items()}
            return evaluate(fused_run(scored, base, 1.0), qrels, ["nDCG@10"])["nDCG@10"]

        out[split] = {
            norm: {json.dumps(w, sort_keys=True): value(w, norm) for w in grid()}
            for norm in ("minmax", "zscore")
        }
    for norm in ("minmax", "zscore"):
        dev = out["dev"][norm]
        best = max(dev, key=dev.get)
        alone = json.dumps({"bm25": 0.0, "ranker": 0.0, "retriever": 1.0}, sort_keys=True)
        print(norm, f"student dev {dev[alone]:.4f} test {out['test'][norm][alone]:.4f}")
        print(norm, "best-on-dev", best, f"dev {dev[best]:.4f} test {out['test'][norm][best]:.4f}")
        for w in (
            '{"bm25": 0.3, "ranker": 0.0, "retriever": 0.7}',
            '{"bm25": 0.0, "ranker": 0.3, "retriever": 0.7}',
            '{"bm25": 0.2, "ranker": 0.2, "retriever": 0.6}',
        ):
            print(norm, w, f"dev {dev[w]:.4f} test {out['test'][norm][w]:.4f}")


if __name__ == "__main__":
    main()
