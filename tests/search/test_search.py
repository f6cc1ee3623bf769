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
from PIL import Image

from altclip_onnx.errors import InputError
from altclip_onnx.runtime import Encoder
from altclip_onnx.search import Index, ModelRecord
from altclip_onnx.search.store import Entry
from altclip_onnx.search.store.local import SQLITE_FILE

from ..blocking import BLOCK_EXPORT_SIDE
from ..photo_library import QUERY, images_in, photo, run_cli

pytest.importorskip("skimage.data")
pytest.importorskip("usearch")


def sqlite_rows(db: Path) -> list[tuple[str, str, bytes]]:
    """The embedded store's rows as SQLite holds them: no vector without its image row."""
    with sqlite3.connect(db / SQLITE_FILE) as connection:
        assert connection.execute("SELECT COUNT(*) FROM vectors").fetchone()[0] == connection.execute(
            "SELECT COUNT(*) FROM images JOIN vectors USING (id)").fetchone()[0]  # no orphan vectors
        return connection.execute("SELECT path, digest, vector FROM images JOIN vectors USING (id) "
                                  "ORDER BY path").fetchall()


# ------------------------------------------------------------------------------------- search


def test_entries_record_path_size_mtime_and_digest(tmp_path: Path, library: Path, encoder: Encoder) -> None:
    with Index.open(tmp_path / "db", create=True) as index:
        index.update(encoder, library, progress=False)
        entries = list(index.store.entries())
    path = library / "chelsea.png"
    stat = path.stat()
    digest = hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()  # the documented content digest
    assert Entry(str(path), stat.st_size, stat.st_mtime_ns, digest) in entries
    assert all(os.path.isabs(e.path) for e in entries) and len(entries) == len(images_in(library))
    stored = sqlite_rows(tmp_path / "db")  # float32 vectors, as the pipeline made them
    assert [row[:2] for row in stored] == sorted((e.path, e.digest) for e in entries)
    vectors = np.stack([np.frombuffer(row[2], dtype=np.float32) for row in stored])
    np.testing.assert_allclose(vectors, encoder.encode_images([row[0] for row in stored]), atol=1e-5)


# ------------------------------------------------------------------------------------- update


def test_index_paths_are_absolute_and_scoped_to_the_folder(tmp_path: Path, library: Path, encoder: Encoder,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    other = tmp_path / "other"
    other.mkdir()
    Image.fromarray(photo("coins")).save(other / "coins.png")
    monkeypatch.chdir(tmp_path)
    with Index.open("db", create=True) as index:
        index.update(encoder, "photos", progress=False)
        index.update(encoder, "other", progress=False)  # does not remove the photos/ rows
        assert len(index) == len(images_in(library)) + 1
        assert {h.path for h in index.search_vector(np.ones(encoder.embedding_dim), k=10)} == set(images_in(library)) | {
            str(other / "coins.png")}
        with pytest.raises(InputError, match="no such folder"):
            index.update(encoder, "missing", progress=False)


# ------------------------------------------------------------------------------------- model record


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

TORCH_FREE = BLOCK_EXPORT_SIDE + r"""
import contextlib, io, json
from altclip_onnx import cli

out, err = io.StringIO(), io.StringIO()
code = 0
with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    try:
        cli.main(sys.argv[1:], prog_name="altclip-onnx")
    except SystemExit as exc:
        code = exc.code or 0
loaded = sorted(m for m, module in sys.modules.items() if module is not None and m.split(".")[0] in BLOCKED)
print(json.dumps({"code": code, "stdout": out.getvalue(), "stderr": err.getvalue(), "loaded": loaded}))
"""


def cli_process(*args: object) -> dict:
    """The CLI in a fresh interpreter where the export side (tests/blocking.py) cannot be imported."""
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
    assert len(json.loads(found["stdout"])) == len(images_in(library))
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


def test_the_docs_name_every_file_of_an_index_folder(tmp_path: Path) -> None:
    """The paragraph on the store (README or docs/) names every file an index folder holds, the lock included."""
    from altclip_onnx.runtime.encoder import l2_normalize

    root = Path(__file__).resolve().parents[2]
    pages = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    paragraphs = [text.split("**The store, and why.**", 1)[1].split("\n\n", 1)[0]
                  for text in (page.read_text(encoding="utf-8") for page in pages) if "**The store, and why.**" in text]
    assert paragraphs, "no page describes the store"
    vectors = l2_normalize(np.random.default_rng(0).standard_normal((4, 16)).astype(np.float32))
    with Index.open(tmp_path / "db", create=True) as index:
        index.store.add([Entry(f"/v/{i}", i, i, f"d{i}") for i in range(4)], vectors)
        while_open = set(os.listdir(tmp_path / "db"))
    files = set(os.listdir(tmp_path / "db"))
    assert files == {"index.sqlite3", "ann.usearch", "lock"}
    for paragraph in paragraphs:
        assert "two files" not in paragraph and "three files" in paragraph
        for name in files | {name.replace("index.sqlite3", "") for name in while_open - files}:  # -wal, -shm
            assert f"`{name}`" in paragraph or f"`index.sqlite3{name}`" in paragraph, name
