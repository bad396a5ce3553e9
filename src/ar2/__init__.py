"""ar2: train and serve neural search (AR2 adversarial retriever-ranker, BM25, FAISS, evaluation).

``import ar2`` is light: torch, transformers, faiss and bm25s load only when a feature needs them.

Example:
    >>> import ar2
    >>> ar2.__version__
    '0.1.0'
    >>> ar2.Doc("d1", "text").id
    'd1'
"""

from ar2.errors import Ar2Error, DataError
from ar2.types import Doc, Hit, Qrels, Query, Run

__version__ = "0.1.0"

__all__ = ["Ar2Error", "DataError", "Doc", "Hit", "Qrels", "Query", "Run", "__version__"]
