"""Data loading: BEIR folders, MS MARCO-style TSV files, TREC qrels and runs.

Every loader returns the shared types of :mod:`ar2.types` (ids are always ``str``) and reports
each defect of an input file as ``file:line: problem. Fix: ...`` through
:class:`ar2.errors.DataError`, or through one :class:`ar2.errors.DataWarning` per file when it is
harmless. Ids are stripped of surrounding whitespace and may not hold whitespace, line breaks,
control characters or lone surrogates (TREC runs and index ``ids.txt`` files cannot carry them);
relevance grades are whole numbers from :data:`MIN_GRADE` to :data:`MAX_GRADE`.

Example:
    >>> import pathlib, tempfile
    >>> from ar2.data import read_run, write_run
    >>> from ar2.types import Hit
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "run.txt"
    >>> write_run({"q1": [Hit("d1", 1.0)]}, p)
    >>> read_run(p)
    {'q1': [Hit(doc_id='d1', score=1.0)]}
"""

from ar2.data._lines import MAX_GRADE, MIN_GRADE
from ar2.data.beir import (
    QRELS_HEADER,
    available_splits,
    iter_corpus,
    load_beir,
    load_corpus,
    load_qrels,
    load_queries,
)
from ar2.data.trec import (
    iter_collection_tsv,
    load_collection_tsv,
    load_msmarco,
    load_queries_tsv,
    load_trec_qrels,
    read_run,
    write_run,
)

__all__ = [
    "MAX_GRADE",
    "MIN_GRADE",
    "QRELS_HEADER",
    "available_splits",
    "iter_collection_tsv",
    "iter_corpus",
    "load_beir",
    "load_collection_tsv",
    "load_corpus",
    "load_msmarco",
    "load_qrels",
    "load_queries",
    "load_queries_tsv",
    "load_trec_qrels",
    "read_run",
    "write_run",
]
