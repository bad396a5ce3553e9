"""Shared fixtures: tiny random BERTs built in-process and a toy BEIR folder. No downloads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from ar2.errors import DataError

WORDS = (
    "cats eat fish dogs chase balls birds sing songs the a of and in on what do does how why "
    "cell cancer protein gene brain heart blood drug trial patients mice risk study effect"
).split()

TOY_DOCS = [
    {"_id": "d1", "title": "Cats", "text": "cats eat fish and cats sing"},
    {"_id": "d2", "title": "Dogs", "text": "dogs chase balls in the park"},
    {"_id": "d3", "title": "Birds", "text": "birds sing songs on the trees"},
    {"_id": "d4", "title": "Cancer", "text": "cancer cell protein gene study"},
    {"_id": "d5", "title": "Brain", "text": "brain and heart blood study in mice"},
    {"_id": "d6", "title": "Drug", "text": "drug trial patients risk effect"},
    {"_id": "q3", "title": "Same id", "text": "a document whose id equals a query id heart risk"},
    {"_id": "d8", "title": "Fish", "text": "fish eat smaller fish"},
]
TOY_QUERIES = [
    {"_id": "q1", "text": "what do cats eat"},
    {"_id": "q2", "text": "dogs chase balls"},
    {"_id": "q3", "text": "heart risk"},
    {"_id": "q4", "text": "cancer gene protein"},
    {"_id": "q5", "text": "drug trial effect on patients"},
]
TOY_QRELS = {
    "test": [("q1", "d1", 2), ("q1", "d8", 1), ("q2", "d2", 1), ("q3", "q3", 1)],
    "train": [("q4", "d4", 1), ("q5", "d6", 1)],
}


def check_error(err: pytest.ExceptionInfo[DataError], name: str, line: int | None) -> str:
    """Assert a DataError names the file, the line (when given) and a fix; return its text."""
    msg = str(err.value)
    assert name in msg
    if line is not None:
        assert f"{name}:{line}:" in msg
        assert err.value.line == line
    assert "Fix:" in msg
    return msg


def write_beir(root: Path) -> Path:
    """Write the toy BEIR folder under ``root`` and return it."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "corpus.jsonl", "w") as f:
        f.writelines(json.dumps(d) + "\n" for d in TOY_DOCS)
    with open(root / "queries.jsonl", "w") as f:
        f.writelines(json.dumps(q) + "\n" for q in TOY_QUERIES)
    (root / "qrels").mkdir(exist_ok=True)
    for split, rows in TOY_QRELS.items():
        lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t{s}" for q, d, s in rows]
        (root / "qrels" / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return root


TOPICS = ["cats", "dogs", "birds", "cancer", "brain", "drug", "heart", "gene", "fish", "mice"]
FILLER = ["study", "effect", "risk", "the", "patients", "trial", "protein", "blood"]


def write_train_toy(root: Path) -> Path:
    """A toy BEIR folder for training: 40 docs on 10 topics, 24 train, 6 test queries.

    Each query names its topic and a detail word; its positive holds both, the other docs of the
    topic hold the topic word only (BM25 hard negatives), and filler words are shared widely.
    """
    docs, queries, train, test = [], [], [], []
    for t, topic in enumerate(TOPICS):
        for j in range(4):
            detail = f"w{t * 4 + j}"
            text = f"{topic} {detail} {FILLER[(t + j) % 8]} {FILLER[(t + 2 * j) % 8]}"
            docs.append({"_id": f"t{t}d{j}", "title": topic, "text": text})
            if j < 3:
                qid = f"t{t}q{j}"
                queries.append({"_id": qid, "text": f"{topic} {detail}"})
                (test if t < 2 and j == 0 else train).append((qid, f"t{t}d{j}", 1))
    root.mkdir(parents=True, exist_ok=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (root / "qrels").mkdir(exist_ok=True)
    for split, rows in (("train", train), ("test", test)):
        lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t{s}" for q, d, s in rows]
        (root / "qrels" / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return root


def killed_at(calls: int, real: Any) -> Any:
    """``real`` (a function of keyword arguments) that raises ``KeyboardInterrupt`` on its
    call number ``calls + 1``: a kill in the middle of a training stage."""
    count = iter(range(10**9))

    def wrapped(**kwargs: Any) -> Any:
        if next(count) == calls:
            raise KeyboardInterrupt
        return real(**kwargs)

    return wrapped


def recipe_toy(root: Path, recipe: str, **tables: dict[str, Any]) -> tuple[Path, Any]:
    """The training toy and a one-round ``toy`` config of ``recipe`` over a tiny BERT without
    dropout, delivering its last round; ``tables`` update the config's tables."""
    from ar2 import config
    from ar2.train.recipes import apply

    data = write_train_toy(root / "data")
    model = build_tiny_bert(root / "tiny", dropout=0.0)
    raw = config.load_toml(config.preset_path("toy")) | {
        "retriever_model": str(model), "ranker_model": str(model), "rounds": 1,
        "deliver": "last"}  # fmt: skip
    raw = apply(recipe, raw)
    for table, values in tables.items():
        raw[table] = raw.get(table, {}) | values
    return data, config.load_ar2_config(raw, f"toy {recipe}")


def assert_same_round_retriever(run: Path, reference: Path) -> None:
    """``run`` delivered the weights ``reference`` did, and they moved off its G0."""
    import numpy as np
    from safetensors.numpy import load_file

    name = "retriever/model.safetensors"
    want, got = load_file(str(reference / name)), load_file(str(run / name))
    assert want.keys() == got.keys()
    for key in want:
        np.testing.assert_allclose(got[key], want[key], atol=1e-5, err_msg=key)
    g0 = load_file(str(reference / "g0" / name))
    assert any(not np.allclose(want[k], g0[k], atol=1e-6) for k in want)  # the round trained


def add_random_ranker(run: Path) -> None:
    """Give a :func:`tiny_train_run` run a ranker: its tiny BERT with a random head."""
    import warnings

    from ar2.encoders import CrossEncoder

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a random head, on purpose
        CrossEncoder.load(run.parent / "bert", precision="fp32").save(run / "ranker")


def check_tuned_teacher(out: Path) -> None:
    """``out/teacher.json`` holds a tuned teacher: the whole grid, and the best of it chosen."""
    record = json.loads((out / "teacher.json").read_text())
    assert record["tuned"] and len(record["grid"]) == 66
    assert record["dev"]["T"] == max(g["nDCG@10"] for g in record["grid"])


def tiny_train_run(root: Path, filler_docs: int = 0) -> tuple[Path, Path]:
    """A finished-run folder over the training toy (retriever, flat index with its documents,
    config, dev split), the toy's corpus grown by ``filler_docs`` documents of filler words;
    returns the run and the data folder."""
    import random

    from ar2.encoders import BiEncoder
    from ar2.index import FaissIndex
    from ar2.types import Doc

    data = write_train_toy(root / "data")
    rng = random.Random(0)
    with (data / "corpus.jsonl").open("a") as f:
        for i in range(filler_docs):
            words = rng.choices([*FILLER, *(f"w{j}" for j in range(40))], k=6)
            f.write(json.dumps({"_id": f"f{i}", "title": "", "text": " ".join(words)}) + "\n")
    run = root / "run"
    bert = build_tiny_bert(root / "bert", dropout=0.0)  # a student's only noise: its layers
    BiEncoder.load(bert, precision="fp32").save(run / "retriever")
    encoder = BiEncoder.load(run / "retriever")
    docs = [Doc(d["_id"], d["text"], d["title"]) for d in
            map(json.loads, (data / "corpus.jsonl").read_text().splitlines())]  # fmt: skip
    index = FaissIndex.build(encoder.encode_docs(docs), [d.id for d in docs])
    index.save(run / "index", {"encoder": encoder.describe()}, docs=docs)
    config = {"seed": 0, "g0": {}, "rounds": 1, "data": {"path": str(data)}}
    (run / "config.json").write_text(json.dumps(config))
    (run / "dev_split.json").write_text(json.dumps({"queries": ["t2q0", "t3q1", "t5q2", "t9q1"]}))
    return run, data


def build_tiny_bert(path: Path, seed: int = 0, dropout: float = 0.1) -> Path:
    """A random-initialised 2-layer, 32-dim BERT with a word-level vocabulary, saved to ``path``."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *[f"w{i}" for i in range(40)]]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    # vocab=, not vocab_file= (which transformers 5 ignores, leaving a 5-token vocabulary)
    tokenizer = BertTokenizerFast(vocab=str(path / "vocab.txt"), do_lower_case=True)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    BertModel(config).save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path


@pytest.fixture(scope="session")
def _tiny_bert_master(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny") / "bert")


@pytest.fixture
def tiny_bert(_tiny_bert_master: Path, tmp_path: Path) -> Path:
    """A fresh copy of the tiny BERT folder (tests may overwrite it)."""
    return Path(shutil.copytree(_tiny_bert_master, tmp_path / "tiny_bert"))


@pytest.fixture
def toy_beir(tmp_path: Path) -> Path:
    """A toy BEIR folder: 8 docs, a 2-relevant-doc query, a query id equal to a doc id."""
    return write_beir(tmp_path / "toy")


def build_tiny_run(root: Path, bert: Path, rerank_k: int = 5) -> Path:
    """A finished-run folder as ``ar2 train`` leaves it (retriever, ranker, index with its
    documents, config.json), made of tiny random BERTs over the toy documents."""
    import warnings

    from ar2.encoders import BiEncoder, CrossEncoder
    from ar2.index import FaissIndex
    from ar2.types import Doc

    docs = [Doc(d["_id"], d["text"], d["title"]) for d in TOY_DOCS]
    BiEncoder.load(bert, precision="fp32").save(root / "retriever")
    encoder = BiEncoder.load(root / "retriever")
    index = FaissIndex.build(encoder.encode_docs(docs), [d.id for d in docs])
    index.save(root / "index", {"encoder": encoder.describe()}, docs=docs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "a new head is initialised": random on purpose
        CrossEncoder.load(bert, precision="fp32").save(root / "ranker")
    (root / "config.json").write_text(json.dumps({"seed": 0, "rerank_k": rerank_k}))
    (root / "report.json").write_text(json.dumps({"ar2-g": {"nDCG@10": 0.5}}))
    return root


@pytest.fixture(scope="session")
def tiny_run(_tiny_bert_master: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny finished run folder shared by the serving tests (read-only)."""
    return build_tiny_run(tmp_path_factory.mktemp("run") / "run", _tiny_bert_master)


def train_mrr(encoder: Any, index: Any, data: Path) -> float:
    """Mean reciprocal rank of the first relevant document over the training queries of the
    BEIR folder ``data``, searched with ``encoder`` in ``index`` (top 50)."""
    import numpy as np

    from ar2.data.beir import load_qrels, load_queries
    from ar2.pipeline import DenseRetriever

    qrels = load_qrels(data / "qrels" / "train.tsv")
    asked = [q for q in load_queries(data / "queries.jsonl") if q.id in qrels]
    run = DenseRetriever(encoder, index).retrieve(asked, 50)
    ranks = [next((r + 1 for r, h in enumerate(run[q.id]) if h.doc_id in qrels[q.id]), 1e9)
             for q in asked]  # fmt: skip
    return float(np.mean([1 / r for r in ranks]))


def assert_per_query_is_the_report(out: Path, report: dict[str, Any]) -> None:
    """``out/per_query.tsv`` and ``per_query.dev.tsv`` hold the test and dev splits' values
    whose means ``report`` gives."""
    import statistics

    from ar2.report import read_per_query

    for split in ("test", "dev"):
        found = read_per_query(out, split)
        assert set(found) == set(report[split]["nDCG@10"])
        for system, mean in report[split]["nDCG@10"].items():
            values = found[system]["nDCG@10"]
            assert len(values) == report[split]["queries"]
            assert statistics.fmean(values.values()) == pytest.approx(mean, abs=1e-12)
