"""The CLI on a toy BEIR folder with tiny models: reports, indexes, search, errors, speed."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ar2.cli import main
from ar2.data.trec import read_run


def _ar2(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "ar2.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.fixture
def tiny_ranker(tiny_bert: Path, tmp_path: Path) -> Path:
    import torch

    from ar2.encoders import CrossEncoder

    torch.manual_seed(0)  # the new head: the same whatever ran before (a tie-free order)
    with pytest.warns(UserWarning, match="new head"):
        ranker = CrossEncoder.load(tiny_bert)
    ranker.save(tmp_path / "ranker")
    return tmp_path / "ranker"


def test_help_is_fast_and_imports_nothing_heavy() -> None:
    code = (
        "import sys, ar2.cli, ar2.comparison, ar2.pipeline, ar2.evaluate, ar2.report, ar2.data,"
        " ar2.serve;"
        "heavy = {'torch', 'transformers', 'faiss', 'bm25s', 'ir_measures', 'scipy', 'matplotlib',"
        " 'fastapi', 'uvicorn'};"
        "print(sorted(heavy & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    for command in ("", "eval", "index", "search", "serve", "train"):
        args = [command, "--help"] if command else ["--help"]
        start = time.perf_counter()
        result = _ar2(*args)
        assert result.returncode == 0, result.stderr
        assert time.perf_counter() - start < 1.0
        assert "usage: ar2" in result.stdout


def test_eval_writes_the_report_contract(
    toy_beir: Path, tiny_bert: Path, tiny_ranker: Path, tmp_path: Path, capsys
) -> None:
    import ir_measures

    from ar2.data.beir import load_qrels

    out = tmp_path / "report"
    systems = f"bm25,dense:{tiny_bert},hybrid:{tiny_bert}"
    code = main(["-q", "eval", str(toy_beir), "--systems", systems, "--out", str(out),
                 "--reranker", str(tiny_ranker), "--rerank-k", "5"])  # fmt: skip
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    names = ["bm25", f"dense:{tiny_bert}", f"hybrid:{tiny_bert}"]
    assert list(report) == [n for name in names for n in (name, f"{name}+rerank")]
    assert set(report["bm25"]) == {"nDCG@10", "RR@10", "R@10", "R@100"}
    printed = capsys.readouterr().out
    assert "nDCG@10" in printed and "bm25" in printed
    for name in ("report.md", "report.png", "per_query.tsv", "protocol.json"):
        assert (out / name).is_file()

    # Cross-check: the saved TREC runs, scored directly by ir_measures, give the same numbers.
    qrels = load_qrels(toy_beir / "qrels" / "test.tsv")
    run = read_run(out / "runs" / "bm25.trec")
    direct = ir_measures.calc_aggregate(
        [ir_measures.parse_measure("nDCG@10")], qrels,
        {q: {h.doc_id: h.score for h in hits} for q, hits in run.items()},
    )  # fmt: skip
    assert report["bm25"]["nDCG@10"] == pytest.approx(list(direct.values())[0])
    # The query whose id equals a relevant doc's id keeps that doc in its ranking.
    assert "q3" in [h.doc_id for h in run["q3"]]
    protocol = json.loads((out / "protocol.json").read_text())
    assert protocol["split"] == "test" and protocol["queries_judged"] == 3


def test_eval_fusion_weight_overrides_the_rerankers(
    toy_beir: Path, tiny_ranker: Path, tmp_path: Path
) -> None:
    def ranked(weight: str) -> tuple[list[list[float]], dict]:
        """BM25's scores down each query's reranked list, and the eval's job record."""
        out = tmp_path / weight
        code = main(["-q", "eval", str(toy_beir), "--systems", "bm25", "--out", str(out),
                     "--reranker", str(tiny_ranker), "--rerank-k", "5",
                     "--fusion-weight", weight])  # fmt: skip
        assert code == 0
        bm25 = {q: {h.doc_id: h.score for h in hits}
                for q, hits in read_run(out / "runs" / "bm25.trec").items()}  # fmt: skip
        reranked = read_run(out / "runs" / "bm25+rerank.trec")
        down = [[bm25[q][h.doc_id] for h in hits] for q, hits in sorted(reranked.items())]
        return down, json.loads((out / "manifest.json").read_text())["job"]

    down, job = ranked("0")  # w = 0: BM25's order (ties in any order)
    assert all(s == sorted(s, reverse=True) for s in down) and job["fusion_weight"] == 0.0
    down, job = ranked("1")  # w = 1: the ranker's
    assert any(s != sorted(s, reverse=True) for s in down) and job["fusion_weight"] == 1.0
    result = _ar2("eval", str(toy_beir), "--out", str(tmp_path / "x"), "--fusion-weight", "2")
    assert result.returncode == 2 and "must be in [0, 1], got 2" in result.stderr


