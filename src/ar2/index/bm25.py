"""BM25Index: lexical search with bm25s, its tokenizer settings kept in the manifest."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ar2._io import atomic_dir, atomic_write_json
from ar2._optional import require
from ar2.config import BM25Config
from ar2.errors import Ar2Error
from ar2.index.base import (
    MANIFEST,
    REBUILD_FIX,
    base_manifest,
    read_ids,
    read_manifest,
    write_docs,
    write_ids,
)
from ar2.types import Doc, Hit

ARRAYS_DIR = "bm25s"
"""The folder of the bm25s arrays (npy + json) inside an index folder."""


def _bm25s() -> Any:
    """bm25s, with JAX kept off the GPU. Where jax is installed, importing bm25s runs a JAX
    top-k (``bm25s.selection``), and JAX's GPU backend then takes 75% of the GPU's memory
    (XLA's preallocation): on an H200 that left torch 62 MiB, and training ran out of memory.
    bm25s needs JAX only for that top-k, so JAX runs on the CPU unless the user chose its
    platforms (``JAX_PLATFORMS``, read when jax is first imported)."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    return require("bm25s")


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
        self._rows = {doc_id: row for row, doc_id in enumerate(ids)}

    @classmethod
    def build(
        cls, docs: Iterable[Doc], config: BM25Config | None = None, source: str = "the corpus"
    ) -> BM25Index:
        """Tokenise and index ``docs`` (an iterable: the texts are not kept); ``source`` names
        where they come from in errors.

        Raises:
            Ar2Error: No documents, or not one word left to index in any of them (all empty,
                or only stopwords and one-letter words).

        Example:
            >>> BM25Index.build([Doc("d1", "the of and"), Doc("d2", "a b c")])
            Traceback (most recent call last):
            ar2.errors.Ar2Error: the corpus: no word to index in any of the 2 documents (...)
        """
        bm25s = _bm25s()
        config = config or BM25Config()
        ids: list[str] = []

        def texts() -> Iterable[str]:
            for doc in docs:
                ids.append(doc.id)
                yield doc.full_text(config.title_sep)

        tokens = bm25s.tokenize(
            texts(), stopwords=config.stopwords, stemmer=_stemmer(config), show_progress=False
        )
        if not tokens.vocab:  # bm25s itself fails on it with "max() arg is an empty sequence"
            raise Ar2Error(f"{source}: {_nothing_to_index(len(ids))}")
        retriever = bm25s.BM25(k1=config.k1, b=config.b, method=config.method)
        retriever.index(tokens, show_progress=False)
        return cls(retriever, ids, config)

    def _tokens(self, queries: Sequence[str]) -> list[list[str]]:
        """Query strings tokenised as the documents were at build time."""
        bm25s = _bm25s()
        return bm25s.tokenize(
            list(queries),
            stopwords=self.config.stopwords,
            stemmer=_stemmer(self.config),
            return_ids=False,
            show_progress=False,
        )

    def score(self, query: str, doc_ids: Sequence[str]) -> np.ndarray:
        """The BM25 score of ``query`` for each of ``doc_ids`` (0 where no term is shared), as
        :meth:`search` would rank them; an id not in the index raises ``KeyError``.

        Example:
            >>> index = BM25Index.build([Doc("d1", "cats eat fish"), Doc("d2", "dogs chase")])
            >>> [float(s) > 0 for s in index.score("what do cats eat", ["d2", "d1"])]
            [False, True]
        """
        vocab = getattr(self.retriever, "vocab_dict", None) or {}
        words = [w for w in self._tokens([query])[0] if w in vocab]
        rows = [self._rows[d] for d in doc_ids]
        if not words:
            return np.zeros(len(rows))
        return np.asarray(self.retriever.get_scores(words), dtype=np.float64)[rows]

    def search(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
        """Top-``k`` hits for each query string (only documents with a positive score)."""
        tokens = self._tokens(queries)
        k = min(k, len(self.ids))
        results: list[list[Hit]] = [[] for _ in tokens]
        vocab = getattr(self.retriever, "vocab_dict", None) or {}  # none: nothing indexed
        known = [i for i, t in enumerate(tokens) if any(w in vocab for w in t)]
        if not known or k == 0:
            return results
        rows, scores = self.retriever.retrieve(
            [tokens[i] for i in known], k=k, show_progress=False, n_threads=1
        )
        for i, row, score in zip(known, rows, scores):
            results[i] = [Hit(self.ids[r], float(s)) for r, s in zip(row, score) if s > 0]
        return results

    def save(
        self,
        path: str | Path,
        extra: dict[str, Any] | None = None,
        docs: Iterable[Doc] = (),
        overwrite: bool = False,
    ) -> None:
        """Save the bm25s arrays (npy + json, no pickles), ids and ``manifest.json`` atomically;
        a folder ar2 did not write is replaced only with ``overwrite``."""
        bm25s = _bm25s()
        with atomic_dir(path, overwrite) as tmp:
            self.retriever.save(str(tmp / ARRAYS_DIR), show_progress=False)
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
        """Load a folder written by :meth:`save`.

        Raises:
            Ar2Error: A missing or corrupt manifest, ``ids.txt`` or ``bm25s/`` array, or ones
                that disagree on the number of documents.
        """
        path = Path(path)
        manifest = read_manifest(path, kind="bm25")
        ids = read_ids(path)
        try:
            config = BM25Config(**manifest["bm25"])
        except (KeyError, TypeError) as e:
            problem = f'no valid "bm25" settings ({type(e).__name__}: {e})'
            raise Ar2Error(f"{path / MANIFEST}: {problem}. {REBUILD_FIX}") from None
        return cls(_load_retriever(path / ARRAYS_DIR, len(ids)), ids, config)


def _load_retriever(folder: Path, count: int) -> Any:
    """The bm25s arrays in ``folder``, checked to hold ``count`` documents."""
    bm25s = _bm25s()
    try:
        retriever = bm25s.BM25.load(str(folder), allow_pickle=False)
        problem = _arrays_problem(retriever.scores, retriever.vocab_dict, count)
    except (OSError, EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
        lines = str(e).strip().splitlines() or [""]
        problem = f"{type(e).__name__}: {lines[0][:200]}"
    if problem:
        raise Ar2Error(f"{folder}: missing or corrupt BM25 arrays ({problem}). {REBUILD_FIX}")
    return retriever


def _arrays_problem(scores: dict[str, Any], vocab: dict[str, int], count: int) -> str:
    """What is wrong with loaded bm25s arrays (sizes only: no pass over the data), or ``""``."""
    data, indices, indptr = scores["data"], scores["indices"], scores["indptr"]
    if scores["num_docs"] != count:
        return f"{scores['num_docs']} documents, but ids.txt has {count}"
    # one pointer per term plus one, the "" term bm25s adds after indexing aside
    if any(a.ndim != 1 for a in (data, indices, indptr)) or len(indptr) - len(vocab) not in (0, 1):
        return f"{len(vocab)} terms, but index pointers of shape {indptr.shape}"
    if not len(data) == len(indices) == int(indptr[-1]):
        return f"{len(data)} scores, {len(indices)} rows and {int(indptr[-1])} entries"
    return ""


def _nothing_to_index(count: int) -> str:
    if not count:
        return "no documents to index. Fix: give a corpus with at least one document"
    return (
        f"no word to index in any of the {count} documents (each is empty or holds only "
        "stopwords and one-letter words). Fix: check the corpus holds its text under "
        '"title" and "text", or index the stopwords too (BM25Config(stopwords=None))'
    )


def _stemmer(config: BM25Config) -> Any:
    if not config.stemmer:
        return None
    return require("Stemmer", extra="bm25").Stemmer(config.stemmer).stemWords
