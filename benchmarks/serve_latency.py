"""Search latency and throughput of ``ar2 serve`` over HTTP against the same service in-process.

One trained run (default ``runs/quick``) is loaded twice: in this process (``SearchService``)
and in an ``ar2 serve RUN --port 0`` subprocess with its default settings (access log on),
queried over loopback with keep-alive by two clients: ``httpx`` (with TCP_NODELAY, as curl,
browsers and requests set it) and the standard library's ``http.client``. For each system

* ``dense``: the dense retriever alone (``rerank_k`` 0),
* ``hybrid``: reciprocal rank fusion of BM25 and dense (``rerank_k`` 0),
* ``dense+rerank20``: dense, its top 20 reranked by the ranker,

every SciFact test query is searched once each way (in-process, httpx, http.client), in
alternating blocks of 20 queries after a warm-up, so that machine drift hits all three alike;
within a block only one side works (on 2 cores the idle side's spinning torch threads would
slow the other). The HTTP time is what the client sees: JSON, loopback, the server's parsing,
the search, titles and snippets, the reply; ``took_ms`` is the server's own time for the
search with titles and snippets. The ratio of medians is the HTTP overhead. Then QPS with 4
concurrent clients (in-process: 4 threads calling the service; HTTP: 4 httpx clients).

Run from the repository root (after ``bash scripts/demo.sh`` made runs/quick):

    .venv/bin/python benchmarks/serve_latency.py runs/quick --out serve_latency.json
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

SYSTEMS = {"dense": ("dense", 0), "hybrid": ("hybrid", 0), "dense+rerank20": ("dense", 20)}
K = 10
WARMUP = 10
BLOCK = 20  # queries per alternating block (in-process, then HTTP)
PAUSE = 0.5  # seconds between blocks: the other side's idle threads stop spinning
CLIENTS = 4
TARGETS = {"dense p50 ms": 20.0, "dense+rerank20 p50 ms": 300.0, "dense HTTP overhead": 1.5}


def add_query_args(parser: argparse.ArgumentParser) -> None:
    """The run and the queries a per-query benchmark reads (also ``onnx_backend.py``'s)."""
    parser.add_argument("run", nargs="?", default="runs/quick", help="run folder (runs/quick)")
    parser.add_argument("--data", default="data/scifact", help="BEIR folder for the queries")
    parser.add_argument("--split", default="test", help="queries of this qrels split (test)")
    parser.add_argument("--queries", type=int, default=None, help="only the first N queries")
    parser.add_argument("--out", help="also write the results as JSON")


def judged_queries(args: argparse.Namespace) -> tuple[list[Any], dict[str, Any]]:
    """The split's judged queries (the first ``--queries``) and their qrels."""
    from ar2.data.beir import load_qrels, load_queries

    qrels = load_qrels(Path(args.data) / "qrels" / f"{args.split}.tsv")
    queries = [q for q in load_queries(Path(args.data) / "queries.jsonl") if q.id in qrels]
    queries = queries[: args.queries]
    return queries, {q.id: qrels[q.id] for q in queries}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_query_args(parser)
    parser.add_argument("--url", help="query this running `ar2 serve RUN` instead of starting one")
    parser.add_argument("--backend", default="auto", choices=("auto", "torch", "onnx", "onnx-int8"),
                        help="`ar2 serve --backend` (auto, its default)")  # fmt: skip
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)

    from ar2.serve import SearchService
    from ar2.types import Query

    queries, _ = judged_queries(args)
    print(f"{len(queries)} queries; loading {args.run} in-process and in `ar2 serve`", flush=True)
    service = SearchService.load(args.run, backend=args.backend)
    texts = [q.text for q in queries]
    with served(args.run, args.url, args.backend) as url, http_client(url) as client:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        took: list[float] = []

        def in_process(text: str, mode: str, rerank_k: int) -> None:
            service.search([Query("q", text)], K, mode, rerank_k)

        def via_httpx(text: str, mode: str, rerank_k: int) -> None:
            body = {"query": text, "k": K, "mode": mode, "rerank_k": rerank_k}
            reply = client.post("/search", json=body)
            reply.raise_for_status()
            took.append(reply.json()["took_ms"])

        def via_http_client(text: str, mode: str, rerank_k: int) -> None:
            body = json.dumps({"query": text, "k": K, "mode": mode, "rerank_k": rerank_k})
            try:
                conn.request("POST", "/search", body, {"Content-Type": "application/json"})
                reply = conn.getresponse()
            except (ConnectionError, http.client.HTTPException):  # idle keep-alive timed out
                conn.close()
                conn.request("POST", "/search", body, {"Content-Type": "application/json"})
                reply = conn.getresponse()
            data = reply.read()
            if reply.status != 200:
                raise RuntimeError(f"HTTP {reply.status}: {data[:200]!r}")
            took.append(json.loads(data)["took_ms"])

        paths = {"in_process": in_process, "httpx": via_httpx, "http.client": via_http_client}
        results = {}
        for name, (mode, rerank_k) in SYSTEMS.items():
            for text in texts[:WARMUP]:
                for call in paths.values():
                    call(text, mode, rerank_k)
            times: dict[str, list[float]] = {path: [] for path in paths}
            for start in range(0, len(texts), BLOCK):
                block = texts[start : start + BLOCK]
                for path, call in paths.items():
                    call(block[0], mode, rerank_k)  # untimed: reopens an idle connection
                    times[path] += [timed(call, text, mode, rerank_k) for text in block]
                    time.sleep(PAUSE)
            took[: len(took) - 2 * len(texts)] = []  # keep the timed requests' took_ms only
            n = min(len(texts), 100 if rerank_k else 300)
            base = statistics.median(times["in_process"])
            results[name] = {
                **{path: summary(ms) for path, ms in times.items()},
                "server_took_p50": statistics.median(took),
                "overhead_httpx": statistics.median(times["httpx"]) / base,
                "overhead_http_client": statistics.median(times["http.client"]) / base,
                "qps_in_process_4_threads": concurrent_qps(in_process, texts[:n], mode, rerank_k),
                "qps_http_4_clients": http_qps(url, texts[:n], mode, rerank_k),
            }
            print(f"{name}: {json.dumps(results[name])}", flush=True)
        conn.close()
    report(results, args, len(queries))


