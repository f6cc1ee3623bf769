"""runtime/search.py, runtime/store.py and the index and search commands, on the tiny bundle and real photos."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from altclip_onnx.cli import main
from altclip_onnx.errors import InputError, StoreError
from altclip_onnx.runtime import Encoder
from altclip_onnx.search import Hit, Index, ModelRecord
from altclip_onnx.search.store import Entry
from altclip_onnx.search.store.local import SQLITE_FILE

skdata = pytest.importorskip("skimage.data")
pytest.importorskip("usearch")

QUERY = "海边的日落"


def photo(name: str) -> np.ndarray:
    image = getattr(skdata, name)()
    return (image * 255).astype(np.uint8) if image.dtype == bool else image


@pytest.fixture
def library(tmp_path: Path) -> Path:
    """photos/{astronaut.jpg, camera.png, chelsea.png, b/coffee.jpg, b/c/rocket.jpg, horse.png}, plus notes.txt."""
    root = tmp_path / "photos"
    (root / "b" / "c").mkdir(parents=True)
    Image.fromarray(photo("astronaut")).save(root / "astronaut.jpg", quality=90)
    Image.fromarray(photo("camera")).save(root / "camera.png")
    Image.fromarray(photo("chelsea")).save(root / "chelsea.png")
    Image.fromarray(photo("coffee")).save(root / "b" / "coffee.jpg", quality=90)
    Image.fromarray(photo("rocket")).save(root / "b" / "c" / "rocket.jpg", quality=90)
    Image.fromarray(photo("horse")).save(root / "horse.png")
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def encoder(tiny_bundle: Path) -> Encoder:
    return Encoder(tiny_bundle, provider="cpu", precision="fp32")


def images_in(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.rglob("*") if p.suffix in (".jpg", ".png"))


def count_calls(encoder: Encoder, monkeypatch: pytest.MonkeyPatch, fail_on: int | None = None) -> list[int]:
    """Record the batch size of every model run on ``encoder``; raise KeyboardInterrupt on run ``fail_on``."""
    calls: list[int] = []
    real = Encoder.encode_pixels

    def counted(pixels: np.ndarray, normalize: bool = True) -> np.ndarray:
        calls.append(len(pixels))
        if fail_on is not None and len(calls) == fail_on:
            raise KeyboardInterrupt
        return real(encoder, pixels, normalize=normalize)

    monkeypatch.setattr(encoder, "encode_pixels", counted)
    return calls


def rows(db: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(db / SQLITE_FILE) as connection:
        assert connection.execute("SELECT COUNT(*) FROM vectors").fetchone()[0] == connection.execute(
            "SELECT COUNT(*) FROM images JOIN vectors USING (id)").fetchone()[0]  # no orphan vectors
        return connection.execute("SELECT path, digest FROM images ORDER BY path").fetchall()


def snapshot(db: Path) -> dict[str, tuple[str, np.ndarray]]:
    with sqlite3.connect(db / SQLITE_FILE) as connection:
        found = connection.execute("SELECT path, digest, vector FROM images JOIN vectors USING (id)").fetchall()
    return {path: (digest, np.frombuffer(blob, dtype=np.float32)) for path, digest, blob in found}


def run_cli(*args: object):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


# ------------------------------------------------------------------------------------- search


def test_a_photo_queried_by_itself_comes_first(tmp_path: Path, library: Path, encoder: Encoder) -> None:
    with Index.open(tmp_path / "db", create=True) as index:
        report = index.update(encoder, library, progress=False)
        assert (report.added, report.embedded, len(index)) == (6, 6, 6)
        for path in images_in(library):
            best = index.search_image(encoder, path, k=3)
            assert best[0].path == path and best[0].score > 0.999
            assert len(best) == 3 and best[0].score >= best[1].score >= best[2].score


def test_text_search_scores_are_exact_cosines(tmp_path: Path, library: Path, encoder: Encoder) -> None:
    with Index.open(tmp_path / "db", create=True) as index:
        index.update(encoder, library, progress=False)
        hits = index.search_text(encoder, QUERY, k=4)
        assert len(hits) == 4 and all(isinstance(h, Hit) for h in hits)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        paths = images_in(library)
        entries, stored = index.store.get(paths)
        assert [e.path for e in entries] == paths
        np.testing.assert_allclose(stored, encoder.encode_images(paths), atol=1e-5)  # the pipeline's rows
        expected = stored @ encoder.encode_texts([QUERY])[0]
        order = np.argsort(-expected)[:4]
        assert [h.path for h in hits] == [paths[i] for i in order]
        np.testing.assert_allclose([h.score for h in hits], expected[order], atol=1e-6)
        assert index.search_text(encoder, QUERY, k=4) == index.search_vector(encoder.encode_texts(QUERY)[0], 4)
        assert [h.path for h in index.search_vector(stored[0], k=50, exact=True)] == [
            h.path for h in index.search_vector(stored[0], k=50)]
        with pytest.raises(InputError, match="k must be"):
            index.search_text(encoder, QUERY, k=0)


def test_entries_record_path_size_mtime_and_digest(tmp_path: Path, library: Path, encoder: Encoder) -> None:
    with Index.open(tmp_path / "db", create=True) as index:
        index.update(encoder, library, progress=False)
        entries = list(index.store.entries())
    path = library / "chelsea.png"
    stat = path.stat()
    digest = hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()  # the documented content digest
    assert Entry(str(path), stat.st_size, stat.st_mtime_ns, digest) in entries
    assert all(os.path.isabs(e.path) for e in entries) and len(entries) == 6


# ------------------------------------------------------------------------------------- update


def test_reindex_follows_additions_changes_and_deletions(tmp_path: Path, library: Path, encoder: Encoder,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "db"
    calls = count_calls(encoder, monkeypatch)
    with Index.open(db, create=True) as index:
        index.update(encoder, library, batch_size=4, progress=False)
    assert sum(calls) == 6
    before = snapshot(db)

    calls.clear()
    with Index.open(db) as index:
        report = index.update(encoder, library, progress=False)
    assert calls == [] and (report.unchanged, report.added, report.changed, report.removed) == (6, 0, 0, 0)

    chelsea, rocket = library / "chelsea.png", library / "b" / "c" / "rocket.jpg"
    Image.fromarray(photo("coins")).save(library / "b" / "coins.png")  # added
    Image.fromarray(photo("chelsea")[::-1]).save(chelsea)  # content changed
    os.utime(chelsea, ns=(1_000_000_000, 1_000_000_000))
    rocket.unlink()  # deleted
    os.utime(library / "camera.png", ns=(2_000_000_000, 2_000_000_000))  # touched: same bytes
    with Index.open(db) as index:
        report = index.update(encoder, library, progress=False)
        assert (report.added, report.changed, report.removed, report.unchanged) == (1, 1, 1, 4)
        assert sum(calls) == 2 == report.embedded  # only the new and the changed file ran through the model
        after = snapshot(db)
        assert sorted(after) == images_in(library) and str(rocket) not in after
        assert len(rows(db)) == len({path for path, _ in rows(db)}) == 6 == len(index)  # no duplicates
        assert not np.allclose(after[str(chelsea)][1], before[str(chelsea)][1])  # re-embedded
        np.testing.assert_allclose(after[str(chelsea)][1], encoder.encode_images([chelsea])[0], atol=1e-5)
        assert after[str(chelsea)][0] == hashlib.blake2b(chelsea.read_bytes(), digest_size=16).hexdigest()
        np.testing.assert_array_equal(after[str(library / "camera.png")][1], before[str(library / "camera.png")][1])
        assert index.store.get([str(library / "camera.png")])[0][0].mtime_ns == 2_000_000_000
        assert index.search_image(encoder, chelsea, k=1)[0].path == str(chelsea)

    # A moved photo keeps its vector without running the model.
    calls.clear()
    moved = library / "b" / "astronaut-moved.jpg"
    (library / "astronaut.jpg").rename(moved)
    with Index.open(db) as index:
        report = index.update(encoder, library, progress=False)
        assert (report.moved, report.added, report.removed, report.reused, report.embedded, calls) == (1, 0, 0, 1, 0, [])
        assert len(index) == 6
        np.testing.assert_array_equal(snapshot(db)[str(moved)][1], after[str(library / "astronaut.jpg")][1])
        assert index.search_image(encoder, moved, k=1)[0] == Hit(str(moved), pytest.approx(1.0, abs=1e-3))


def test_an_interrupted_update_resumes_and_ends_like_an_uninterrupted_one(
        tmp_path: Path, library: Path, tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    interrupted = Encoder(tiny_bundle, provider="cpu", precision="fp32")
    count_calls(interrupted, monkeypatch, fail_on=2)
    with Index.open(tmp_path / "resumed", create=True) as index:
        with pytest.raises(KeyboardInterrupt):
            index.update(interrupted, library, batch_size=2, workers=0, progress=False)
    with Index.open(tmp_path / "resumed") as index:
        assert len(index) == 2  # the first batch was committed
        assert index.search_vector(index.store.get([rows(tmp_path / "resumed")[0][0]])[1][0], 1)[0].score > 0.999

    fresh = Encoder(tiny_bundle, provider="cpu", precision="fp32")
    calls = count_calls(fresh, monkeypatch)
    with Index.open(tmp_path / "resumed") as index:
        report = index.update(fresh, library, batch_size=2, progress=False)
    assert (report.unchanged, report.added, sum(calls)) == (2, 4, 4)
    with Index.open(tmp_path / "straight", create=True) as index:
        index.update(Encoder(tiny_bundle, provider="cpu", precision="fp32"), library, batch_size=2, progress=False)
    resumed, straight = snapshot(tmp_path / "resumed"), snapshot(tmp_path / "straight")
    assert sorted(resumed) == sorted(straight) == images_in(library)
    for path, (digest, vector) in straight.items():
        assert resumed[path][0] == digest
        np.testing.assert_allclose(resumed[path][1], vector, atol=1e-6)


def test_unreadable_files_are_named_skipped_and_exit_4(tmp_path: Path, library: Path, tiny_bundle: Path) -> None:
    broken = library / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    db = tmp_path / "db"
    result = run_cli("index", tiny_bundle, library, "--db", db, "--precision", "fp32")
    assert result.exit_code == 4, result.output
    assert f"failed: {broken}: " in result.stderr
    assert "6 added" in result.stdout and "1 failed" in result.stdout and "6 images in the index" in result.stdout
    assert str(broken) not in {path for path, _ in rows(db)}
    # Once readable it is indexed; when it breaks again its stale row goes.
    Image.fromarray(photo("coins")).save(broken, format="JPEG")
    assert run_cli("index", tiny_bundle, library, "--db", db, "--precision", "fp32").exit_code == 0
    assert str(broken) in {path for path, _ in rows(db)}
    broken.write_bytes(b"\xff\xd8 broken again, and longer than before")
    result = run_cli("index", tiny_bundle, library, "--db", db, "--precision", "fp32")
    assert result.exit_code == 4 and "1 removed" in result.stdout
    assert str(broken) not in {path for path, _ in rows(db)}


def test_index_paths_are_absolute_and_scoped_to_the_folder(tmp_path: Path, library: Path, encoder: Encoder,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    other = tmp_path / "other"
    other.mkdir()
    Image.fromarray(photo("coins")).save(other / "coins.png")
    monkeypatch.chdir(tmp_path)
    with Index.open("db", create=True) as index:
        index.update(encoder, "photos", progress=False)
        index.update(encoder, "other", progress=False)  # does not remove the photos/ rows
        assert len(index) == 7
        assert {h.path for h in index.search_vector(np.ones(16), k=10)} == set(images_in(library)) | {
            str(other / "coins.png")}
        with pytest.raises(InputError, match="no such folder"):
            index.update(encoder, "missing", progress=False)


def test_a_moved_library_leaves_no_ghosts(tmp_path: Path, library: Path, tiny_bundle: Path) -> None:
    """index B p; mv p p2; index B p2 used to give twice the rows, half of them paths that no longer exist."""
    db = tmp_path / "db"
    assert run_cli("index", tiny_bundle, library, "--db", db).exit_code == 0
    moved = tmp_path / "moved-photos"
    library.rename(moved)
    result = run_cli("index", tiny_bundle, moved, "--db", db)
    assert result.exit_code == 0, result.output
    assert "0 added, 0 changed, 6 moved, 0 removed" in result.stdout and "6 images in the index" in result.stdout
    assert sorted(path for path, _ in rows(db)) == images_in(moved)
    hits = json.loads(run_cli("search", "--db", db, QUERY, "-k", "10", "--json").stdout)
    assert len(hits) == 6 and all(Path(hit["path"]).exists() for hit in hits)
    # The old folder is gone: naming it says what to do; --prune drops rows of files that are gone anywhere.
    gone = run_cli("index", tiny_bundle, library, "--db", db)
    assert gone.exit_code == 1 and "no such folder; if it was moved or deleted" in gone.stderr and "--prune" in gone.stderr
    (moved / "camera.png").unlink()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    pruned = run_cli("index", tiny_bundle, elsewhere, library, "--db", db, "--prune")
    assert pruned.exit_code == 0, pruned.output
    assert "1 removed" in pruned.stdout and "5 images in the index" in pruned.stdout
    assert run_cli("index", tiny_bundle, "--db", db, "--prune").exit_code == 0  # no folder: prune only
    assert run_cli("index", tiny_bundle, "--db", db).exit_code == 2  # neither: a usage error


def test_a_moved_bundle_is_recorded_by_the_next_index(tmp_path: Path, library: Path, tiny_bundle: Path) -> None:
    db = tmp_path / "db"
    first = tmp_path / "bundle-here"
    shutil.copytree(tiny_bundle, first)
    assert run_cli("index", first, library, "--db", db).exit_code == 0
    second = tmp_path / "bundle-there"
    first.rename(second)
    assert run_cli("search", "--db", db, QUERY).exit_code == 1  # the recorded bundle is gone
    assert run_cli("index", second, library, "--db", db).exit_code == 0  # same model: re-recorded
    with Index.open(db) as index:
        assert index.model is not None and index.model.bundle == str(second)
    result = run_cli("search", "--db", db, QUERY, "-k", "1")
    assert result.exit_code == 0 and "rank" in result.stdout  # no --bundle needed


# ------------------------------------------------------------------------------------- model record


def edited_bundle(tiny_bundle: Path, tmp_path: Path, **changes: object) -> Path:
    """A copy of the tiny bundle whose manifest says it has another dimension (its files are intact)."""
    copy = tmp_path / "other-bundle"
    shutil.copytree(tiny_bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest.update(changes)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


@pytest.mark.parametrize("changes", [{"weights": True}, {"embedding_dim": 32, "variant": "AltCLIP-m9"}],
                         ids=["other-weights", "other-dim"])
def test_another_model_is_a_one_line_error(tmp_path: Path, library: Path, tiny_bundle: Path, other_bundle: Path,
                                           encoder: Encoder, changes: dict) -> None:
    db = tmp_path / "db"
    with Index.open(db, create=True) as index:
        index.update(encoder, library, progress=False)
    other = other_bundle if changes.pop("weights", False) else edited_bundle(tiny_bundle, tmp_path, **changes)
    with Index.open(db) as index:
        with pytest.raises(StoreError, match="made with"):
            index.search_text(Encoder(other, precision="fp32"), QUERY)
        with pytest.raises(StoreError, match="made with"):
            index.update(Encoder(other, precision="fp32"), library, progress=False)
    result = run_cli("search", "--db", db, "--bundle", other, QUERY)
    assert result.exit_code == 1 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {db}: made with") and "Traceback" not in result.stderr
    assert ("32-d" in lines[0]) == ("embedding_dim" in changes)


def test_another_precision_of_the_same_model_warns_and_works(
        tmp_path: Path, library: Path, tiny_bundle: Path, encoder: Encoder, caplog: pytest.LogCaptureFixture) -> None:
    db = tmp_path / "db"
    with Index.open(db, create=True) as index:
        index.update(encoder, library, progress=False)
        assert index.model == ModelRecord.of(encoder) and index.model.precision == "fp32"
        int8 = Encoder(tiny_bundle, provider="cpu", precision="int8")
        with caplog.at_level("WARNING"):
            hits = index.search_image(int8, library / "chelsea.png", k=2)
            index.search_text(int8, QUERY, k=2)
        assert hits[0].path == str(library / "chelsea.png") and hits[0].score > 0.9
        warnings = [r for r in caplog.records if "computed at fp32" in r.getMessage()]
        assert len(warnings) == 1 and "int8" in warnings[0].getMessage()  # once per index and precision
    caplog.clear()
    with caplog.at_level("WARNING"):  # the CLI logs it to stderr (pytest's handler catches it here)
        result = run_cli("search", "--db", db, "--precision", "int8", QUERY, "-k", "2")
    assert result.exit_code == 0 and "computed at fp32, this encoder runs int8" in caplog.text


# ------------------------------------------------------------------------------------- CLI


def test_search_cli_finds_the_bundle_in_the_index(tmp_path: Path, library: Path, tiny_bundle: Path,
                                                  encoder: Encoder) -> None:
    db = tmp_path / "db"
    result = run_cli("index", tiny_bundle, library, "--db", db, "--precision", "fp32")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().endswith("s") and "6 added, 0 changed, 0 moved, 0 removed, 0 unchanged" in result.stdout
    again = run_cli("index", tiny_bundle, library, "--db", db, "--precision", "fp32")
    assert "0 added, 0 changed, 0 moved, 0 removed, 6 unchanged (0 embedded" in again.stdout

    result = run_cli("search", "--db", db, QUERY, "-k", "3", "--json")
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)
    assert len(hits) == 3 and all(set(h) == {"id", "path", "score"} for h in hits)
    with Index.open(db) as index:  # the id names the row: a thumbnail URL can use it, never a path
        assert all(index.path_of(h["id"]) == h["path"] for h in hits) and index.path_of(10**9) is None
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    with Index.open(db) as index:
        expected = index.search_text(encoder, QUERY, k=3)
    assert [h["path"] for h in hits] == [h.path for h in expected]
    np.testing.assert_allclose([h["score"] for h in hits], [h.score for h in expected], atol=1e-5)

    coffee = library / "b" / "coffee.jpg"
    result = run_cli("search", "--db", db, "--image", coffee, "--json", "-k", "2")
    first = json.loads(result.stdout)[0]
    assert first["path"] == str(coffee) and first["score"] > 0.999

    table = run_cli("search", "--db", db, QUERY, "-k", "2").stdout.splitlines()
    assert table[0].split() == ["rank", "score", "path"] and len(table) == 3
    assert table[1].split()[0] == "1" and table[1].split()[2] == hits[0]["path"]


def test_search_cli_errors(tmp_path: Path, library: Path, tiny_bundle: Path) -> None:
    missing = run_cli("search", "--db", tmp_path / "missing", QUERY)
    assert missing.exit_code == 1 and "no index here" in missing.stderr
    assert not (tmp_path / "missing").exists()
    db = tmp_path / "db"
    run_cli("index", tiny_bundle, library, "--db", db)
    assert run_cli("search", "--db", db).exit_code == 2  # neither a text nor --image
    assert run_cli("search", "--db", db, QUERY, "--image", library / "horse.png").exit_code == 2
    unreadable = run_cli("search", "--db", db, "--image", library / "notes.txt")
    assert unreadable.exit_code == 1 and "notes.txt" in unreadable.stderr
    moved = tmp_path / "moved-bundle"
    shutil.copytree(tiny_bundle, moved)
    with Index.open(db) as index:
        index.store.set_info({"bundle": str(tmp_path / "gone")})
    gone = run_cli("search", "--db", db, QUERY)
    assert gone.exit_code == 1 and "--bundle" in gone.stderr
    assert run_cli("search", "--db", db, QUERY, "--bundle", moved).exit_code == 0
    (tmp_path / "file").write_text("x")
    assert "not a folder" in run_cli("index", tiny_bundle, library, "--db", tmp_path / "file").stderr


# ------------------------------------------------------------------------------------- torch-free

TORCH_FREE = r"""
import contextlib, io, json, sys
for name in ("torch", "transformers", "sentencepiece", "onnx"):
    sys.modules[name] = None  # as if the [export] extra were not installed
