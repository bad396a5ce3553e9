"""BM25Index: lexical search with bm25s, its tokenizer settings kept in the manifest."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ar2._io import atomic_dir, atomic_write_json
from ar2._optional import require
from ar2.config import BM25Config
from ar2.index.base import base_manifest, read_ids, read_manifest, write_docs, write_ids
from ar2.types import Doc, Hit


class BM25Index:
    """bm25s over ``title + title_sep + text``, Lucene BM25, English stemmer and stopwords.

    Queries are tokenised with exactly the settings stored at build time, so the query path
    cannot drift from the index. Documents that share no term with the query are not returned.

    Example:
        >>> index = BM25Index.build([Doc("d1", "cats eat fish"), Doc("d2", "dogs chase balls")])
        >>> [h.doc_id for h in index.search(["what do cats eat"], k=5)[0]]
        ['d1']
    """

    def __init__(self, retriever: Any, ids: list[str], config: BM25Config) -> None:
        self.retriever, self.ids, self.config = retriever, ids, config

    @classmethod
    def build(cls, docs: Iterable[Doc], config: BM25Config | None = None) -> BM25Index:
        """Tokenise and index ``docs`` (an iterable: the texts are not kept)."""
        bm25s = require("bm25s")
        config = config or BM25Config()
        ids: list[str] = []

        def texts() -> Iterable[str]:
            for doc in docs:
                ids.append(doc.id)
                yield doc.full_text(config.title_sep)

        tokens = bm25s.tokenize(
            texts(), stopwords=config.stopwords, stemmer=_stemmer(config), show_progress=False
        )
        retriever = bm25s.BM25(k1=config.k1, b=config.b, method=config.method)
        retriever.index(tokens, show_progress=False)
        return cls(retriever, ids, config)

    def search(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
        """Top-``k`` hits for each query string (only documents with a positive score)."""
        bm25s = require("bm25s")
        tokens = bm25s.tokenize(
            list(queries),
            stopwords=self.config.stopwords,
            stemmer=_stemmer(self.config),
            return_ids=False,
            show_progress=False,
        )
        k = min(k, len(self.ids))
        results: list[list[Hit]] = [[] for _ in tokens]
        known = [i for i, t in enumerate(tokens) if any(w in self.retriever.vocab_dict for w in t)]
        if not known or k == 0:
            return results
        rows, scores = self.retriever.retrieve(
            [tokens[i] for i in known], k=k, show_progress=False, n_threads=1
        )
        for i, row, score in zip(known, rows, scores):
            results[i] = [Hit(self.ids[r], float(s)) for r, s in zip(row, score) if s > 0]
        return results

    def save(
        self, path: str | Path, extra: dict[str, Any] | None = None, docs: Iterable[Doc] = ()
    ) -> None:
        """Save the bm25s arrays (npy + json, no pickles), ids and ``manifest.json`` atomically."""
        bm25s = require("bm25s")
        with atomic_dir(path) as tmp:
            self.retriever.save(str(tmp / "bm25s"), show_progress=False)
            write_ids(tmp, self.ids)
            write_docs(tmp, docs)
            manifest = base_manifest("bm25", len(self.ids)) | {
                "bm25": dataclasses.asdict(self.config),
                "tokenizer": {
                    "library": f"bm25s {bm25s.__version__}",
                    "lower": True,
                    "token_pattern": r"(?u)\b\w\w+\b",
                    "stemmer": f"PyStemmer snowball {self.config.stemmer}",
                    "stopwords": self.config.stopwords,
                },
            }
            atomic_write_json(tmp / "manifest.json", manifest | (extra or {}))

    @classmethod
    def load(cls, path: str | Path) -> BM25Index:
        """Load a folder written by :meth:`save`."""
        bm25s = require("bm25s")
        path = Path(path)
        manifest = read_manifest(path, kind="bm25")
        retriever = bm25s.BM25.load(str(path / "bm25s"), allow_pickle=False)
        return cls(retriever, read_ids(path), BM25Config(**manifest["bm25"]))


def _stemmer(config: BM25Config) -> Any:
    if not config.stemmer:
        return None
    return require("Stemmer", extra="bm25").Stemmer(config.stemmer).stemWords
