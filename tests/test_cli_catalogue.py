"""Every CLI command over a catalogue of defective inputs: one line, ``ar2: error: <where>:
<problem>. Fix: <fix>.``, exit status 2, and never a traceback (issue 11, item 4).

``test_each_finding_is_one_clear_line`` holds one case per finding of the probe; the
catalogue tests run every command over every defective data folder and index folder, and fail
on any exception that escapes ``main`` (a traceback) or any error that is not one clean line.
"""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from ar2.cli import main
from conftest import build_tiny_bert, write_train_toy

pytest.importorskip("torch")

DEEP = "[" * 100_000
DIGITS = "1" * 5000


def _corpus_lines(data: Path) -> list[str]:
    return (data / "corpus.jsonl").read_text().splitlines()


def _set_corpus(data: Path, lines: list[str]) -> None:
    (data / "corpus.jsonl").write_text("".join(line + "\n" for line in lines))


def _append_corpus(line: str) -> Callable[[Path], None]:
    return lambda data: _set_corpus(data, [*_corpus_lines(data), line])


def _retext(make: Callable[[str], dict]) -> Callable[[Path], None]:
    """Every document rewritten by ``make(its id)``."""

    def apply(data: Path) -> None:
        ids = [json.loads(line)["_id"] for line in _corpus_lines(data)]
        _set_corpus(data, [json.dumps({"_id": i} | make(i)) for i in ids])

    return apply


def _train_qrels(text: Callable[[str], str]) -> Callable[[Path], None]:
    def apply(data: Path) -> None:
        for split in ("train", "test"):
            path = data / "qrels" / f"{split}.tsv"
            path.write_text(text(path.read_text()))

    return apply


def _first_grade(value: str) -> Callable[[str], str]:
    def swap(text: str) -> str:
        lines = text.splitlines()
        qid, doc, _ = lines[1].split("\t")
        return "\n".join([lines[0], f"{qid}\t{doc}\t{value}", *lines[2:]]) + "\n"

    return swap


def _id_with(char: str) -> Callable[[Path], None]:
    escaped = json.dumps(f"t0{char}d0")  # the JSON escape, as an exporter writes it
    return lambda data: _set_corpus(
        data, [_corpus_lines(data)[0].replace('"t0d0"', escaped), *_corpus_lines(data)[1:]]
    )


DATA_DEFECTS: dict[str, Callable[[Path], None]] = {  # each defect's error is in EXPECTED
    "deep-json-array": _append_corpus(DEEP),
    "5000-digit-number": _append_corpus('{"_id": "x", "text": "a", "n": ' + DIGITS + "}"),
    "5000-digit-id": _append_corpus('{"_id": ' + DIGITS + ', "text": "a"}'),
    "lone-surrogate-id": _append_corpus('{"_id": "x\\ud800", "text": "a"}'),
    "lone-surrogate-text": _append_corpus('{"_id": "x", "text": "a \\udc00 b"}'),
    "id-u2028": _id_with("\u2028"),
    "id-u0085": _id_with("\x85"),
    "id-formfeed": _id_with("\f"),
    "id-vtab": _id_with("\v"),
    "id-space": _id_with(" "),
    "id-tab": _id_with("\t"),
    "all-empty-corpus": _retext(lambda i: {"title": "", "text": ""}),
    "contents-not-text": _retext(lambda i: {"contents": "cats eat fish"}),
    "stopwords-only": _retext(lambda i: {"text": "the of and a in"}),
    "grade-2^32+1": _train_qrels(_first_grade("4294967297")),
    "grades-all-zero": _train_qrels(lambda t: t.replace("\t1\n", "\t0\n")),
    "not-utf8-corpus": lambda data: (data / "corpus.jsonl").write_bytes(b'{"_id": "\xff"}\n'),
    "qrels-unknown-doc": _train_qrels(lambda t: t + "t0q0\tnope\t1\n"),
    "no-corpus": lambda data: (data / "corpus.jsonl").unlink(),
}