from altclip_onnx import cli

out, err = io.StringIO(), io.StringIO()
code = 0
with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    try:
        cli.main(sys.argv[1:], prog_name="altclip-onnx")
    except SystemExit as exc:
        code = exc.code or 0
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers") and sys.modules[m])
print(json.dumps({"code": code, "stdout": out.getvalue(), "stderr": err.getvalue(), "loaded": loaded}))
"""


def cli_process(*args: object) -> dict:
    """The CLI in a fresh interpreter where torch and transformers cannot be imported."""
    done = subprocess.run([sys.executable, "-c", TORCH_FREE, *map(str, args)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr  # also catches a crash (e.g. a native library loaded in a bad order)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["loaded"] == []
    return result


def test_index_and_search_run_without_torch_each_in_a_fresh_process(tmp_path: Path, library: Path,
                                                                    tiny_bundle: Path) -> None:
    db = tmp_path / "db"
    indexed = cli_process("index", tiny_bundle, library, "--db", db)
    assert indexed["code"] == 0, indexed["stderr"]
    found = cli_process("search", "--db", db, "cat", "--json")  # opens the index before loading the model
    assert found["code"] == 0, found["stderr"]
    assert len(json.loads(found["stdout"])) == 6
    by_image = cli_process("search", "--db", db, "--image", library / "horse.png", "-k", "1", "--json")
    assert json.loads(by_image["stdout"])[0]["path"] == str(library / "horse.png")


def test_a_database_uri_is_never_taken_for_a_folder(tmp_path: Path, library: Path, tiny_bundle: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """--db postgresql://... used to create a local folder named 'postgresql:'; unknown schemes are refused."""
    monkeypatch.chdir(tmp_path)
    result = run_cli("index", tiny_bundle, library, "--db", "mysql://me:secret@localhost/photos")
    assert result.exit_code == 1
    assert result.stderr.strip() == ("error: mysql://me:***@localhost/photos: unknown database scheme 'mysql'; give a "
                                     "folder for the embedded index or a postgresql:// or postgres:// URI")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]
