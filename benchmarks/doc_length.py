"""Test nDCG@10 and R@100 of one retriever indexed at several document lengths.

Not a test. Shows that a retriever trained on short (128-token) documents can index longer ones.
Usage:

    .venv/bin/python benchmarks/doc_length.py RUN_DIR/g0/retriever --lengths 128,256
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ar2.data.beir import load_beir
from ar2.encoders import BiEncoder
from ar2.evaluate import evaluate
from ar2.index import FaissIndex
from ar2.pipeline import DenseRetriever


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", type=Path)
    p.add_argument("--data", type=Path, default=Path("data/scifact"))
    p.add_argument("--lengths", default="128,256")
    args = p.parse_args()
    corpus, test, qrels = load_beir(args.data, "test")
    for length in map(int, args.lengths.split(",")):
        encoder = BiEncoder.load(args.model, doc_max_length=length)
        index = FaissIndex.build(encoder.encode_docs(corpus), [d.id for d in corpus])
        run = DenseRetriever(encoder, index).retrieve(test, 100)
        print(length, evaluate(run, qrels, ["nDCG@10", "R@100"]), flush=True)


if __name__ == "__main__":
    main()
