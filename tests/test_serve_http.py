"""The service over real HTTP on 127.0.0.1: a real client, the ``ar2 serve`` command with a
graceful SIGTERM, a bounded load test and property-based fuzzing of the OpenAPI schema."""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

from ar2.serve import SearchService  # noqa: E402
from ar2.serve.app import create_app  # noqa: E402
from ar2.serve.server import in_background  # noqa: E402

QUERIES = ["what do cats eat", "dogs chase balls", "heart risk", "cancer gene protein"]


@pytest.fixture(scope="module")
def service(tiny_run: Path) -> SearchService:
    return SearchService.load(tiny_run)


@pytest.fixture(scope="module")
def url(service: SearchService) -> Iterator[str]:
    with in_background(create_app(service)) as base:
        yield base


def test_a_real_client_over_loopback(url: str, service: SearchService) -> None:
    from fastapi.testclient import TestClient

    assert url.startswith("http://127.0.0.1:")
    in_process = TestClient(create_app(service), base_url="http://localhost")
    with httpx.Client(base_url=url, timeout=30) as client:
        assert client.get("/health").json()["status"] == "ok"
        assert client.get("/info").json()["modes"] == ["dense", "bm25", "hybrid"]
        assert "<form" in client.get("/").text
        for mode in ("dense", "bm25", "hybrid"):
            body = {"query": "what do cats eat", "k": 5, "mode": mode}
            over_http = client.post("/search", json=body).json()
            direct = in_process.post("/search", json=body).json()
            assert over_http["hits"] == direct["hits"]
        batch = client.post("/search/batch", json={"queries": QUERIES, "k": 3})
        assert batch.status_code == 200 and len(batch.json()["results"]) == len(QUERIES)
        bad = client.post("/search", json={"query": "cats", "k": -1})
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "k"]


def test_keep_alive_replies_do_not_wait_for_delayed_acks(url: str) -> None:
    """A listening socket without IPPROTO_TCP gets no TCP_NODELAY from asyncio: every reply
    on a kept-alive connection then waited ~40 ms (Nagle against delayed ACK)."""
    import statistics

    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    times = []
    for _ in range(20):
        start = time.perf_counter()
        conn.request("GET", "/health")
        assert conn.getresponse().read()
        times.append(time.perf_counter() - start)
    conn.close()
    assert statistics.median(times) < 0.02, times


class SlowRanker:
    """A ranker that signals when it starts and then takes its time."""

    def __init__(self, seconds: float) -> None:
        self.started, self.seconds = threading.Event(), seconds

    def rerank(self, query: Any, hits: list[Any]) -> list[Any]:
        self.started.set()
        time.sleep(self.seconds)
        return list(hits)


def _slow_service(ranker: SlowRanker) -> SearchService:
    from ar2.index import BM25Index
    from ar2.pipeline import BM25Retriever
    from ar2.types import Doc

    docs = [Doc("d1", "cats eat fish"), Doc("d2", "dogs chase balls")]
    return SearchService(docs, {"bm25": BM25Retriever(BM25Index.build(docs))}, ranker)


def test_health_answers_while_a_slow_search_runs() -> None:
    """Searches run on the service's worker thread, so the event loop keeps answering."""
    ranker = SlowRanker(1.5)
    with in_background(create_app(_slow_service(ranker))) as base:
        slow = threading.Thread(
            target=lambda: httpx.post(base + "/search", json={"query": "cats"}, timeout=30)
        )
        slow.start()
        assert ranker.started.wait(10)  # the search is running now
        start = time.perf_counter()
        assert httpx.get(base + "/health", timeout=30).status_code == 200
        assert time.perf_counter() - start < 0.5
        assert slow.is_alive()
        slow.join()


def test_shutdown_lets_the_search_in_flight_finish() -> None:
    """Graceful shutdown (what SIGTERM triggers in uvicorn): the running search completes."""
    ranker = SlowRanker(1.0)
    replies: list[Any] = []

    def search(base: str) -> None:
        replies.append(httpx.post(base + "/search", json={"query": "cats"}, timeout=30))

    with in_background(create_app(_slow_service(ranker))) as base:
        slow = threading.Thread(target=search, args=(base,))
        slow.start()
        assert ranker.started.wait(10)
    # leaving the block asked the server to exit while the search was running
    slow.join(30)
    assert [r.status_code for r in replies] == [200]
    assert replies[0].json()["hits"][0]["id"] == "d1"
    with pytest.raises(httpx.TransportError):
        httpx.get(base + "/health", timeout=5)  # and then it stopped


