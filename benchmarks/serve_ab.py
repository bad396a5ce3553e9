"""HTTP latency of ``ar2 serve`` from two source trees, side by side, on the same index folder.

Measures what a change to the serving path (middleware, protocol, headers) costs: both servers
(``ar2 serve INDEX --port 0`` run with ``PYTHONPATH=<src>`` for each tree) serve the same
index; every query of a BEIR split is searched over loopback with a keep-alive
``http.client`` connection, in alternating blocks of 20 queries (A, B, A, B, ...) after a
warm-up, so that machine drift hits both alike. Reports p50 / p95 per tree and the ratio of
medians.

Run from the repository root, with an old tree checked out beside it::

    git worktree add /tmp/ar2-old 99f0316
    .venv/bin/ar2 index data/scifact --kind bm25 --out /tmp/sf-bm25
    .venv/bin/python benchmarks/serve_ab.py /tmp/sf-bm25 --a /tmp/ar2-old/src --b src \\
        --mode bm25 --out /tmp/serve_ab.json
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from machine import cpu_label  # benchmarks/machine.py

BLOCK = 20


@contextmanager
def serving(index: Path, src: Path) -> Iterator[tuple[str, int]]:
    """``ar2 serve index`` with ``src`` first on the path; yields (host, port)."""
    env = os.environ | {"PYTHONPATH": str(src.resolve())}
    cmd = [sys.executable, "-m", "ar2.cli", "-q", "serve", str(index), "--port", "0"]
    with tempfile.TemporaryFile("w+") as log:  # a file, not a pipe nobody reads
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while not (found := re.search(r"http://([\d.]+):(\d+)/", _read(log))):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{src}: the server did not start:\n{_read(log)}")
                time.sleep(0.1)
            yield found.group(1), int(found.group(2))
        finally:
            proc.terminate()
            proc.wait(30)


def _read(log: object) -> str:
    log.seek(0)  # type: ignore[attr-defined]
    return log.read()  # type: ignore[attr-defined,no-any-return]


def search_ms(conn: http.client.HTTPConnection, query: str, mode: str) -> float:
    body = json.dumps({"query": query, "k": 10, "mode": mode})
    start = time.perf_counter()
    conn.request("POST", "/search", body, {"Content-Type": "application/json"})
    reply = conn.getresponse()
    data = reply.read()
    elapsed = (time.perf_counter() - start) * 1000
    if reply.status != 200:
        raise RuntimeError(f"{reply.status}: {data[:200]!r}")
    return elapsed


def measure(args: argparse.Namespace, queries: list[str]) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"a": [], "b": []}
    with serving(args.index, args.a) as a, serving(args.index, args.b) as b:
        conns = {name: http.client.HTTPConnection(*addr) for name, addr in (("a", a), ("b", b))}
        for conn in conns.values():  # the Host header is localhost-style: 127.0.0.1:port
            for query in queries[:BLOCK]:
                search_ms(conn, query, args.mode)
        for start in range(0, len(queries), BLOCK):
            for name, conn in conns.items():
                times[name] += [
                    search_ms(conn, q, args.mode) for q in queries[start : start + BLOCK]
                ]
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("index", type=Path, help="an index folder (`ar2 index`)")
    p.add_argument("--a", type=Path, required=True, help="the first tree's src/ folder")
    p.add_argument("--b", type=Path, required=True, help="the second tree's src/ folder")
    p.add_argument("--data", type=Path, default=Path("data/scifact"))
    p.add_argument("--mode", default="bm25")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    lines = (args.data / "queries.jsonl").read_text(encoding="utf-8").splitlines()
    queries = [json.loads(line)["text"] for line in lines if line.strip()][:300]
    times = measure(args, queries)
    result = {
        name: {"p50_ms": statistics.median(t), "p95_ms": statistics.quantiles(t, n=20)[-1]}
        for name, t in times.items()
    }
    result["ratio_b_over_a_p50"] = result["b"]["p50_ms"] / result["a"]["p50_ms"]
    result["setup"] = {"a": str(args.a), "b": str(args.b), "queries": len(queries),
                       "mode": args.mode, "cpu": cpu_label(),
                       "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}  # fmt: skip
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