EXPECTED = {
    "deep-json-array": "corpus.jsonl:41: JSON nested too deeply",
    "5000-digit-number": "corpus.jsonl:41: unreadable JSON (Exceeds the limit (4300 digits)",
    "5000-digit-id": "corpus.jsonl:41: unreadable JSON (Exceeds the limit (4300 digits)",
    "lone-surrogate-id": "corpus.jsonl:41: document id 'x\\ud800' holds a lone surrogate",
    "lone-surrogate-text": 'corpus.jsonl:41: "text" holds a lone surrogate (U+DC00)',
    "id-u2028": "corpus.jsonl:1: document id 't0\\u2028d0' holds a line break (U+2028)",
    "id-u0085": "corpus.jsonl:1: document id 't0\\x85d0' holds a line break (U+0085)",
    "id-formfeed": "corpus.jsonl:1: document id 't0\\x0cd0' holds a line break (U+000C)",
    "id-vtab": "corpus.jsonl:1: document id 't0\\x0bd0' holds a line break (U+000B)",
    "id-space": "corpus.jsonl:1: document id 't0 d0' holds a space",
    "id-tab": "corpus.jsonl:1: document id 't0\\td0' holds a tab",
    "all-empty-corpus": "corpus.jsonl: all 40 document(s) are empty",
    "contents-not-text": "corpus.jsonl: all 40 document(s) are empty",
    "stopwords-only": ": no word to index in any of the 40 documents",
    "grade-2^32+1": ".tsv:2: relevance grade 4294967297 is outside -1000..1000",
    "grades-all-zero": ".tsv: no relevant judgement",
    "not-utf8-corpus": "corpus.jsonl:1: invalid UTF-8 byte 0xff",
    "qrels-unknown-doc": "document id 'nope' is not in the corpus",
    "no-corpus": "corpus.jsonl: corpus file not found",
}
"""A fragment of each defect's error: where it is and what it is."""
QRELS = ("grade", "grades", "qrels")
"""Defects of the qrels, which ``ar2 index`` does not read."""
HARMLESS = {("stopwords-only", "index-dense")}
"""Defects that a command rightly does not mind (a dense encoder reads stopwords)."""


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("catalogue")
    return {"data": write_train_toy(root / "data"), "bert": build_tiny_bert(root / "bert")}


@pytest.fixture
def bad_data(base: dict[str, Path], tmp_path: Path) -> Callable[[str], Path]:
    def make(defect: str) -> Path:
        data = Path(shutil.copytree(base["data"], tmp_path / defect))
        DATA_DEFECTS[defect](data)
        return data

    return make


def _commands(data: Path, bert: Path, out: Path) -> dict[str, list[str]]:
    toy = ["--preset", "toy", "--model", str(bert)]
    return {
        "index-bm25": ["index", str(data), "--kind", "bm25", "--out", str(out / "bm25")],
        "index-dense": [
            "index",
            str(data),
            "--kind",
            "dense",
            "--model",
            str(bert),
            "--out",
            str(out / "dense"),
        ],  # fmt: skip
        "eval": ["eval", str(data), "--systems", "bm25", "--out", str(out / "eval")],
        "train": ["train", str(data), *toy, "--out", str(out / "run")],
    }


def _clean_error(capsys: pytest.CaptureFixture[str], code: int) -> str:
    """Assert exit status 2 and one line ``ar2: error: <where>: <problem>. Fix: <fix>.``"""
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "Traceback" not in err, err
    errors = [x for x in err.splitlines() if "error" in x.lower()]
    assert len(errors) == 1, err  # above it at most progress bars, such as loading weights
    line = err.splitlines()[-1]
    assert line.startswith("ar2: error: ") and ". Fix: " in line and line.endswith("."), line
    assert "Traceback" not in line
    return line


