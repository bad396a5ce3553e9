"""Outputs never destroy what ar2 did not make: --out checks, --overwrite, locks, leftovers,
umask, and runs bound to their data (issue 11, items 1 and 3)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from ar2._io import atomic_dir, make_temp_dir
from ar2._outdir import lock
from ar2.cli import main
from ar2.errors import Ar2Error


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(["-q", *argv])
    return code, capsys.readouterr().err


def _one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ar2: error: ") and "Fix:" in lines[0], err
    return lines[0]


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_index_refuses_a_folder_holding_unrelated_files(toy_beir: Path, tmp_path: Path, capsys):
    """The acceptance case: `ar2 index DATA --out DIR` on a DIR holding an unrelated file."""
    out = tmp_path / "v"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    code, err = _run(capsys, "index", str(toy_beir), "--kind", "bm25", "--out", str(out))
    assert code == 2 and "--overwrite" in _one_line_error(err)
    assert (out / "thesis.tex").read_text() == "precious"
    assert sorted(p.name for p in out.iterdir()) == ["thesis.tex"]


def test_index_refuses_an_out_that_is_inside_or_around_its_input(
    toy_beir: Path, tmp_path: Path, capsys
) -> None:
    before = _tree(toy_beir)
    for out, relation in [(toy_beir, "is the input"), (toy_beir / "x", "lies inside")]:
        code, err = _run(capsys, "index", str(toy_beir), "--kind", "bm25", "--out", str(out))
        assert code == 2 and relation in _one_line_error(err)
    nested = tmp_path / "D" / "setA"
    shutil.copytree(toy_beir, nested)
    (tmp_path / "D" / "sibling.txt").write_text("keep")
    code, err = _run(capsys, "index", str(nested), "--kind", "bm25", "--out", str(tmp_path / "D"))
    assert code == 2 and "contains the input" in _one_line_error(err)
    code, err = _run(
        capsys, "index", str(toy_beir), "--kind", "bm25", "--out", str(toy_beir), "--overwrite"
    )
    assert code == 2  # --overwrite never allows writing over an input
    assert _tree(toy_beir) == before
    assert (tmp_path / "D" / "sibling.txt").read_text() == "keep"


def test_overwrite_replaces_and_an_index_replaces_an_index(toy_beir: Path, tmp_path: Path, capsys):
    out = tmp_path / "v"
    out.mkdir()
    (out / "thesis.tex").write_text("mine")
    code, _ = _run(capsys, "index", str(toy_beir), "--kind", "bm25", "--out", str(out),
                   "--overwrite")  # fmt: skip
    assert code == 0 and not (out / "thesis.tex").exists() and (out / "manifest.json").is_file()
    code, _ = _run(capsys, "index", str(toy_beir), "--kind", "bm25", "--out", str(out))
    assert code == 0  # an ar2 index of the same kind is replaced without --overwrite


def test_an_out_that_is_a_file_or_another_kind_is_refused(toy_beir: Path, tmp_path: Path, capsys):
    file = tmp_path / "notes.txt"
    file.write_text("mine")
    index = tmp_path / "index"
    assert _run(capsys, "index", str(toy_beir), "--kind", "bm25", "--out", str(index))[0] == 0
    for argv in (
        ["index", str(toy_beir), "--kind", "bm25", "--out", str(file)],
        ["eval", str(toy_beir), "--systems", "bm25", "--out", str(file)],
        ["eval", str(toy_beir), "--systems", "bm25", "--out", str(index)],  # an index, not eval
        ["index", str(toy_beir), "--kind", "bm25", "--out", str(file / "sub")],  # unwritable
    ):
        code, err = _run(capsys, *argv)
        assert code == 2, argv
        _one_line_error(err)
    assert file.read_text() == "mine" and (index / "manifest.json").is_file()


def test_the_library_refuses_to_replace_what_it_did_not_write(tmp_path: Path) -> None:
    out = tmp_path / "v"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    with pytest.raises(Ar2Error, match="did not write.*thesis.tex.*Fix:"):
        with atomic_dir(out):
            pass
    from ar2.index import BM25Index
    from ar2.types import Doc

    with pytest.raises(Ar2Error, match="did not write"):
        BM25Index.build([Doc("d1", "cats eat fish")]).save(out)
    assert (out / "thesis.tex").read_text() == "precious"


def test_eval_clears_only_its_own_previous_artifacts(toy_beir: Path, tmp_path: Path, capsys):
    out = tmp_path / "ev"
    assert _run(capsys, "eval", str(toy_beir), "--systems", "bm25", "--out", str(out))[0] == 0
    (out / "notes.md").write_text("mine")
    (out / "runs" / "mine.trec").write_text("q1 Q0 d1 1 1.0 mine\n")
    assert (out / "runs" / "bm25.trec").is_file()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "eval" and "runs/bm25.trec" in manifest["files"]
    code, _ = _run(capsys, "eval", str(toy_beir), "--systems", "bm25,bm25", "--depth", "5",
                   "--out", str(out))  # fmt: skip
    assert code == 0
    (out / "manifest.json").write_text(json.dumps(manifest | {"files": ["runs/gone.trec"]}))
    (out / "runs" / "gone.trec").write_text("x")  # what the 'previous' eval wrote
    assert _run(capsys, "eval", str(toy_beir), "--systems", "bm25", "--out", str(out))[0] == 0
    assert not (out / "runs" / "gone.trec").exists()
    assert (out / "notes.md").read_text() == "mine"
    assert (out / "runs" / "mine.trec").is_file() and (out / "runs" / "bm25.trec").is_file()


def test_an_eval_folder_from_before_manifests_is_written_into_without_loss(
    toy_beir: Path, tmp_path: Path, capsys
) -> None:
    """No manifest says what an old eval wrote, so nothing there is removed."""
    out = tmp_path / "ev"
    assert _run(capsys, "eval", str(toy_beir), "--systems", "bm25", "--out", str(out))[0] == 0
    (out / "manifest.json").unlink()  # as ar2 wrote it before this change
    (out / "runs" / "dense.trec").write_text("q1 Q0 d1 1 1.0 dense\n")
    assert _run(capsys, "eval", str(toy_beir), "--systems", "bm25", "--out", str(out))[0] == 0
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["bm25.trec", "dense.trec"]
    assert json.loads((out / "manifest.json").read_text())["complete"] is True


def test_eval_removes_only_regular_files_it_listed(toy_beir: Path, tmp_path: Path, capsys):
    """A tampered or odd manifest never reaches outside the folder, through a link, or to a
    name eval does not write."""
    out = tmp_path / "ev"
    assert _run(capsys, "eval", str(toy_beir), "--systems", "bm25", "--out", str(out))[0] == 0
    keep = {name: tmp_path / name for name in ("notes.md", "r", "outside.trec")}
    for path in keep.values():
        path.write_text("mine")
    (out / "r").write_text("mine")
    (out / "runs" / "dense.trec").symlink_to(keep["notes.md"])
    manifest = json.loads((out / "manifest.json").read_text())
    listed = ["runs/dense.trec", "../outside.trec", str(keep["outside.trec"]), "r", "report.md",
              "runs/../runs/bm25.trec", 7, ["x"]]  # fmt: skip
    (out / "manifest.json").write_text(json.dumps(manifest | {"files": listed}))
    code, _ = _run(capsys, "eval", str(toy_beir), "--systems", "bm25", "--depth", "5",
                   "--out", str(out))  # fmt: skip
    assert code == 0
    assert all(path.read_text() == "mine" for path in keep.values())
    assert (out / "r").read_text() == "mine" and (out / "runs" / "dense.trec").is_symlink()
    assert (out / "runs" / "bm25.trec").is_file() and (out / "report.md").is_file()
    (out / "manifest.json").write_text(json.dumps(manifest | {"files": "report.md"}))
    assert _run(capsys, "eval", str(toy_beir), "--systems", "bm25", "--out", str(out))[0] == 0
    assert (out / "r").read_text() == "mine"  # a string is not a list of names


def test_eval_overwrite_writes_into_a_folder_and_removes_nothing_of_it(
    toy_beir: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "project"
    (out / "runs").mkdir(parents=True)
    (out / "runs" / "mine.trec").write_text("q1 Q0 d1 1 1.0 mine\n")
    (out / "sub").mkdir()
    (out / "sub" / ".thesis.tex.ar2-abcd1234.tmp").write_text("another program's, by name")
    (out / "sub" / ".thesis.tex.x1y2z3ab.tmp").write_text("an editor's")
    code, err = _run(capsys, "eval", str(toy_beir), "--systems", "bm25", "--out", str(out))
    assert code == 2 and "--overwrite" in _one_line_error(err)
    code, _ = _run(capsys, "eval", str(toy_beir), "--systems", "bm25", "--out", str(out),
                   "--overwrite")  # fmt: skip
    assert code == 0 and (out / "report.json").is_file()
    assert (out / "runs" / "mine.trec").is_file()
    assert sorted(p.name for p in (out / "sub").iterdir()) == [
        ".thesis.tex.ar2-abcd1234.tmp",
        ".thesis.tex.x1y2z3ab.tmp",
    ]  # not an ar2 folder: its insides are not cleaned


def test_a_killed_eval_leaves_an_eval_folder(
    toy_beir: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ar2.comparison

    out = tmp_path / "ev"

    def killed(*args: object) -> None:
        raise KeyboardInterrupt  # as a kill after the runs, before the report

    monkeypatch.setattr(ar2.comparison, "score_and_report", killed)
    code, _ = _run(capsys, "eval", str(toy_beir), "--systems", "bm25", "--out", str(out))
    assert code == 130 and (out / "runs" / "bm25.trec").is_file()
    assert json.loads((out / "manifest.json").read_text())["complete"] is False
    monkeypatch.undo()
    assert _run(capsys, "eval", str(toy_beir), "--systems", "bm25", "--out", str(out))[0] == 0


def test_a_killed_writers_leftovers_are_removed_by_the_next_run(
    toy_beir: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "idx"
    left = [make_temp_dir(out), make_temp_dir(out), tmp_path / ".idx.ar2-old"]
    left[2].mkdir()
    (left[0] / "vectors.npy").write_bytes(b"half")
    other = make_temp_dir(tmp_path / "idx.v2")  # another output's: not ours to remove
    mine = [tmp_path / ".idx.notes.tmp", tmp_path / ".idx.x1y2z3ab.tmp", tmp_path / ".idx.old"]
    for path in mine:  # names that ar2 does not make
        path.write_text("x")
    assert _run(capsys, "index", str(toy_beir), "--kind", "bm25", "--out", str(out))[0] == 0
    assert not any(p.exists() for p in left)
    assert other.is_dir() and all(p.is_file() for p in mine)
    inner = out / ".ids.txt.ar2-abcd_123.tmp"  # a file a killed writer left inside the folder
    inner.write_text("half")
    assert _run(capsys, "index", str(toy_beir), "--kind", "bm25", "--out", str(out))[0] == 0
    assert not inner.exists()


def test_a_run_folder_is_cleaned_except_where_another_writer_holds_a_lock(tmp_path: Path):
    from ar2._outdir import lock, remove_leftovers

    run = tmp_path / "run"
    (run / "checkpoints" / ".g0.ar2-aaaaaaaa.tmp").mkdir(parents=True)
    (run / ".config.json.ar2-bbbbbbbb.tmp").write_text("{")
    (run / "ev" / "runs").mkdir(parents=True)
    (run / "ev" / ".report.md.ar2-cccccccc.tmp").write_text("live")
    (run / ".idx.ar2-dddddddd.tmp").mkdir()
    with lock(run / "ev", inside=True), lock(run / "idx"):  # an eval and an index at work
        removed = remove_leftovers(run, inside=True)
    assert sorted(p.name for p in removed) == [".config.json.ar2-bbbbbbbb.tmp",
                                               ".g0.ar2-aaaaaaaa.tmp"]  # fmt: skip
    assert (run / "ev" / ".report.md.ar2-cccccccc.tmp").exists()
    assert (run / ".idx.ar2-dddddddd.tmp").exists()


def test_out_resolves_dots_and_refuses_to_replace_the_working_folder(
    toy_beir: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    monkeypatch.chdir(work / "sub")
    for out in (".", "..", "../sub", "/"):
        code, err = _run(capsys, "index", str(toy_beir), "--kind", "bm25", "--out", out)
        assert code == 2 and "Fix:" in _one_line_error(err), out
    code, err = _run(capsys, "eval", str(toy_beir), "--systems", "bm25", "--out", "..",
                     "--overwrite")  # fmt: skip
    assert code == 2 and "working folder" in _one_line_error(err)
    assert _run(capsys, "eval", str(toy_beir), "--systems", "bm25", "--out", ".")[0] == 0
    assert (work / "sub" / "report.json").is_file()  # an eval writes into the folder
    assert _run(capsys, "index", str(toy_beir), "--kind", "bm25", "--out", "../idx")[0] == 0
    assert (work / "idx" / "manifest.json").is_file()
    assert not [p for p in work.rglob("*.tmp")]


def test_a_file_system_without_locks_warns_and_writes(
    toy_beir: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    import errno

    import ar2._outdir

    def no_locks(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(ar2._outdir.fcntl, "flock", no_locks)
    out = tmp_path / "idx"
    assert _run(capsys, "index", str(toy_beir), "--kind", "bm25", "--out", str(out))[0] == 0
    assert (out / "manifest.json").is_file()
    assert "writers are not kept apart" in capsys.readouterr().err + caplog.text


def test_an_index_holding_more_than_an_index_is_not_replaced(
    toy_beir: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "idx"
    assert _run(capsys, "index", str(toy_beir), "--kind", "bm25", "--out", str(out))[0] == 0
    (out / "my-eval").mkdir()
    (out / "my-eval" / "notes.md").write_text("mine")
    code, err = _run(capsys, "index", str(toy_beir), "--kind", "bm25", "--out", str(out))
    assert code == 2 and "not an ar2 index" in _one_line_error(err)
    assert (out / "my-eval" / "notes.md").read_text() == "mine"


def test_a_second_writer_to_the_same_out_is_refused(
    toy_beir: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ar2._outdir

    monkeypatch.setattr(ar2._outdir, "LOCK_WAIT_SECONDS", 0.3)
    out = tmp_path / "idx"
    with lock(out):  # as a first `ar2 index` holds it
        code, err = _run(capsys, "index", str(toy_beir), "--kind", "bm25", "--out", str(out))
        assert code == 2 and f"pid {os.getpid()}" in _one_line_error(err)
        cmd = [sys.executable, "-m", "ar2.cli", "-q", "eval", str(toy_beir), "--systems", "bm25",
               "--out", str(out)]  # fmt: skip
        other = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert other.returncode == 2 and "another ar2 process" in other.stderr
    assert not out.exists()
    assert _run(capsys, "index", str(toy_beir), "--kind", "bm25", "--out", str(out))[0] == 0
    assert not (tmp_path / ".idx.lock").exists()  # released and removed


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077])
def test_outputs_follow_the_umask(mask: int, toy_beir: Path, tmp_path: Path, capsys) -> None:
    before = os.umask(mask)
    try:
        out = tmp_path / "idx"
        assert _run(capsys, "index", str(toy_beir), "--kind", "bm25", "--out", str(out))[0] == 0
    finally:
        os.umask(before)
    for path in [out, *out.rglob("*")]:
        want = (0o777 if path.is_dir() else 0o666) & ~mask
        assert stat.S_IMODE(path.stat().st_mode) == want, path