def test_a_full_queue_answers_503_with_retry_after() -> None:
    from ar2.serve import Limits

    ranker = SlowRanker(1.0)
    app = create_app(_slow_service(ranker), Limits(max_pending=1))
    with in_background(app) as base:
        first = threading.Thread(
            target=lambda: httpx.post(base + "/search", json={"query": "cats"}, timeout=30)
        )
        first.start()
        assert ranker.started.wait(10)
        busy = httpx.post(base + "/search", json={"query": "dogs"}, timeout=30)
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
        assert "retry" in busy.json()["detail"]
        first.join()
        assert httpx.post(base + "/search", json={"query": "dogs"}, timeout=30).status_code == 200


@pytest.mark.integration
def test_load_8_clients_200_requests_each_without_errors(url: str) -> None:
    """8 concurrent keep-alive clients × 200 requests (every mode, reranked or not, batches)."""
    expected: dict[tuple[str, str, int], list[str]] = {}
    with httpx.Client(base_url=url, timeout=30) as client:
        for query in QUERIES:
            for mode in ("dense", "bm25", "hybrid"):
                for rerank_k in (0, 5):
                    body = {"query": query, "k": 5, "mode": mode, "rerank_k": rerank_k}
                    hits = client.post("/search", json=body).json()["hits"]
                    expected[(query, mode, rerank_k)] = [h["id"] for h in hits]
    cases = list(expected)
    statuses: Counter[Any] = Counter()
    wrong: list[Any] = []

    def worker(n: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            for i in range(200):
                query, mode, rerank_k = cases[(n * 200 + i) % len(cases)]
                try:
                    if i % 10 == 9:
                        body = {"queries": [query] * 3, "k": 5, "mode": mode, "rerank_k": rerank_k}
                        reply = client.post("/search/batch", json=body)
                        got = [[h["id"] for h in r["hits"]] for r in reply.json()["results"]]
                        ok = got == [expected[(query, mode, rerank_k)]] * 3
                    else:
                        body = {"query": query, "k": 5, "mode": mode, "rerank_k": rerank_k}
                        reply = client.post("/search", json=body)
                        got_ids = [h["id"] for h in reply.json()["hits"]]
                        ok = got_ids == expected[(query, mode, rerank_k)]
                    statuses[reply.status_code] += 1
                    if not ok:
                        wrong.append((query, mode, rerank_k))
                except Exception as err:  # noqa: BLE001 - every failure is counted
                    statuses[type(err).__name__] += 1

    start = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "the load test did not finish in 300 s"
    assert statuses == Counter({200: 1600}), statuses
    assert not wrong, wrong[:5]
    print(f"1600 requests in {time.perf_counter() - start:.1f} s")


@contextmanager
def _ar2_serve(tiny_run: Path, *flags: str) -> Iterator[tuple[subprocess.Popen[str], str, str]]:
    """``ar2 serve tiny_run --port 0 *flags`` as a process: yields it, its base URL once
    ``/health`` answers (with ``Host: localhost``) and the line it printed; killed if left."""
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "ar2.cli", "serve", str(tiny_run), "--port", "0", *flags]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # printed once loaded, before serving
        match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert match, line + (proc.stderr.read() if proc.poll() is not None else "")
        base = f"http://127.0.0.1:{match.group(1)}"
        deadline = time.monotonic() + 60
        while True:
            try:
                health = httpx.get(base + "/health", headers={"host": "localhost"}, timeout=5)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the server did not come up"
                time.sleep(0.1)
        assert health.json()["status"] == "ok"
        yield proc, base, line
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_ar2_serve_command_starts_answers_and_stops_on_sigterm(tiny_run: Path) -> None:
    with _ar2_serve(tiny_run) as (proc, base, line):
        assert "8 documents; dense, bm25, hybrid; rerank top 5" in line
        assert httpx.get(base + "/health", timeout=5).json()["status"] == "ok"
        reply = httpx.post(base + "/search", json={"query": "cats"}, timeout=30)
        assert reply.status_code == 200 and reply.json()["hits"]
        rebound = httpx.get(base + "/health", headers={"host": "evil.example"}, timeout=5)
        assert rebound.status_code == 400 and "--allowed-hosts" in rebound.json()["detail"]
        assert httpx.get(base + "/docs", timeout=5).json() == {"detail": "Not Found"}
        proc.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal for the process manager
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
        stderr = proc.stderr.read() if proc.stderr else ""
        assert "Shutting down" in stderr and "Application shutdown complete" in stderr
        assert "Traceback" not in stderr


