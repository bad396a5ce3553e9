"""Serve a run or an index over HTTP: :class:`SearchService` answers, :func:`create_app` wraps
it in a FastAPI app (``ar2 serve`` runs that app with uvicorn).

FastAPI is imported only when :func:`create_app` is first used, so the service works without
the ``serve`` extra.
"""

from __future__ import annotations

from typing import Any

from ar2.serve.service import MODES, Limits, SearchService
from ar2.serve.snippet import snippet

__all__ = ["MODES", "Limits", "SearchService", "create_app", "snippet"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from ar2.serve.app import create_app

        return create_app
    raise AttributeError(f"module 'ar2.serve' has no attribute {name!r}")