def timed(call: Callable[..., None], *args: Any) -> float:
    start = time.perf_counter()
    call(*args)
    return (time.perf_counter() - start) * 1000


def summary(ms: list[float]) -> dict[str, float]:
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return {
        "p50": float(p50),
        "p95": float(p95),
        "p99": float(p99),
        "mean": statistics.fmean(ms),
        "qps_1_client": 1000 / statistics.fmean(ms),
    }


def concurrent_qps(call: Callable[..., None], texts: list[str], mode: str, rerank_k: int) -> float:
    """Queries per second with ``CLIENTS`` threads calling ``call`` on a shared list."""
    todo = list(texts)
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                if not todo:
                    return
                text = todo.pop()
            call(text, mode, rerank_k)

    start = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(texts) / (time.perf_counter() - start)


def http_client(url: str) -> Any:
    """A keep-alive httpx client with TCP_NODELAY, as curl, browsers and requests/urllib3 set
    it. (httpx does not: its POST headers and body leave as two writes, and Nagle's algorithm
    then holds the body until the server's delayed ACK, about 40 ms on Linux.)"""
    import httpx

    nodelay = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
    return httpx.Client(
        base_url=url, timeout=60, transport=httpx.HTTPTransport(socket_options=nodelay)
    )


def http_qps(url: str, texts: list[str], mode: str, rerank_k: int) -> float:
    """Queries per second with ``CLIENTS`` keep-alive clients, one per thread."""
    local = threading.local()

    def call(text: str, mode: str, rerank_k: int) -> None:
        if not hasattr(local, "client"):
            local.client = http_client(url)
        body = {"query": text, "k": K, "mode": mode, "rerank_k": rerank_k}
        local.client.post("/search", json=body).raise_for_status()

    return concurrent_qps(call, texts, mode, rerank_k)


class served:
    """``ar2 serve RUN --port 0`` in a subprocess; the context value is its base URL."""

    def __init__(self, run: str, url: str | None = None, backend: str = "auto") -> None:
        self.run, self.url, self.backend = run, url, backend
        self.proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> str:
        import httpx

        if self.url:
            return self.url.rstrip("/")
        # Both streams go to a file: uvicorn writes its access log to stdout, and a pipe that
        # nobody reads fills after ~900 requests and then blocks the server's event loop.
        self.log = tempfile.NamedTemporaryFile("w+", suffix=".log")
        cmd = [sys.executable, "-m", "ar2.cli", "serve", self.run, "--port", "0"]
        cmd += ["--backend", self.backend]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, text=True)
        match = None
        for _ in range(1200):
            match = re.search(r"ar2 serve: (http://\S+?)/ ", Path(self.log.name).read_text())
            if match or self.proc.poll() is not None:
                break
            time.sleep(0.1)
        if not match:
            text = Path(self.log.name).read_text()[-2000:]
            self.__exit__()
            raise SystemExit(f"ar2 serve did not start:\n{text}")
        url = match.group(1)
        for _ in range(600):
            try:
                httpx.get(url + "/health", timeout=5).raise_for_status()
                return url
            except httpx.TransportError:
                time.sleep(0.1)
        raise SystemExit("ar2 serve did not answer /health within 60 s")

    def __exit__(self, *exc: object) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.log.close()


def report(results: dict[str, Any], args: argparse.Namespace, n: int) -> None:
    import torch

    setup = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "run": args.run,
        "backend": args.backend,
        "queries": n,
        "k": K,
        "cpus": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "loadavg_1min_end": os.getloadavg()[0],
    }
    print(
        "\n| system | in-process p50 / p95 / p99 ms | httpx p50 / p95 / p99 ms "
        "| http.client p50 / p95 / p99 ms | server `took_ms` p50 | HTTP / in-process p50 "
        "(httpx; http.client) | QPS 4 clients: in-process / HTTP |"
    )
    print("|---|---|---|---|---:|---|---|")
    for name, r in results.items():
        cells = [
            f"{r[p]['p50']:.1f} / {r[p]['p95']:.1f} / {r[p]['p99']:.1f}"
            for p in ("in_process", "httpx", "http.client")
        ]
        print(
            f"| {name} | {' | '.join(cells)} | {r['server_took_p50']:.1f} "
            f"| {r['overhead_httpx']:.2f}x; {r['overhead_http_client']:.2f}x "
            f"| {r['qps_in_process_4_threads']:.1f} / {r['qps_http_4_clients']:.1f} |"
        )
    dense, rerank = results["dense"], results["dense+rerank20"]
    checks = {
        "dense p50 ms": (dense["httpx"]["p50"], dense["httpx"]["p50"] <= 20.0),
        "dense+rerank20 p50 ms": (rerank["httpx"]["p50"], rerank["httpx"]["p50"] <= 300.0),
        "dense HTTP overhead": (dense["overhead_httpx"], dense["overhead_httpx"] <= 1.5),
    }
    print()
    for name, (value, ok) in checks.items():
        print(f"{name}: {value:.2f} (target {TARGETS[name]}): {'met' if ok else 'NOT met'}")
    print(json.dumps(setup))
    if args.out:
        Path(args.out).write_text(json.dumps({"setup": setup, "results": results}, indent=2))


if __name__ == "__main__":
    main()
