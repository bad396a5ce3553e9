"""The search page in headless Chromium (Debian's ``chromium``, driven by Playwright): type a
query, see results, switch modes, see a clean error; the screenshot is kept as an artifact.

Without Chromium this test is skipped, unless ``AR2_REQUIRE_BROWSER=1`` (set by ``.ci/run``,
which installs it) makes a missing browser a failure.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ar2.serve import SearchService

ARTIFACTS = Path(os.environ.get("AR2_ARTIFACTS", Path(__file__).parent.parent / "test-artifacts"))
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
]


def _chromium() -> str:
    found = os.environ.get("AR2_CHROMIUM") or shutil.which("chromium")
    found = found or shutil.which("chromium-browser")
    if found:
        return found
    if os.environ.get("AR2_REQUIRE_BROWSER") == "1":
        pytest.fail("AR2_REQUIRE_BROWSER=1 but no chromium found. Fix: apt-get install chromium")
    pytest.skip("no chromium on this machine (apt-get install chromium)")


@pytest.fixture(scope="module")
def page(tiny_run: Path) -> Iterator[Any]:
    executable = _chromium()
    try:
        from playwright import sync_api
    except ImportError:  # pragma: no cover - playwright is a dev dependency
        if os.environ.get("AR2_REQUIRE_BROWSER") == "1":
            pytest.fail("AR2_REQUIRE_BROWSER=1 but playwright is missing. Fix: scripts/setup.sh")
        pytest.skip("playwright is not installed")
    from ar2.serve.app import create_app
    from ar2.serve.server import in_background

    with in_background(create_app(SearchService.load(tiny_run))) as url:
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
            try:
                tab = browser.new_page(viewport={"width": 1000, "height": 900})
                tab.set_default_timeout(20_000)
                errors: list[str] = []
                tab.on("pageerror", lambda err: errors.append(str(err)))
                tab.goto(url + "/")
                tab.errors = errors  # type: ignore[attr-defined]
                yield tab
            finally:
                browser.close()


def test_type_a_query_and_see_results(page: Any) -> None:
    page.wait_for_selector("input[name=mode][value=hybrid]")  # modes come from /info
    assert page.locator("#about").inner_text() == "8 documents"
    assert page.is_checked("input[name=mode][value=dense]")
    assert page.is_visible("#rerank")  # the run has a ranker
    page.fill("#q", "what do cats eat")
    page.press("#q", "Enter")
    page.wait_for_selector("li.hit")
    titles = page.locator("li.hit .title").all_inner_texts()
    assert len(titles) == 8  # k 10 of 8 documents
    assert "Cats" in titles
    status = page.locator("#status").inner_text()
    assert "8 hits · dense, top 5 reranked" in status
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "serve-page.png"), full_page=True)
    assert (ARTIFACTS / "serve-page.png").stat().st_size > 10_000
    assert "?q=what%20do%20cats%20eat" in page.url


def test_switch_mode_and_rerank_off(page: Any) -> None:
    page.check("input[name=mode][value=bm25]")
    page.uncheck("#rerank")
    page.fill("#q", "dogs chase balls")
    page.press("#q", "Enter")
    # a locator, not wait_for_function: Playwright evaluates string predicates with eval, which
    # the page's CSP (script-src 'self') refuses, as it should (microsoft/playwright#7395)
    page.locator("#status", has_text="bm25").wait_for()
    assert page.locator("li.hit .title").all_inner_texts()[0] == "Dogs"
    assert "reranked" not in page.locator("#status").inner_text()
    snippet = page.locator("li.hit .snippet").first.inner_text()
    assert snippet == "dogs chase balls in the park"


def test_blank_query_shows_an_error_and_no_script_errors(page: Any) -> None:
    page.fill("#q", "   ")
    page.press("#q", "Enter")
    page.wait_for_selector("#status.error")
    assert page.locator("li.hit").count() == 0
    assert page.errors == []  # type: ignore[attr-defined]