@pytest.mark.parametrize("defect", sorted(DATA_DEFECTS))
def test_every_command_on_defective_data_fails_in_one_line(
    defect: str, bad_data: Callable[[str], Path], base: dict[str, Path], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """Any exception escaping ``main`` fails this test with its traceback."""
    data = bad_data(defect)
    for name, argv in _commands(data, base["bert"], tmp_path / "out").items():
        code = main(["-q", *argv])
        if (defect, name) in HARMLESS or (defect.startswith(QRELS) and name.startswith("index")):
            assert code == 0, capsys.readouterr().err  # an index does not read the qrels
            capsys.readouterr()
            continue
        line = _clean_error(capsys, code)
        assert EXPECTED[defect] in line, (name, line)


def _index(base: dict[str, Path], tmp_path: Path, kind: str) -> Path:
    out = tmp_path / kind
    argv = ["-q", "index", str(base["data"]), "--kind", kind, "--out", str(out)]
    assert main([*argv, "--model", str(base["bert"])] if kind == "dense" else argv) == 0
    return out


INDEX_DEFECTS: dict[str, Callable[[Path], None]] = {
    "truncated-manifest": lambda p: (p / "manifest.json").write_text('{"kind": "bm'),
    "manifest-not-object": lambda p: (p / "manifest.json").write_text("[1, 2]"),
    "ids-line-removed": lambda p: (p / "ids.txt").write_text(
        "".join(x + "\n" for x in (p / "ids.txt").read_text().split("\n")[1:-1])
    ),
    "ids-deleted": lambda p: (p / "ids.txt").unlink(),
    "arrays-deleted": lambda p: [f.unlink() for f in (p / "bm25s").glob("*.npy")],
    "arrays-truncated": lambda p: [
        f.write_bytes(f.read_bytes()[:40]) for f in (p / "bm25s").glob("*.npy")
    ],  # fmt: skip
    "faiss-deleted": lambda p: (p / "index.faiss").unlink(),
    "faiss-truncated": lambda p: (p / "index.faiss").write_bytes(b"IxF2"),
}


@pytest.mark.parametrize("defect", sorted(INDEX_DEFECTS))
def test_search_and_serve_on_a_damaged_index_fail_in_one_line(
    defect: str, base: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kind = "dense" if "faiss" in defect else "bm25"
    index = _index(base, tmp_path, kind)
    capsys.readouterr()
    INDEX_DEFECTS[defect](index)
    _clean_error(capsys, main(["-q", "search", str(index), "cats"]))
    cmd = [sys.executable, "-m", "ar2.cli", "-q", "serve", str(index), "--port", "0"]
    served = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert served.returncode == 2 and "Traceback" not in served.stderr, served.stderr
    assert served.stderr.strip().splitlines()[-1].startswith("ar2: error: ")


def _toml(tmp_path: Path, text: str) -> Path:
    preset = Path(__file__).parents[1] / "src" / "ar2" / "presets" / "toy.toml"
    path = tmp_path / "my.toml"
    path.write_text(preset.read_text() + text)
    return path


def _run_folder(base: dict[str, Path], tmp_path: Path, data: Path | None = None) -> Path:
    """A run folder as `ar2 train` starts it (config.json with its data), no training."""
    from ar2.config import load_ar2_config, load_toml
    from ar2.train.data import data_record
    from ar2.train.run_config import config_json

    preset = Path(__file__).parents[1] / "src" / "ar2" / "presets" / "toy.toml"
    model = str(base["bert"])
    cfg = load_ar2_config(load_toml(preset) | {"retriever_model": model, "ranker_model": model})
    run = tmp_path / "run"
    run.mkdir()
    record = config_json(cfg) | {"data": data_record(data or base["data"])}
    (run / "config.json").write_text(json.dumps(record))
    return run


def _checkpoint(run: Path, state: bytes, meta: str) -> None:
    folder = run / "checkpoints" / "g0"
    folder.mkdir(parents=True)
    (folder / "state.safetensors").write_bytes(state)
    (folder / "state.json").write_text(meta)


FINDINGS: dict[str, tuple[Callable[[dict[str, Path], Path], list[str]], str]] = {}
"""Finding -> (make the inputs and return argv, text the error must hold)."""


def finding(name: str, expected: str):  # type: ignore[no-untyped-def]
    def register(make: Callable[[dict[str, Path], Path], list[str]]):  # type: ignore[no-untyped-def]
        FINDINGS[name] = (make, expected)
        return make

    return register


@finding("--out holds unrelated files", "--overwrite")
def _(base: dict[str, Path], tmp: Path) -> list[str]:
    (tmp / "v").mkdir()
    (tmp / "v" / "thesis.tex").write_text("precious")
    return ["index", str(base["data"]), "--kind", "bm25", "--out", str(tmp / "v")]


@finding("--out is the data folder", "is the input folder")
def _(base: dict[str, Path], tmp: Path) -> list[str]:
    return ["index", str(base["data"]), "--kind", "bm25", "--out", str(base["data"])]


@finding("--out contains the data folder", "contains the input folder")
def _(base: dict[str, Path], tmp: Path) -> list[str]:
    data = shutil.copytree(base["data"], tmp / "D" / "setA")
    return ["index", str(data), "--kind", "bm25", "--out", str(tmp / "D")]


@finding("--resume on other data", "other data")
def _(base: dict[str, Path], tmp: Path) -> list[str]:
    run = _run_folder(base, tmp)
    other = shutil.copytree(base["data"], tmp / "B")
    (other / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nt0q1\tt0d1\t1\n")
    return ["train", str(other), "--preset", "toy", "--model", str(base["bert"]),
            "--out", str(run), "--resume"]  # fmt: skip


@finding("--resume into a folder that is not a run", "is not an ar2 training run")
def _(base: dict[str, Path], tmp: Path) -> list[str]:
    (tmp / "mine").mkdir()
    (tmp / "mine" / "notes.md").write_text("x")
    return ["train", str(base["data"]), "--preset", "toy", "--model", str(base["bert"]),
            "--out", str(tmp / "mine"), "--resume"]  # fmt: skip


@finding("corrupt config.json of a run", "config.json: not valid JSON")
def _(base: dict[str, Path], tmp: Path) -> list[str]:
    run = _run_folder(base, tmp)
    (run / "config.json").write_text('{"seed": 0, "g0": {"st')
    return ["train", str(base["data"]), "--preset", "toy", "--model", str(base["bert"]),
            "--out", str(run), "--resume"]  # fmt: skip


@finding("corrupt state.json", "damaged checkpoint")
def _(base: dict[str, Path], tmp: Path) -> list[str]:
    import numpy as np
    from safetensors.numpy import save

    run = _run_folder(base, tmp)
    _checkpoint(run, save({"x": np.zeros(2, dtype=np.float32)}), '{"step": ')
    return ["train", str(base["data"]), "--preset", "toy", "--model", str(base["bert"]),
            "--out", str(run), "--resume"]  # fmt: skip


@finding("corrupt state.safetensors", "damaged checkpoint")
def _(base: dict[str, Path], tmp: Path) -> list[str]:
    run = _run_folder(base, tmp)
    _checkpoint(run, b"\x10\x00\x00\x00garbage", '{"step": 2, "optim": {}}')
    return ["train", str(base["data"]), "--preset", "toy", "--model", str(base["bert"]),
            "--out", str(run), "--resume"]  # fmt: skip


@finding("--config missing", "cannot read the config")
def _(base: dict[str, Path], tmp: Path) -> list[str]:
    return ["train", str(base["data"]), "--config", str(tmp / "nope.toml"), "--out", str(tmp / "r")]


@finding("--config is a folder", "cannot read the config")
def _(base: dict[str, Path], tmp: Path) -> list[str]:
    return ["train", str(base["data"]), "--config", str(tmp), "--out", str(tmp / "r")]


@finding("--config is not UTF-8", "not UTF-8")
def _(base: dict[str, Path], tmp: Path) -> list[str]:
    (tmp / "latin1.toml").write_bytes("rounds = 2 # caf\xe9\n".encode("latin-1"))
    config = str(tmp / "latin1.toml")
    return ["train", str(base["data"]), "--config", config, "--out", str(tmp / "r")]


@finding("g0 = 5 in the config", "g0 = 5 is an integer, not a table")
def _(base: dict[str, Path], tmp: Path) -> list[str]:
    (tmp / "g0.toml").write_text("g0 = 5\n")
    return ["train", str(base["data"]), "--config", str(tmp / "g0.toml"), "--out", str(tmp / "r")]


@finding('rounds = "two" (before G0)', "rounds = 'two' is a string")
def _(base: dict[str, Path], tmp: Path) -> list[str]:
    (tmp / "r.toml").write_text('rounds = "two"\n')
    return ["train", str(base["data"]), "--config", str(tmp / "r.toml"), "--out", str(tmp / "r")]


@finding("a 128-position model against doc_max_length = 256", "at most 128 tokens")
def _(base: dict[str, Path], tmp: Path) -> list[str]:
    config = _toml(tmp, "").read_text().replace("doc_max_length = 32", "doc_max_length = 256")
    (tmp / "long.toml").write_text(config)
    return ["train", str(base["data"]), "--config", str(tmp / "long.toml"),
            "--model", str(base["bert"]), "--out", str(tmp / "r")]  # fmt: skip


def _dense_index(base: dict[str, Path], tmp: Path, *flags: str) -> list[str]:
    model = str(base["bert"])
    return ["index", str(base["data"]), "--kind", "dense", "--model", model, *flags,
            "--out", str(tmp / "i")]  # fmt: skip


finding("--factory garbage", "FAISS cannot build it")(
    lambda base, tmp: _dense_index(base, tmp, "--factory", "garbage")
)
finding("--factory IVF100,Flat on 40 documents", "needs at least 100 documents")(
    lambda base, tmp: _dense_index(base, tmp, "--factory", "IVF100,Flat")
)
finding("--preset ivfpq on fewer than 256 documents", "needs at least 256 documents")(
    lambda base, tmp: _dense_index(base, tmp, "--preset", "ivfpq")
)


@finding("eval --out onto an existing file", "--out is a file")
def _(base: dict[str, Path], tmp: Path) -> list[str]:
    (tmp / "report.txt").write_text("mine")
    return ["eval", str(base["data"]), "--systems", "bm25", "--out", str(tmp / "report.txt")]


@finding("eval --out not writable (checked before retrieval)", "cannot write there")
def _(base: dict[str, Path], tmp: Path) -> list[str]:
    (tmp / "file").write_text("x")
    return ["eval", str(base["data"]), "--systems", "bm25", "--out", str(tmp / "file" / "e")]


@finding("an id with a space (named at its input line)", "corpus.jsonl:1: document id")
def _(base: dict[str, Path], tmp: Path) -> list[str]:
    data = shutil.copytree(base["data"], tmp / "data")
    _id_with(" ")(data)
    return ["eval", str(data), "--systems", "bm25", "--out", str(tmp / "e")]


@finding("--preset ../../x", "choose one of full, quick, toy")
def _(base: dict[str, Path], tmp: Path) -> list[str]:
    return ["train", str(base["data"]), "--preset", "../../x", "--out", str(tmp / "r")]


@pytest.mark.parametrize("name", sorted(FINDINGS))
def test_each_finding_is_one_clear_line(
    name: str, base: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make, expected = FINDINGS[name]
    argv = make(base, tmp_path)
    line = _clean_error(capsys, main(["-q", *argv]))
    assert expected in line, line


def test_an_unreadable_input_is_one_line(
    base: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Root reads every file whatever its mode, so the refusal is simulated at ``open``."""
    corpus = base["data"] / "corpus.jsonl"
    real_open = Path.open

    def refuse(self: Path, *args, **kwargs):  # type: ignore[no-untyped-def]
        if self == corpus:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", refuse)
    code = main(["-q", "index", str(base["data"]), "--kind", "bm25", "--out", str(tmp_path / "i")])
    line = _clean_error(capsys, code)
    assert f"{corpus}: Permission denied. Fix: check the permissions" in line


def test_a_full_disk_is_one_line(
    base: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """ENOSPC from the first write (the eval's manifest); no half-written file is left."""
    import ar2._io

    real_fdopen = ar2._io.os.fdopen

    class Full:
        def __init__(self, f):  # type: ignore[no-untyped-def]
            self.f = f

        def __enter__(self):  # type: ignore[no-untyped-def]
            return self

        def __exit__(self, *exc):  # type: ignore[no-untyped-def]
            self.f.close()

        def write(self, data: bytes) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")  # as os.write raises it

    monkeypatch.setattr(ar2._io.os, "fdopen", lambda fd, mode: Full(real_fdopen(fd, mode)))
    out = tmp_path / "e"
    code = main(["-q", "eval", str(base["data"]), "--systems", "bm25", "--out", str(out)])
    line = _clean_error(capsys, code)
    assert f"{out / 'manifest.json'}: No space left on device. Fix: free disk space" in line
    assert not [p for p in out.rglob("*") if p.is_file()]  # no temp file left behind


@pytest.mark.parametrize("flags", [["--factory", "garbage"], ["--preset", "ivfpq"]])
def test_an_index_that_cannot_be_built_is_refused_before_any_encoding(
    flags: list[str], base: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    from ar2.encoders import BiEncoder

    def no_encoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("the corpus was encoded before the factory was checked")

    monkeypatch.setattr(BiEncoder, "encode_docs_to", no_encoding)
    _clean_error(capsys, main(["-q", *_dense_index(base, tmp_path, *flags)]))
    assert not (tmp_path / "i").exists()