def test_ar2_serve_allowed_hosts_and_docs_flags(tiny_run: Path) -> None:
    flags = ("--allowed-hosts", "search.example,localhost", "--docs")
    with _ar2_serve(tiny_run, *flags) as (proc, base, line):
        named = {"host": "search.example:8000"}
        assert httpx.get(base + "/health", headers=named, timeout=5).status_code == 200
        assert httpx.get(base + "/health", timeout=5).status_code == 400  # Host: 127.0.0.1
        docs = httpx.get(base + "/docs", headers=named, timeout=5)
        assert docs.status_code == 200 and "cdn.jsdelivr.net" in docs.text
        assert "cdn.jsdelivr.net" in docs.headers["content-security-policy"]
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        assert proc.stderr is not None
        assert (
            "/docs and /redoc load Swagger UI and ReDoc from cdn.jsdelivr.net" in proc.stderr.read()
        )


def _read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a timeout fails)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


@pytest.mark.integration
def test_half_sent_request_heads_are_closed_after_the_header_timeout(
    service: SearchService,
) -> None:
    """Slowloris: 200 connections that send part of a request line and headers, nothing, or a
    second request cut short on a kept-alive connection are closed once the header timeout is
    over (uvicorn waited for ever); the server keeps answering meanwhile."""
    partial = b"GET /health HTTP/1.1\r\nHost: localhost\r\n"  # no blank line: headers unfinished
    with in_background(create_app(service), header_timeout=1) as base:
        host, port = base.removeprefix("http://").split(":")
        started = time.monotonic()
        conns: list[tuple[str, socket.socket]] = []
        for i in range(200):
            kind = ("partial", "silent", "kept-alive", "partial")[i % 4]
            if kind == "kept-alive":
                conn = http.client.HTTPConnection(host, int(port), timeout=10)
                conn.request("GET", "/health", headers={"Host": "localhost"})
                assert conn.getresponse().read()
                assert conn.sock is not None
                sock = conn.sock
            else:
                sock = socket.create_connection((host, int(port)), timeout=10)
            if kind != "silent":
                sock.sendall(partial)
            conns.append((kind, sock))
        assert httpx.get(base + "/health", timeout=5).status_code == 200
        for kind, sock in conns:
            with sock:
                data = _read_until_closed(sock)
            if kind == "silent":
                assert data == b""
            else:
                assert data.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
                assert b"content-type: application/json\r\n" in data
                assert data.endswith(b'\r\n\r\n{"detail":"request headers not received in time"}')
        assert time.monotonic() - started < 6
        assert httpx.get(base + "/health", timeout=5).status_code == 200


def test_a_request_that_is_not_http_gets_a_json_400(url: str) -> None:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        data = _read_until_closed(sock)
    head, body = data.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"content-type: application/json" in head and b"x-frame-options: DENY" in head
    assert body == b'{"detail":"Invalid HTTP request received."}'


def test_ar2_serve_refuses_a_busy_port_and_a_missing_folder(url: str, tmp_path: Path) -> None:
    port = url.rsplit(":", 1)[1]
    cmd = [sys.executable, "-m", "ar2.cli", "serve", str(tmp_path), "--port", port]
    busy = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert busy.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in busy.stderr and "Fix:" in busy.stderr
    cmd = [sys.executable, "-m", "ar2.cli", "serve", str(tmp_path / "nope"), "--port", "0"]
    missing = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "no such folder" in missing.stderr
    assert "Traceback" not in busy.stderr + missing.stderr


def test_fuzz_the_openapi_schema(service: SearchService) -> None:
    """schemathesis: schema-valid and schema-invalid requests to every operation, checked with
    all its default checks (no 5xx, invalid data rejected with a 4xx, valid data accepted,
    responses match the schema). More: AR2_FUZZ_EXAMPLES=2000 AR2_FUZZ_RANDOM=1."""
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings

    examples = int(os.environ.get("AR2_FUZZ_EXAMPLES", "60"))
    app = create_app(service, allowed_hosts=["testserver"])  # schemathesis's Host
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    ran: Counter[str] = Counter()
    for result in schema.get_all_operations():
        operation = result.ok()
        modes = [schemathesis.GenerationMode.POSITIVE]
        if operation.method.upper() == "POST":  # only bodies can be invalid
            modes.append(schemathesis.GenerationMode.NEGATIVE)
        for mode in modes:

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=examples,
                deadline=None,
                database=None,
                derandomize="AR2_FUZZ_RANDOM" not in os.environ,
                suppress_health_check=list(HealthCheck),
            )
            def check(case: Any) -> None:
                ran[case.operation.label] += 1
                case.call_and_validate()

            check()
    assert set(ran) == {"POST /search", "POST /search/batch", "GET /health", "GET /info"}
    assert sum(ran.values()) >= 2 * examples