def test_index_then_search_bm25_and_dense(toy_beir: Path, tiny_bert: Path, tmp_path: Path) -> None:
    bm25_dir, dense_dir = tmp_path / "bm25", tmp_path / "dense"
    assert _ar2("index", str(toy_beir), "--kind", "bm25", "--out", str(bm25_dir)).returncode == 0
    result = _ar2("search", str(bm25_dir), "what do cats eat", "-k", "3")
    assert result.returncode == 0, result.stderr
    first = result.stdout.splitlines()[0].split()
    assert first[0] == "1" and first[2] == "d1" and "Cats" in result.stdout

    built = _ar2("index", str(toy_beir), "--kind", "dense", "--model", str(tiny_bert),
                 "--preset", "hnsw", "--out", str(dense_dir))  # fmt: skip
    assert built.returncode == 0, built.stderr
    manifest = json.loads((dense_dir / "manifest.json").read_text())
    assert manifest["factory"] == "HNSW32" and manifest["encoder"]["config"]["pooling"] == "mean"
    assert manifest["count"] == 8 and (dense_dir / "corpus.jsonl").is_file()
    result = _ar2("search", str(dense_dir), "fish", "-k", "8")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 8
    assert not list(tmp_path.glob(".ar2-vectors-*"))  # the on-disk vectors are cleaned up
    if importlib.util.find_spec("onnxruntime"):  # the default (auto) ran ONNX: torch agrees
        on_torch = _ar2("search", str(dense_dir), "fish", "-k", "8", "--backend", "torch")
        assert on_torch.returncode == 0, on_torch.stderr
        assert _ids(on_torch.stdout) == _ids(result.stdout)


@pytest.mark.parametrize("quantize", ["int8", "binary"])
def test_a_quantized_index_answers_as_the_flat_one(
    toy_beir: Path, tiny_bert: Path, tmp_path: Path, quantize: str
) -> None:
    """8 documents, k x refine >= 8: every code is re-scored, so the answer is exact."""
    printed = {}
    for name, extra in (("flat", []), (quantize, ["--quantize", quantize])):
        built = _ar2("index", str(toy_beir), "--kind", "dense", "--model", str(tiny_bert),
                     "--out", str(tmp_path / name), *extra)  # fmt: skip
        assert built.returncode == 0, built.stderr
        result = _ar2("search", str(tmp_path / name), "cats eat fish", "-k", "5")
        assert result.returncode == 0, result.stderr
        printed[name] = result.stdout
    assert _ids(printed[quantize]) == _ids(printed["flat"])
    manifest = json.loads((tmp_path / quantize / "manifest.json").read_text())
    assert manifest["factory"] == {"int8": "SQ8", "binary": "LSH"}[quantize]


def _ids(printed: str) -> list[str]:
    return [line.split()[2] for line in printed.splitlines()]


def test_dense_index_holds_the_encoders_vectors(toy_beir: Path, tiny_bert: Path, tmp_path: Path):
    import numpy as np

    from ar2.data.beir import load_corpus
    from ar2.encoders import BiEncoder
    from ar2.index import FaissIndex

    out = tmp_path / "flat"
    built = _ar2("index", str(toy_beir), "--kind", "dense", "--model", str(tiny_bert),
                 "--precision", "fp32", "--out", str(out))  # fmt: skip
    assert built.returncode == 0, built.stderr
    index = FaissIndex.load(out)
    docs = load_corpus(toy_beir / "corpus.jsonl")
    expected = BiEncoder.load(tiny_bert, precision="fp32").encode_docs(docs)
    np.testing.assert_allclose(index.index.reconstruct_n(0, len(docs)), expected, atol=1e-6)
    assert index.ids == [d.id for d in docs]


