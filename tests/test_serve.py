"""The search service and its HTTP app through FastAPI's test client: answers equal the
in-process pipeline, every bad input gets a clean 4xx, nothing leaks internals."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from ar2.errors import Ar2Error
from ar2.serve import Limits, SearchService, snippet
from ar2.types import Query

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from ar2.serve.app import create_app  # noqa: E402
from ar2.serve.security import BAD_HOST, DOCS_CSP, PAGE_CSP, parse_allowed_hosts  # noqa: E402

LOCAL = "http://localhost"  # TestClient's default Host, "testserver", is not a loopback name


@pytest.fixture(scope="module")
def service(tiny_run: Path) -> SearchService:
    return SearchService.load(tiny_run)


@pytest.fixture(scope="module")
def client(service: SearchService) -> TestClient:
    with TestClient(
        create_app(service), base_url=LOCAL
    ) as c:  # runs the lifespan, as a server would
        yield c


def _pipeline_hits(service: SearchService, query: str, k: int, mode: str, rerank_k: int) -> list:
    run = service.search([Query("q", query)], k, mode, rerank_k)
    return [[h.doc_id, pytest.approx(h.score, rel=1e-5)] for h in run["q"]]


# ---------------------------------------------------------------- the service


def test_a_run_serves_every_mode_and_its_ranker(service: SearchService, tiny_run: Path) -> None:
    assert service.modes == ("dense", "bm25", "hybrid")
    assert service.has_ranker and service.default_rerank_k == 5  # from the run's config.json
    assert len(service.docs) == 8
    info = service.info()
    assert info["source"] == {"kind": "run", "path": str(tiny_run.resolve())}
    assert info["manifests"]["index"]["kind"] == "dense"
    assert info["manifests"]["retriever"]["kind"] == "bi_encoder"
    assert info["manifests"]["ranker"]["kind"] == "cross_encoder"
    assert info["training"]["config"]["rerank_k"] == 5
    assert info["training"]["results"] == {"ar2-g": {"nDCG@10": 0.5}}
    assert {"torch", "faiss-cpu", "fastapi"} <= set(info["versions"])


def test_the_service_equals_the_pipelines_it_is_made_of(service: SearchService, tiny_run: Path):
    from ar2.encoders import CrossEncoder
    from ar2.index import BM25Index
    from ar2.index.base import iter_docs
    from ar2.pipeline import (
        BM25Retriever,
        CrossEncoderRanker,
        HybridRetriever,
        SearchPipeline,
    )
    from ar2.retrievers import dense_from_folder

    docs = list(iter_docs(tiny_run / "index"))
    dense = dense_from_folder(tiny_run / "index")
    bm25 = BM25Retriever(BM25Index.build(docs))
    ranker = CrossEncoderRanker(CrossEncoder.load(tiny_run / "ranker"), {d.id: d for d in docs})
    queries = [Query("a", "what do cats eat"), Query("b", "heart risk in mice")]
    expected = {
        ("dense", 0): SearchPipeline(dense).run(queries, 4),
        ("bm25", 0): SearchPipeline(bm25).run(queries, 4),
        ("hybrid", 0): SearchPipeline(HybridRetriever([bm25, dense])).run(queries, 4),
        ("dense", 5): SearchPipeline(dense, ranker, 5).run(queries, 4),
        ("hybrid", 3): SearchPipeline(HybridRetriever([bm25, dense]), ranker, 3).run(queries, 4),
    }
    for (mode, rerank_k), run in expected.items():
        got = service.search(queries, 4, mode, rerank_k)
        for q in queries:
            assert [h.doc_id for h in got[q.id]] == [h.doc_id for h in run[q.id]], (mode, q)
            assert [h.score for h in got[q.id]] == pytest.approx([h.score for h in run[q.id]])
    default = service.search(queries, 4)  # dense, reranking the run's top 5
    assert default == service.search(queries, 4, "dense", 5)


def test_service_refuses_what_it_cannot_do(service: SearchService, tiny_run: Path) -> None:
    with pytest.raises(Ar2Error, match="mode 'sparse' is not served"):
        service.search([Query("q", "cats")], 3, "sparse")
    bm25_only = SearchService.load(tiny_run / "index", retriever=tiny_run / "retriever")
    with pytest.raises(Ar2Error, match="no ranker"):
        bm25_only.search([Query("q", "cats")], 3, "dense", 5)


def test_load_errors_name_the_folder_and_the_fix(tiny_run: Path, tmp_path: Path) -> None:
    import shutil

    with pytest.raises(Ar2Error, match="no such folder"):
        SearchService.load(tmp_path / "missing")
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.json").write_text("{}")
    with pytest.raises(Ar2Error, match="no final retriever.*--resume"):
        SearchService.load(unfinished)
    moved = Path(shutil.copytree(tiny_run / "index", tmp_path / "index"))
    manifest = json.loads((moved / "manifest.json").read_text())
    manifest["encoder"]["source"] = str(tmp_path / "gone")
    (moved / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(Ar2Error, match="does not exist.*--retriever"):
        SearchService.load(moved)
    assert SearchService.load(moved, retriever=tiny_run / "retriever").modes[0] == "dense"
    (moved / "manifest.json").unlink()
    with pytest.raises(Ar2Error, match="not an ar2 index"):
        SearchService.load(moved)


def test_a_ranker_asked_for_must_exist_and_options_apply_to_runs(
    tiny_run: Path, tmp_path: Path
) -> None:
    with pytest.raises(Ar2Error, match="typo"):
        SearchService.load(tiny_run, reranker=tmp_path / "typo")
    service = SearchService.load(tiny_run, retriever=tiny_run / "retriever", rerank_k=2)
    assert service.default_rerank_k == 2
    assert service.info()["manifests"]["retriever"]["kind"] == "bi_encoder"


def test_an_index_folder_serves_with_an_added_ranker(tiny_run: Path) -> None:
    service = SearchService.load(tiny_run / "index", reranker=tiny_run / "ranker", rerank_k=3)
    assert service.modes == ("dense", "bm25", "hybrid")
    assert service.default_rerank_k == 3
    assert service.info()["source"]["kind"] == "index"


def test_a_compressed_index_with_its_vectors_serves_the_flat_answers(
    toy_beir: Path, tiny_run: Path, tmp_path: Path
) -> None:
    """An ``ar2 index --factory SQ8`` folder (codes + ``vectors.npy``) served: its hits re-scored
    exactly, the same as the flat index of the same encoder (8 documents, all re-scored)."""
    from ar2.cli import main

    common = [
        "-q",
        "index",
        str(toy_beir),
        "--kind",
        "dense",
        "--model",
        str(tiny_run / "retriever"),
    ]
    assert main([*common, "--out", str(tmp_path / "flat")]) == 0
    assert main([*common, "--factory", "SQ8", "--out", str(tmp_path / "sq8")]) == 0
    flat, sq8 = (SearchService.load(tmp_path / name) for name in ("flat", "sq8"))
    assert sq8.info()["manifests"]["index"]["refine"] == 10
    queries = [Query("q1", "what do cats eat"), Query("q2", "dogs chase balls")]
    want, got = flat.search(queries, 5, "dense"), sq8.search(queries, 5, "dense")
    for qid in want:
        assert [h.doc_id for h in got[qid]] == [h.doc_id for h in want[qid]]
        assert [h.score for h in got[qid]] == pytest.approx([h.score for h in want[qid]], abs=1e-5)


def test_a_bm25_index_serves_bm25_only(toy_beir: Path, tmp_path: Path) -> None:
    from ar2.cli import main

    assert main(["-q", "index", str(toy_beir), "--kind", "bm25", "--out", str(tmp_path / "b")]) == 0
    service = SearchService.load(tmp_path / "b")
    assert service.modes == ("bm25",) and not service.has_ranker
    assert service.search([Query("q", "what do cats eat")], 1)["q"][0].doc_id == "d1"
    with pytest.raises(Ar2Error, match="mode 'dense' is not served here"):
        service.search([Query("q", "cats")], 1, "dense")
    with TestClient(create_app(service), base_url=LOCAL) as c:
        reply = c.post("/search", json={"query": "cats", "mode": "dense"})
        assert reply.status_code == 422 and "'bm25'" in reply.json()["detail"][0]["msg"]


def test_snippets_hold_the_query_words_and_respect_the_length() -> None:
    text = " ".join(["filler"] * 100) + " the cats eat fish here " + " ".join(["tail"] * 100)
    out = snippet(text, "Cats eat?", 60)
    assert out.startswith("… cats eat fish") and out.endswith("…")
    assert len(out) <= 60 + 4
    assert snippet("x" * 500, "x", 20) == "x" * 20 + " …"
    assert snippet("no match here at all " * 20, "zebra", 30).startswith("no match")


def test_the_snippet_window_is_the_best_one_against_brute_force() -> None:
    import random

    from ar2.serve.snippet import _best_start, _occurrences

    def brute(found: list, chars: int) -> int:  # every start, counted from scratch
        def count(start: int) -> int:
            return len({w for s, e, w in found if s >= start and e <= start + chars})

        return max([0] + [s for s, _, _ in found], key=lambda s: (count(s), -s))

    rng = random.Random(0)
    vocab = ["cats", "Cats", "eat", "fish", "dogs", "a", "the", "Straße", "x1"]
    for _ in range(500):
        text = " ".join(rng.choice(vocab) for _ in range(rng.randint(1, 80)))
        query = " ".join(rng.choice(vocab) for _ in range(rng.randint(1, 4)))
        chars = rng.choice([5, 20, 60])
        found = _occurrences(text, query)
        assert _best_start(found, chars) == brute(found, chars), (text, query, chars)
        assert len(snippet(text, query, chars)) <= chars + 4


# ---------------------------------------------------------------- the app


@pytest.mark.parametrize("mode", ["dense", "bm25", "hybrid"])
@pytest.mark.parametrize("rerank_k", [0, 5])
def test_search_answers_what_the_service_answers(
    client: TestClient, service: SearchService, mode: str, rerank_k: int
) -> None:
    body = {"query": "what do cats eat", "k": 3, "mode": mode, "rerank_k": rerank_k}
    reply = client.post("/search", json=body)
    assert reply.status_code == 200, reply.text
    data = reply.json()
    assert data["mode"] == mode and data["rerank_k"] == rerank_k and data["took_ms"] >= 0
    got = [[h["id"], h["score"]] for h in data["hits"]]
    assert got == _pipeline_hits(service, "what do cats eat", 3, mode, rerank_k)
    for hit in data["hits"]:
        doc = service.docs[hit["id"]]
        assert hit["title"] == doc.title and hit["snippet"] == doc.text  # short texts: whole


def test_search_defaults_are_the_services(client: TestClient, service: SearchService) -> None:
    data = client.post("/search", json={"query": "heart risk"}).json()
    assert (data["mode"], data["rerank_k"], len(data["hits"])) == ("dense", 5, 8)  # 8 docs, k 10
    got = [[h["id"], h["score"]] for h in data["hits"]]
    assert got == _pipeline_hits(service, "heart risk", 10, "dense", 5)


def test_batch_equals_one_search_per_query(client: TestClient) -> None:
    queries = ["what do cats eat", "dogs chase balls", "cancer gene protein"]
    body = {"queries": queries, "k": 4, "mode": "hybrid", "rerank_k": 5}
    reply = client.post("/search/batch", json=body)
    assert reply.status_code == 200, reply.text
    results = reply.json()["results"]
    assert len(results) == 3
    for query, result in zip(queries, results):
        single = client.post("/search", json={"query": query, "k": 4, "mode": "hybrid"}).json()
        assert [h["id"] for h in result["hits"]] == [h["id"] for h in single["hits"]]
        assert [h["score"] for h in result["hits"]] == pytest.approx(
            [h["score"] for h in single["hits"]], rel=1e-5
        )


def test_health_info_schema_and_page(client: TestClient) -> None:
    assert client.get("/health").json() == {
        "status": "ok",
        "documents": 8,
        "modes": ["dense", "bm25", "hybrid"],
    }
    info = client.get("/info").json()
    assert info["limits"] == Limits().__dict__
    assert info["manifests"]["ranker"]["config"]["fusion_weight"] is not None
    schema = client.get("/openapi.json").json()
    assert {"/search", "/search/batch", "/health", "/info"} <= set(schema["paths"])
    request = schema["components"]["schemas"]["SearchRequest"]["properties"]
    assert request["mode"]["enum"] == ["dense", "bm25", "hybrid"]
    assert request["k"]["maximum"] == 100 and request["query"]["maxLength"] == 1000
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="q"' in page.text and '<script src="page.js">' in page.text
    assert "fetch(" in client.get("/page.js").text


OVERSIZED = "cats " * 300  # 1,500 characters


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/search", {"query": ""}, "query"),
        ("/search", {"query": " \t\n "}, "query"),
        ("/search", {"query": OVERSIZED}, "query"),
        ("/search", {}, "query"),
        ("/search", {"query": 42}, "query"),
        ("/search", {"query": ["cats"]}, "query"),
        ("/search", {"query": "cats", "k": 0}, "k"),
        ("/search", {"query": "cats", "k": 101}, "k"),
        ("/search", {"query": "cats", "k": "10"}, "k"),
        ("/search", {"query": "cats", "k": 2.5}, "k"),
        ("/search", {"query": "cats", "k": True}, "k"),
        ("/search", {"query": "cats", "k": None}, "k"),
        ("/search", {"query": "cats", "rerank_k": -1}, "rerank_k"),
        ("/search", {"query": "cats", "rerank_k": 101}, "rerank_k"),
        ("/search", {"query": "cats", "mode": "sparse"}, "mode"),
        ("/search", {"query": "cats", "mode": 1}, "mode"),
        ("/search", {"query": "cats", "topk": 5}, "topk"),
        ("/search/batch", {"queries": []}, "queries"),
        ("/search/batch", {"queries": ["cats"] * 33}, "queries"),
        ("/search/batch", {"queries": "cats"}, "queries"),
        ("/search/batch", {"queries": ["cats", ""]}, "queries"),
        ("/search/batch", {"queries": ["cats"], "k": 1000}, "k"),
        ("/search/batch", {"query": "cats"}, "query"),
    ],
)
def test_bad_requests_get_a_422_naming_the_field(
    client: TestClient, path: str, body: dict[str, Any], field: str
) -> None:
    reply = client.post(path, json=body)
    assert reply.status_code == 422, reply.text
    detail = reply.json()["detail"]
    assert any(field in d["loc"] for d in detail), detail
    assert all(set(d) == {"loc", "msg", "type"} for d in detail)  # no echo of the input
    _assert_clean(reply.text)
    assert "cats cats" not in reply.text


@pytest.mark.parametrize(
    ("content", "headers", "status"),
    [
        (b'{"query": "cats"', {"content-type": "application/json"}, 422),  # broken JSON
        (b'["cats"]', {"content-type": "application/json"}, 422),  # not an object
        (b"query=cats", {"content-type": "application/x-www-form-urlencoded"}, 422),
        (b'{"query": "cats"}', {"content-type": "text/plain"}, 422),
        (b"\xff\xfe", {"content-type": "application/json"}, 422),  # not UTF-8
    ],
)
def test_malformed_bodies_get_a_4xx(
    client: TestClient, content: bytes, headers: dict[str, str], status: int
) -> None:
    reply = client.post("/search", content=content, headers=headers)
    assert reply.status_code == status, reply.text
    _assert_clean(reply.text)


@pytest.mark.parametrize("chunked", [False, True])
def test_oversized_bodies_get_a_json_413(client: TestClient, chunked: bool) -> None:
    """Too large by its Content-Length (answered before reading) or, sent in chunks, by the
    bytes received: both answers are JSON (Starlette's own 413 was text/plain)."""
    body = json.dumps({"query": "cats", "pad": "x" * (300 * 1024)}).encode()
    content: Any = iter([body[i : i + 65536] for i in range(0, len(body), 65536)])
    content = content if chunked else body
    reply = client.post("/search", content=content, headers={"content-type": "application/json"})
    assert reply.status_code == 413
    assert reply.headers["content-type"] == "application/json"
    assert reply.json() == {"detail": "Content Too Large"}
    _assert_clean(reply.text)


def test_unknown_field_names_are_cut_short_in_errors(client: TestClient) -> None:
    reply = client.post("/search", json={"query": "cats", "x" * 5000: 1})
    assert reply.status_code == 422
    assert reply.json()["detail"][0]["loc"] == ["body", "x" * 64]


def test_unknown_paths_and_methods(client: TestClient) -> None:
    assert client.get("/nope").status_code == 404
    assert client.get("/search").status_code == 405
    assert client.delete("/health").status_code == 405


def test_no_ranker_means_rerank_k_is_zero(tiny_run: Path) -> None:
    service = SearchService.load(tiny_run / "index", retriever=tiny_run / "retriever")
    with TestClient(create_app(service), base_url=LOCAL) as c:
        assert c.post("/search", json={"query": "cats"}).json()["rerank_k"] == 0
        reply = c.post("/search", json={"query": "cats", "rerank_k": 5})
        assert reply.status_code == 422
        schema = c.get("/openapi.json").json()["components"]["schemas"]["SearchRequest"]
        assert schema["properties"]["rerank_k"]["anyOf"][0]["maximum"] == 0


def test_limits_are_configurable(service: SearchService) -> None:
    limits = Limits(max_k=3, max_batch=2, max_query_chars=10)
    with TestClient(create_app(service, limits), base_url=LOCAL) as c:
        assert c.post("/search", json={"query": "cats", "k": 3}).status_code == 200
        assert c.post("/search", json={"query": "cats", "k": 4}).status_code == 422
        assert c.post("/search", json={"query": "cats" * 3}).status_code == 422
        assert c.post("/search/batch", json={"queries": ["a", "b", "c"]}).status_code == 422


def test_internal_errors_are_a_plain_500(service: SearchService, monkeypatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret /internal/path")

    app = create_app(service)
    monkeypatch.setattr(service, "submit", broken)
    with TestClient(app, base_url=LOCAL, raise_server_exceptions=False) as c:
        reply = c.post("/search", json={"query": "cats"})
    assert reply.status_code == 500
    assert reply.json() == {"detail": "internal server error"}
    assert "secret" not in reply.text
    assert reply.headers["x-content-type-options"] == "nosniff"  # answered outside middleware
    assert reply.headers["content-security-policy"] == PAGE_CSP


# ---------------------------------------------------------------- guards


@pytest.mark.parametrize(
    "host", ["localhost", "localhost:8000", "LocalHost", "127.0.0.1", "127.0.0.1:9", "[::1]:80"]
)
def test_loopback_host_names_are_answered(client: TestClient, host: str) -> None:
    assert client.get("/health", headers={"host": host}).status_code == 200
    assert client.post("/search", json={"query": "cats"}, headers={"host": host}).status_code == 200


@pytest.mark.parametrize(
    "host",
    [
        "evil.example",  # DNS rebinding: a foreign name that resolves to 127.0.0.1
        "evil.example:8000",
        "localhost.evil.example",
        "127.0.0.1.nip.io",
        "testserver",
        "[::2]:80",
        "localhost:http",
        "",
    ],
)
def test_other_host_names_get_a_json_400(client: TestClient, host: str) -> None:
    for reply in (
        client.get("/health", headers={"host": host}),
        client.get("/", headers={"host": host}),
        client.post("/search", json={"query": "cats"}, headers={"host": host}),
    ):
        assert reply.status_code == 400
        assert reply.headers["content-type"] == "application/json"
        assert reply.json() == {"detail": BAD_HOST} and "--allowed-hosts" in BAD_HOST
        assert reply.headers["x-frame-options"] == "DENY"


def test_allowed_hosts_are_a_parameter(service: SearchService) -> None:
    app = create_app(service, allowed_hosts=parse_allowed_hosts("Search.example,*.corp.example"))
    c = TestClient(app, base_url="http://search.example")
    assert c.get("/health").status_code == 200
    assert c.get("/health", headers={"host": "a.b.corp.example:8443"}).status_code == 200
    assert c.get("/health", headers={"host": "corp.example"}).status_code == 400
    assert c.get("/health", headers={"host": "localhost"}).status_code == 400
    anyone = TestClient(create_app(service, allowed_hosts=["*"]))  # Host: testserver
    assert anyone.get("/health", headers={"host": "anything.example"}).status_code == 200


def test_every_error_answer_is_json(client: TestClient) -> None:
    """404, 405, the Host check's 400, 413 and 422: ``{"detail": ...}``, as 503 and 500."""
    errors = {
        404: client.get("/nope"),
        405: client.delete("/health"),
        400: client.get("/health", headers={"host": "evil.example"}),
        413: client.post("/search", content=b"x" * 300_000, headers={"content-length": "300000"}),
        422: client.post("/search", json={}),
    }
    for status, reply in errors.items():
        assert reply.status_code == status, reply.text
        assert reply.headers["content-type"] == "application/json", status
        assert set(reply.json()) == {"detail"}


def test_every_answer_carries_the_security_headers(client: TestClient) -> None:
    replies = [
        client.get("/"),
        client.get("/page.js"),
        client.get("/page.css"),
        client.get("/health"),
        client.get("/openapi.json"),
        client.post("/search", json={"query": "cats"}),
        client.post("/search", json={}),
        client.get("/nope"),
        client.get("/health", headers={"host": "evil.example"}),
        client.post("/search", content=b"x" * 300_000),
    ]
    for reply in replies:
        assert reply.headers["x-content-type-options"] == "nosniff"
        assert reply.headers["x-frame-options"] == "DENY"
        assert reply.headers["referrer-policy"] == "no-referrer"
        csp = reply.headers["content-security-policy"]
        assert csp == PAGE_CSP and "frame-ancestors 'none'" in csp
        assert "script-src 'self';" in csp and "http" not in csp and "unsafe" not in csp


def test_the_page_needs_nothing_inline_or_remote(client: TestClient) -> None:
    """What the page's CSP (``'self'`` only) allows is all it uses: its script and style are
    files of the service, it fetches only relative paths, and builds nodes, never HTML."""
    html = client.get("/").text
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", html, re.S)
    assert scripts == [(' src="page.js"', "")]
    assert "<style" not in html and " style=" not in html and not re.search(r"\son\w+=", html)
    assert re.findall(r'(?:src|href)="([^"]+)"', html) == ["page.css", "page.js"]
    js = client.get("/page.js")
    assert js.headers["content-type"] == "text/javascript; charset=utf-8"
    assert client.get("/page.css").headers["content-type"] == "text/css; charset=utf-8"
    assert re.findall(r"fetch\(([^,)]+)", js.text) == ['"search"', '"info"']
    for unsafe in ("eval(", "new Function", "innerHTML", "setAttribute", "http:", "https:"):
        assert unsafe not in js.text


def test_docs_are_off_by_default_and_opt_in(client: TestClient, service: SearchService) -> None:
    """``/docs`` and ``/redoc`` load their scripts from a CDN: only with ``docs=True``, and only
    they get a CSP that allows it."""
    for path in ("/docs", "/redoc", "/docs/oauth2-redirect"):
        assert client.get(path).json() == {"detail": "Not Found"}
    assert client.get("/openapi.json").status_code == 200
    c = TestClient(create_app(service, docs=True), base_url=LOCAL)
    for path in ("/docs", "/redoc"):
        page = c.get(path)
        assert page.status_code == 200
        csp = page.headers["content-security-policy"]
        assert csp == DOCS_CSP
        for origin in re.findall(r'(?:src|href)="(https://[^/"]+)', page.text):
            assert origin in csp, origin
    assert c.get("/").headers["content-security-policy"] == PAGE_CSP


@pytest.mark.parametrize("port", ["70000", "65536", "-1"])
def test_ar2_serve_refuses_a_port_out_of_range(
    port: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Refused by argparse, before anything loads (70000 used to listen on 70000 - 65536)."""
    from ar2.cli import build_parser, main

    with pytest.raises(SystemExit) as exited:
        main(["-q", "serve", str(tmp_path), "--port", port])
    assert exited.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert (
        error
        == f"ar2 serve: error: argument --port: must be 0 to 65535 (0: any free port), got {port}"
    )
    for edge in ("0", "65535"):
        assert build_parser().parse_args(["serve", "x", "--port", edge]).port == int(edge)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("", "no host name given"),
        (" , ", "no host name given"),
        ("http://search.example", "'http://search.example' is not a host name"),
        ("localhost:8000", "'localhost:8000' is not a host name"),
        ("search.example,a b", "'a b' is not a host name"),
    ],
)
def test_ar2_serve_refuses_bad_allowed_hosts(
    value: str, problem: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One line, before the port is taken or anything loads (the folder does not exist)."""
    from ar2.cli import main

    assert main(["-q", "serve", str(tmp_path / "nope"), "--allowed-hosts", value]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"ar2: error: --allowed-hosts: {problem}. Fix: ")


def _assert_clean(text: str) -> None:
    for leak in ("Traceback", 'File "', ".py", "site-packages", "/tmp"):
        assert leak not in text, text
