"""Long inputs: queries are cut where the model stops, not before, and every cut is counted
and reported (issue 12, item 1)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ar2.cli import main
from conftest import WORDS

pytest.importorskip("torch")


def _st_folder(bert: Path, max_seq_length: int) -> Path:
    """``bert`` made a sentence-transformers folder (mean pooling) with ``max_seq_length``."""
    (bert / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling",
         "type": "sentence_transformers.models.Pooling"},
    ]))  # fmt: skip
    (bert / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_seq_length}))
    (bert / "1_Pooling").mkdir()
    (bert / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": 32, "pooling_mode_mean_tokens": True})
    )
    return bert


def test_the_query_cut_off_is_the_models_own(tiny_bert: Path) -> None:
    from ar2.encoders import BiEncoder

    plain = BiEncoder.load(tiny_bert)  # a plain HF folder: its 128 positions
    assert (plain.config.query_max_length, plain.config.doc_max_length) == (128, 128)
    st = BiEncoder.load(_st_folder(tiny_bert, 100))  # sentence-transformers: max_seq_length
    assert (st.config.query_max_length, st.config.doc_max_length) == (100, 100)
    assert BiEncoder.load(tiny_bert, query_max_length=16).config.query_max_length == 16


def test_cuts_are_counted_and_the_vectors_are_those_of_the_cut_text(tiny_bert: Path) -> None:
    from ar2.encoders import BiEncoder

    encoder = BiEncoder.load(tiny_bert, query_max_length=8, precision="fp32")
    long = "cats eat fish and dogs chase balls in the park"  # 12 tokens with [CLS] and [SEP]
    vectors = encoder.encode_queries([long, "cats", long])
    assert encoder.cuts["queries"].seen == 2 and encoder.cuts["queries"].cut == 1  # distinct
    assert "1 of 2 queries (50.0%) were longer than 8 tokens and cut" in encoder.truncation()
    cut_text = encoder.tokenizer.decode(encoder.tokenizer(long)["input_ids"][1:7])  # 6 + 2 special
    np.testing.assert_allclose(vectors[0], encoder.encode_queries([cut_text])[0], atol=1e-5)
    docs = [long] * 3 + ["cats"]
    assert encoder.count_cuts(docs).cut == 0  # documents at 128: nothing cut
    assert "nothing was cut" not in encoder.truncation()


def _long_query_folder(root: Path) -> Path:
    """A toy BEIR folder whose queries run past 128 tokens, the topic word near the start."""
    rng = np.random.default_rng(0)
    topics = ["cats", "dogs", "birds", "cancer", "brain", "drug", "heart", "gene", "fish", "mice"]
    docs, queries, qrels = [], [], []
    for t, topic in enumerate(topics):
        for j in range(3):
            filler = " ".join(rng.choice(WORDS, 6))
            docs.append(
                {"_id": f"d{t}{j}", "title": topic, "text": f"{topic} w{t * 3 + j} {filler}"}
            )
        tail = " ".join(rng.choice(WORDS, 150 + 20 * t))  # 150-330 words: past 128 tokens
        queries.append({"_id": f"q{t}", "text": f"{topic} w{t * 3} {tail}"})
        qrels.append((f"q{t}", f"d{t}0"))
    root.mkdir(parents=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (root / "qrels").mkdir()
    rows = "".join(f"{q}\t{d}\t1\n" for q, d in qrels)
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + rows)
    return root


def test_long_queries_score_as_sentence_transformers_scores_them(
    tiny_bert: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The acceptance: `ar2 eval --systems dense` on queries of 300+ tokens gives
    sentence-transformers' nDCG@10 with the same model (within 0.002), and says what it cut."""
    import ir_measures
    from sentence_transformers import SentenceTransformer

    data = _long_query_folder(tmp_path / "long")
    out = tmp_path / "report"
    code = main(["-q", "eval", str(data), "--systems", f"dense:{tiny_bert}", "--out", str(out),
                 "--precision", "fp32"])  # fmt: skip
    assert code == 0
    warned = capsys.readouterr().err
    ours = json.loads((out / "report.json").read_text())[f"dense:{tiny_bert}"]["nDCG@10"]

    model = SentenceTransformer(str(tiny_bert), device="cpu")
    assert model.max_seq_length == 128
    docs = [json.loads(x) for x in (data / "corpus.jsonl").read_text().splitlines()]
    queries = [json.loads(x) for x in (data / "queries.jsonl").read_text().splitlines()]
    d = model.encode([f"{x['title']} {x['text']}" for x in docs], normalize_embeddings=True)
    q = model.encode([x["text"] for x in queries], normalize_embeddings=True)
    scores = q @ d.T  # (queries, docs)
    run = [ir_measures.ScoredDoc(qq["_id"], dd["_id"], float(scores[i, j]))
           for i, qq in enumerate(queries) for j, dd in enumerate(docs)]  # fmt: skip
    qrels = ir_measures.read_trec_qrels("\n".join(f"q{t} 0 d{t}0 1" for t in range(10)))
    theirs = ir_measures.calc_aggregate([ir_measures.nDCG @ 10], qrels, run)[ir_measures.nDCG @ 10]
    assert abs(ours - theirs) <= 0.002, (ours, theirs)

    protocol = json.loads((out / "protocol.json").read_text())
    assert "10 of 10 queries (100.0%) were longer than 128 tokens and cut" in protocol["truncation"]
    assert "were longer than 128 tokens and cut" in (out / "report.md").read_text()
    assert "10 of 10 queries (100.0%) were longer than 128 tokens and cut. Fix:" in warned


