"""Session set-up shared by the tests and the doctests of ``src/ar2``."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session", autouse=True)
def _temp_files_under_basetemp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Doctests make folders with ``tempfile.mkdtemp()``: keep them in pytest's basetemp,
    which pytest prunes, instead of leaving them in /tmp."""
    tempfile.tempdir = str(tmp_path_factory.mktemp("tempfile"))
    yield
    tempfile.tempdir = None
