"""Session set-up shared by the tests and the doctests of ``src/ar2``."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session", autouse=True)
def _temp_files_under_basetemp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Doctests make folders with ``tempfile.mkdtemp()``: keep them in pytest's basetemp,
    which pytest prunes, instead of leaving them in /tmp. Exported ONNX graphs go there too
    (``AR2_CACHE``), not to the user's cache."""
    tempfile.tempdir = str(tmp_path_factory.mktemp("tempfile"))
    cache = os.environ.get("AR2_CACHE")
    os.environ["AR2_CACHE"] = str(tmp_path_factory.mktemp("ar2-cache"))  # ONNX graphs
    yield
    tempfile.tempdir = None
    if cache is None:
        os.environ.pop("AR2_CACHE", None)
    else:
        os.environ["AR2_CACHE"] = cache