@pytest.mark.parametrize("max_len", [3, 4, 8, 64])
def test_token_ids_are_the_tokenizers_own_truncation(tiny_bert: Path, max_len: int) -> None:
    from transformers import AutoTokenizer

    from ar2.encoders import BiEncoder

    encoder = BiEncoder.load(tiny_bert)
    texts = ["cats eat fish and dogs chase balls in the park", "cats", "", "the " * 200]
    want = encoder.tokenizer(texts, truncation=True, max_length=max_len)["input_ids"]
    assert encoder._token_ids(texts, max_len, "queries") == want
    slow = AutoTokenizer.from_pretrained(str(tiny_bert), use_fast=False)
    if getattr(slow, "is_fast", False):  # transformers 5 gives a fast one: hide its backend

        class Slow:
            is_fast = False

            def __call__(self, *args: object, **kwargs: object) -> object:
                return encoder_tokenizer(*args, **kwargs)

        encoder_tokenizer, slow = slow, Slow()
    encoder.tokenizer = slow  # the second path: a slow tokenizer, some texts cut, some not
    encoder.cuts["queries"] = type(encoder.cuts["queries"])()
    assert encoder._token_ids(texts, max_len, "queries") == want
    full = [len(x) for x in slow(texts)["input_ids"]]  # type: ignore[operator,index]
    assert encoder.cuts["queries"].cut == sum(n > max_len for n in full)


def test_queries_searched_twice_are_counted_once(
    tiny_bert: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`dense`, `hybrid` and their reranked variants encode the same queries again."""
    from ar2.encoders import CrossEncoder

    with pytest.warns(UserWarning, match="new head"):
        CrossEncoder.load(tiny_bert).save(tmp_path / "ranker")
    data = _long_query_folder(tmp_path / "long")
    out = tmp_path / "report"
    systems = f"dense:{tiny_bert},hybrid:{tiny_bert}"
    code = main(["-q", "eval", str(data), "--systems", systems, "--reranker",
                 str(tmp_path / "ranker"), "--rerank-k", "5", "--out", str(out)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    protocol = json.loads((out / "protocol.json").read_text())
    assert "10 of 10 queries (100.0%)" in protocol["truncation"]


def test_a_roberta_style_model_takes_two_positions_fewer(tmp_path: Path) -> None:
    from ar2.encoders._hf import max_positions

    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "roberta", "max_position_embeddings": 514})
    )
    assert max_positions(tmp_path) == 512