def test_a_compressed_dense_index_refines_from_its_vectors(
    toy_beir: Path, tiny_bert: Path, tmp_path: Path
) -> None:
    """SQ8 codes re-scored with the exact vectors (kept in the folder) rank as a flat index
    does; ``--refine 0`` keeps no vectors."""
    from ar2.index import FaissIndex

    common = [str(toy_beir), "--kind", "dense", "--model", str(tiny_bert), "--precision", "fp32"]
    for name, extra in (("flat", []), ("sq8", ["--factory", "SQ8"]),
                        ("sq8-raw", ["--factory", "SQ8", "--refine", "0"])):  # fmt: skip
        built = _ar2("index", *common, *extra, "--out", str(tmp_path / name))
        assert built.returncode == 0, built.stderr
    flat, sq8, raw = (FaissIndex.load(tmp_path / n) for n in ("flat", "sq8", "sq8-raw"))
    assert (tmp_path / "sq8" / "vectors.npy").is_file() and sq8.refines
    assert not (tmp_path / "sq8-raw" / "vectors.npy").exists() and not raw.refines
    queries = flat.index.reconstruct_n(0, 8) + 0.1  # (8, dim)
    want, got = flat.search(queries, 5), sq8.search(queries, 5)
    assert [[h.doc_id for h in row] for row in got] == [[h.doc_id for h in row] for row in want]
    for a, b in zip(got, want):
        assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-5)


def test_a_bad_corpus_line_fails_before_any_encoding(
    toy_beir: Path, tiny_bert: Path, tmp_path: Path
) -> None:
    with open(toy_beir / "corpus.jsonl", "a", encoding="utf-8") as f:
        f.write('{"_id": "d99", "text": \n')
    out = tmp_path / "dense"
    result = _ar2("index", str(toy_beir), "--kind", "dense", "--model", str(tiny_bert),
                  "--out", str(out))  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "corpus.jsonl:9: malformed JSON" in result.stderr and "Fix:" in result.stderr
    assert "encoding" not in result.stderr and not out.exists()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["eval", "{missing}", "--out", "{out}"], "Fix"),
        (["eval", "{toy}", "--systems", "bm25,colbert", "--out", "{out}"], "unknown system"),
        (["eval", "{toy}", "--split", "dev", "--out", "{out}"], "dev"),
        (["search", "{toy}", "cats"], "not an ar2 index"),
        (["index", "{toy}", "--kind", "dense", "--refine", "-1", "--out", "{out}"], "refine"),
        (
            [
                "index",
                "{toy}",
                "--kind",
                "dense",
                "--preset",
                "hnsw",
                "--quantize",
                "binary",
                "--out",
                "{out}",
            ],
            "quantize = 'binary' does not apply to the preset 'hnsw'",
        ),
        (["eval", "{toy}", "--measures", "nDCG@ten", "--out", "{out}"], "unknown measure"),
        (["eval", "{toy}", "--systems", "dense:{toy}", "--out", "{out}"], "not a model folder"),
    ],
)
def test_user_errors_are_one_clear_line(
    args: list[str], expected: str, toy_beir: Path, tmp_path: Path
) -> None:
    fill = {"missing": str(tmp_path / "nope"), "out": str(tmp_path / "o"), "toy": str(toy_beir)}
    result = _ar2(*[a.format(**fill) for a in args])
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert expected in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("ar2: error:")


def test_bad_flag_value_is_rejected_by_argparse() -> None:
    result = _ar2("search", "x", "q", "-k", "0")
    assert result.returncode == 2 and "positive integer" in result.stderr


def test_eval_adds_answer_accuracy_for_qa_data(toy_beir: Path, tmp_path: Path) -> None:
    queries = [json.loads(line) for line in (toy_beir / "queries.jsonl").read_text().splitlines()]
    answers = {"q1": ["smaller fish"], "q2": ["balls"], "q3": ["zebra"]}
    for q in queries:
        q["metadata"] = {"answers": answers.get(q["_id"], [])}
    (toy_beir / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    out = tmp_path / "qa"
    assert main(["-q", "eval", str(toy_beir), "--systems", "bm25", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())["bm25"]
    run = read_run(out / "runs" / "bm25.trec")
    # q1's top hit is d1 (no "smaller fish"); d8 "fish eat smaller fish" is lower; q2 -> d2 has
    # "balls" at rank 1; q3's answer appears nowhere.
    rank_d8 = [h.doc_id for h in run["q1"]].index("d8") + 1
    assert report["Acc@1"] == pytest.approx(1 / 3)
    assert report["Acc@5"] == pytest.approx((1 + (rank_d8 <= 5)) / 3)
    assert "Acc@5" in (out / "report.md").read_text()
