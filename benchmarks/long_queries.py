"""Long queries: ``ar2 eval --systems dense`` against sentence-transformers, same model, same data.

SciFact's claims are short and no long-query BEIR set is offline, so this builds one from
SciFact's abstracts: a known-item task, "which paper is this passage from". Each abstract of at
least ``--start + --length`` tokens gives one query, its tokens ``start .. start + length``
(past the 256 tokens an encoder reads of the document itself, so the query and what is indexed
of its paper do not overlap); the paper is its one relevant document. Then it scores, with the
bundled all-MiniLM-L6-v2:

* ``ar2 eval --systems dense`` (``--src`` picks the source tree, to compare versions);
* sentence-transformers' own ``encode`` (normalised, cosine), ranked exactly and scored with
  ir_measures: the reference.

Run from the repository root:

    .venv/bin/python benchmarks/long_queries.py --out /tmp/long_queries.json
    .venv/bin/python benchmarks/long_queries.py --src /tmp/ar2-old/src --skip-st   # an older tree
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path


def build(data: Path, folder: Path, start: int, length: int) -> dict[str, int]:
    """Write the long-query folder; returns the number of queries and their token lengths."""
    from transformers import AutoTokenizer

    from ar2.encoders.bi_encoder import default_model_path

    tokenizer = AutoTokenizer.from_pretrained(str(default_model_path()))
    docs = [json.loads(x) for x in (data / "corpus.jsonl").read_text().splitlines() if x.strip()]
    queries, lengths = [], []
    for doc in docs:
        ids = tokenizer(doc["text"], add_special_tokens=False, verbose=False)["input_ids"]
        if len(ids) >= start + length:
            text = tokenizer.decode(ids[start : start + length])
            queries.append({"_id": f"q{doc['_id']}", "text": text, "doc": doc["_id"]})
            lengths.append(len(tokenizer(text, verbose=False)["input_ids"]))
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(data / "corpus.jsonl", folder / "corpus.jsonl")
    lines = [json.dumps({"_id": q["_id"], "text": q["text"]}) + "\n" for q in queries]
    (folder / "queries.jsonl").write_text("".join(lines))
    (folder / "qrels").mkdir(exist_ok=True)
    rows = "".join(f"{q['_id']}\t{q['doc']}\t1\n" for q in queries)
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + rows)
    lengths.sort()
    return {"queries": len(queries), "min_tokens": lengths[0], "max_tokens": lengths[-1]}


def ar2_ndcg(folder: Path, src: Path | None, out: Path) -> tuple[float, str, float]:
    """nDCG@10 of ``ar2 eval --systems dense``, its truncation line and seconds taken."""
    env = os.environ | ({"PYTHONPATH": str(src.resolve())} if src else {})
    cmd = [sys.executable, "-m", "ar2.cli", "-q", "eval", str(folder), "--systems", "dense",
           "--measures", "nDCG@10", "--out", str(out)]  # fmt: skip
    shutil.rmtree(out, ignore_errors=True)  # this script's own output of an earlier run
    start = time.time()
    subprocess.run(cmd, env=env, check=True)
    report = json.loads((out / "report.json").read_text())
    protocol = json.loads((out / "protocol.json").read_text())
    return (
        report["dense"]["nDCG@10"],
        protocol.get("truncation", "(not reported)"),
        time.time() - start,
    )


def st_ndcg(folder: Path) -> float:
    """nDCG@10 of sentence-transformers' own encoding of the same model (the reference)."""
    import ir_measures
    import numpy as np
    from sentence_transformers import SentenceTransformer

    from ar2.data.beir import load_qrels
    from ar2.encoders.bi_encoder import default_model_path

    model = SentenceTransformer(str(default_model_path()), device="cpu")
    docs = [json.loads(x) for x in (folder / "corpus.jsonl").read_text().splitlines() if x.strip()]
    queries = [json.loads(x) for x in (folder / "queries.jsonl").read_text().splitlines()]
    d = model.encode([f"{x.get('title', '')} {x['text']}" for x in docs], normalize_embeddings=True)
    q = model.encode([x["text"] for x in queries], normalize_embeddings=True)
    scores = q @ d.T  # (queries, docs)
    top = np.argsort(-scores, axis=1)[:, :100]
    run = [ir_measures.ScoredDoc(qq["_id"], docs[j]["_id"], float(scores[i, j]))
           for i, qq in enumerate(queries) for j in top[i]]  # fmt: skip
    judged = load_qrels(folder / "qrels" / "test.tsv")
    qrels = [ir_measures.Qrel(q, d, g) for q, docs_ in judged.items() for d, g in docs_.items()]
    return float(
        ir_measures.calc_aggregate([ir_measures.nDCG @ 10], qrels, run)[ir_measures.nDCG @ 10]
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=Path("data/scifact"))
    p.add_argument("--folder", type=Path, default=Path("/tmp/scifact-long"))
    p.add_argument("--start", type=int, default=280, help="first token of the passage")
    p.add_argument("--length", type=int, default=320, help="tokens in a passage (a query)")
    p.add_argument("--src", type=Path, help="the src/ folder of the ar2 to run (default: this)")
    p.add_argument("--skip-st", action="store_true", help="skip the sentence-transformers run")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    result: dict[str, object] = {"queries": build(args.data, args.folder, args.start, args.length)}
    ndcg, truncation, seconds = ar2_ndcg(args.folder, args.src, args.folder.with_name("long-eval"))
    result["ar2"] = {"nDCG@10": ndcg, "truncation": truncation, "seconds": round(seconds)}
    if not args.skip_st:
        result["sentence_transformers"] = {"nDCG@10": st_ndcg(args.folder)}
        result["difference"] = ndcg - result["sentence_transformers"]["nDCG@10"]  # type: ignore[index]
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
