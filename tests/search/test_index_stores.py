"""The index's behaviour, the same on both stores: each test runs on the embedded store (a folder) and on
PostgreSQL + pgvector (a fresh database on a real server from the pgserver wheel), through Index and the CLI
alike, reading rows through the VectorStore interface. In the runtime-only environment (no psycopg) the
PostgreSQL half is skipped; what is particular to one store is in test_search.py and tests/postgres.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from altclip_onnx.errors import InputError, StoreError
from altclip_onnx.runtime import Encoder
from altclip_onnx.search import Hit, Index, ModelRecord
from altclip_onnx.search.store import describe_db

from ..photo_library import QUERY, count_calls, edited_bundle, images_in, photo, run_cli

pytest.importorskip("skimage.data")


def snapshot(db: str) -> dict[str, tuple[str, np.ndarray]]:
    """path -> (digest, vector), through the store's own interface; checks there is one row per path."""
    with Index.open(db) as index:
        entries = list(index.store.entries())
        assert len(entries) == len({e.path for e in entries}) == len(index)
        found, vectors = index.store.get([e.path for e in entries])
    return {entry.path: (entry.digest, vector) for entry, vector in zip(found, vectors)}


# ------------------------------------------------------------------------------------- search


def test_a_photo_queried_by_itself_comes_first_and_scores_are_exact(db: str, library: Path,
                                                                    encoder: Encoder) -> None:
    with Index.open(db, create=True) as index:
        report = index.update(encoder, library, progress=False)
        assert (report.added, report.embedded, len(index)) == (6, 6, 6)
        for path in images_in(library):
            best = index.search_image(encoder, path, k=3)
            assert best[0].path == path and best[0].score > 0.999
            assert len(best) == 3 and best[0].score >= best[1].score >= best[2].score
        paths = images_in(library)
        entries, stored = index.store.get(paths)
        assert [e.path for e in entries] == paths
        np.testing.assert_allclose(stored, encoder.encode_images(paths), atol=1e-5)
        expected = stored @ encoder.encode_texts([QUERY])[0]
        order = np.argsort(-expected)[:4]
        hits = index.search_text(encoder, QUERY, k=4)
        assert len(hits) == 4 and all(isinstance(h, Hit) for h in hits)
        assert [h.path for h in hits] == [paths[i] for i in order]
        assert hits == index.search_vector(encoder.encode_texts(QUERY)[0], 4)
        np.testing.assert_allclose([h.score for h in hits], expected[order], atol=1e-6)
        assert [h.path for h in index.search_vector(stored[0], k=50, exact=True)] == [
            h.path for h in index.search_vector(stored[0], k=50)]
        assert all(index.path_of(h.id) == h.path for h in hits) and index.path_of(10**9) is None
        with pytest.raises(InputError, match="k must be"):
            index.search_text(encoder, QUERY, k=0)


def test_scores_are_cosines_never_above_one(db: str) -> None:
    """A unit vector's float32 dot product with itself can round to 1.0000002; a score is a cosine, within -1..1."""
    from altclip_onnx.runtime.encoder import l2_normalize
    from altclip_onnx.search.store import Entry

    vectors = l2_normalize(np.random.default_rng(0).standard_normal((100, 16)).astype(np.float32))
    assert (np.einsum("ij,ij->i", vectors, vectors) > 1).any()  # the rounding this is about happens here
    with Index.open(db, create=True) as index:
        index.store.add([Entry(f"/v/{i:03d}", i, i, f"d{i}") for i in range(len(vectors))], vectors)
        for exact in (False, True):
            scores = [index.search_vector(vector, 1, exact=exact)[0].score for vector in vectors]
            assert max(scores) == 1.0 and min(scores) > 0.999, exact
        assert min(h.score for h in index.search_vector(-vectors[0], 100, exact=True)) >= -1.0


def test_both_stores_give_the_same_results(tmp_path: Path, pg_uri: str, library: Path, encoder: Encoder) -> None:
    pytest.importorskip("usearch")
    results = []
    for db in (str(tmp_path / "local"), pg_uri):
        with Index.open(db, create=True) as index:
            index.update(encoder, library, batch_size=4, progress=False)
            results.append([[(h.path, round(h.score, 5)) for h in index.search_text(encoder, text, k=6)]
                            for text in (QUERY, "a cat", "一只猫", "rocket")])
            results[-1].append(sorted(e.path for e in index.store.entries()))
    assert results[0] == results[1]


# ------------------------------------------------------------------------------------- update


def test_reindex_follows_additions_changes_deletions_and_moves(db: str, library: Path, encoder: Encoder,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    calls = count_calls(encoder, monkeypatch)
    with Index.open(db, create=True) as index:
        index.update(encoder, library, batch_size=4, progress=False)
    assert sum(calls) == len(images_in(library))
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
        old_id = index.search_image(encoder, library / "camera.png", k=1)[0].id
        calls.clear()
        report = index.update(encoder, library, progress=False)
        assert (report.added, report.changed, report.removed, report.unchanged) == (1, 1, 1, 4)
        assert sum(calls) == 2 == report.embedded
        assert index.search_image(encoder, library / "camera.png", k=1)[0].id == old_id  # same vector, same id
        assert index.store.get([str(library / "camera.png")])[0][0].mtime_ns == 2_000_000_000
    after = snapshot(db)
    assert sorted(after) == images_in(library) and str(rocket) not in after
    assert not np.allclose(after[str(chelsea)][1], before[str(chelsea)][1])  # re-embedded
    np.testing.assert_allclose(after[str(chelsea)][1], encoder.encode_images([chelsea])[0], atol=1e-5)
    assert after[str(chelsea)][0] == hashlib.blake2b(chelsea.read_bytes(), digest_size=16).hexdigest()
    np.testing.assert_array_equal(after[str(library / "camera.png")][1], before[str(library / "camera.png")][1])

    calls.clear()
    moved = library / "b" / "astronaut-moved.jpg"
    (library / "astronaut.jpg").rename(moved)
    with Index.open(db) as index:
        report = index.update(encoder, library, progress=False)
        assert (report.moved, report.added, report.removed, report.reused, report.embedded, calls) == (1, 0, 0, 1, 0, [])
        assert len(index) == len(images_in(library))
        assert index.search_image(encoder, moved, k=1)[0] == Hit(str(moved), pytest.approx(1.0, abs=1e-3))
    np.testing.assert_array_equal(snapshot(db)[str(moved)][1], after[str(library / "astronaut.jpg")][1])


def test_an_interrupted_update_resumes_and_ends_like_an_uninterrupted_one(
        db: str, tmp_path: Path, library: Path, tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    interrupted = Encoder(tiny_bundle, provider="cpu", precision="fp32")
    count_calls(interrupted, monkeypatch, fail_on=2)
    with Index.open(db, create=True) as index:
        with pytest.raises(KeyboardInterrupt):
            index.update(interrupted, library, batch_size=2, workers=0, progress=False)
    with Index.open(db) as index:
        assert len(index) == 2  # the first batch was committed, the second not at all
    fresh = Encoder(tiny_bundle, provider="cpu", precision="fp32")
    calls = count_calls(fresh, monkeypatch)
    with Index.open(db) as index:
        report = index.update(fresh, library, batch_size=2, progress=False)
    assert (report.unchanged, report.added, sum(calls)) == (2, 4, 4)
    straight_db = str(tmp_path / "straight")
    with Index.open(straight_db, create=True) as index:
        index.update(Encoder(tiny_bundle, provider="cpu", precision="fp32"), library, batch_size=2, progress=False)
    resumed, straight = snapshot(db), snapshot(straight_db)
    assert sorted(resumed) == sorted(straight) == images_in(library)
    for path, (digest, vector) in straight.items():
        assert resumed[path][0] == digest
        np.testing.assert_allclose(resumed[path][1], vector, atol=1e-6)


def test_unreadable_files_are_named_skipped_and_exit_4(db: str, library: Path, tiny_bundle: Path) -> None:
    broken = library / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    result = run_cli("index", tiny_bundle, library, "--db", db, "--precision", "fp32")
    assert result.exit_code == 4, result.output
    assert f"failed: {broken}: " in result.stderr
    assert "6 added" in result.stdout and "1 failed" in result.stdout and "6 images in the index" in result.stdout
    assert str(broken) not in snapshot(db)
    Image.fromarray(photo("coins")).save(broken, format="JPEG")
    assert run_cli("index", tiny_bundle, library, "--db", db, "--precision", "fp32").exit_code == 0
    assert str(broken) in snapshot(db)
    broken.write_bytes(b"\xff\xd8 broken again, and longer than before")
    result = run_cli("index", tiny_bundle, library, "--db", db, "--precision", "fp32")
    assert result.exit_code == 4 and "1 removed" in result.stdout
    assert str(broken) not in snapshot(db)


def test_index_is_scoped_to_the_folder_and_a_moved_library_leaves_no_ghosts(
        db: str, tmp_path: Path, library: Path, tiny_bundle: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    Image.fromarray(photo("coins")).save(other / "coins.png")
    assert run_cli("index", tiny_bundle, library, "--db", db).exit_code == 0
    assert run_cli("index", tiny_bundle, other, "--db", db).exit_code == 0  # keeps the photos/ rows
    assert sorted(snapshot(db)) == sorted(images_in(library) + [str(other / "coins.png")])
    photos = len(images_in(library))
    moved = tmp_path / "moved-photos"
    library.rename(moved)
    result = run_cli("index", tiny_bundle, moved, "--db", db)
    assert result.exit_code == 0, result.output
    assert f"0 added, 0 changed, {photos} moved, 0 removed" in result.stdout
    assert f"{photos + 1} images in the index" in result.stdout
    hits = json.loads(run_cli("search", "--db", db, QUERY, "-k", "10", "--json").stdout)
    assert len(hits) == photos + 1 and all(Path(hit["path"]).exists() for hit in hits)
    gone = run_cli("index", tiny_bundle, library, "--db", db)
    assert gone.exit_code == 1 and "no such folder; if it was moved or deleted" in gone.stderr
    assert "--prune" in gone.stderr
    (moved / "camera.png").unlink()
    (other / "coins.png").unlink()
    pruned = run_cli("index", tiny_bundle, "--db", db, "--prune")
    assert pruned.exit_code == 0, pruned.output
    assert "2 removed" in pruned.stdout and "5 images in the index" in pruned.stdout
    assert sorted(snapshot(db)) == images_in(moved)
    assert run_cli("index", tiny_bundle, "--db", db).exit_code == 2  # neither folders nor --prune: a usage error


def test_a_moved_bundle_is_recorded_by_the_next_index(db: str, tmp_path: Path, library: Path,
                                                      tiny_bundle: Path) -> None:
    first = tmp_path / "bundle-here"
    shutil.copytree(tiny_bundle, first)
    assert run_cli("index", first, library, "--db", db).exit_code == 0
    second = tmp_path / "bundle-there"
    first.rename(second)
    gone = run_cli("search", "--db", db, QUERY)
    assert gone.exit_code == 1 and "--bundle" in gone.stderr  # the recorded bundle is gone
    assert run_cli("index", second, library, "--db", db).exit_code == 0  # same model: re-recorded
    with Index.open(db) as index:
        assert index.model is not None and index.model.bundle == str(second)
    result = run_cli("search", "--db", db, QUERY, "-k", "1")
    assert result.exit_code == 0 and "rank" in result.stdout


# ------------------------------------------------------------------------------------- model record


@pytest.mark.parametrize("changes", [{"weights": True}, {"embedding_dim": 32, "variant": "AltCLIP-m9"}],
                         ids=["other-weights", "other-dim"])
def test_another_model_is_a_one_line_error(db: str, tmp_path: Path, library: Path, tiny_bundle: Path,
                                           other_bundle: Path, encoder: Encoder, changes: dict) -> None:
    with Index.open(db, create=True) as index:
        index.update(encoder, library, progress=False)
        assert index.model == ModelRecord.of(encoder)
    changes = dict(changes)  # the parameter's dict is shared by both stores' runs
    other = other_bundle if changes.pop("weights", False) else edited_bundle(tiny_bundle, tmp_path, **changes)
    with Index.open(db) as index:
        with pytest.raises(StoreError, match="made with"):
            index.search_text(Encoder(other, precision="fp32"), QUERY)
        with pytest.raises(StoreError, match="made with"):
            index.update(Encoder(other, precision="fp32"), library, progress=False)
    result = run_cli("search", "--db", db, "--bundle", other, QUERY)
    assert result.exit_code == 1 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {describe_db(db)}: made with")
    assert "Traceback" not in result.stderr and ("32-d" in lines[0]) == ("embedding_dim" in changes)


def test_search_cli_json_and_table(db: str, library: Path, tiny_bundle: Path, encoder: Encoder) -> None:
    result = run_cli("index", tiny_bundle, library, "--db", db, "--precision", "fp32")
    assert result.exit_code == 0, result.output
    again = run_cli("index", tiny_bundle, library, "--db", db, "--precision", "fp32")
    assert "0 added, 0 changed, 0 moved, 0 removed, 6 unchanged (0 embedded" in again.stdout
    hits = json.loads(run_cli("search", "--db", db, QUERY, "-k", "3", "--json").stdout)
    assert len(hits) == 3 and all(set(h) == {"id", "path", "score"} for h in hits)
    with Index.open(db) as index:
        expected = index.search_text(encoder, QUERY, k=3)
        assert all(index.path_of(h["id"]) == h["path"] for h in hits)
    assert [h["path"] for h in hits] == [h.path for h in expected]
    coffee = library / "b" / "coffee.jpg"
    first = json.loads(run_cli("search", "--db", db, "--image", coffee, "--json", "-k", "2").stdout)[0]
    assert first["path"] == str(coffee) and first["score"] > 0.999
    table = run_cli("search", "--db", db, QUERY, "-k", "2").stdout.splitlines()
    assert table[0].split() == ["rank", "score", "path"] and len(table) == 3


def test_searching_where_there_is_no_index_says_how_to_build_one(db: str) -> None:
    missing = run_cli("search", "--db", db, QUERY)
    assert missing.exit_code == 1 and "no index here" in missing.stderr
    assert f"--db {describe_db(db)}" in missing.stderr


def test_serve_searches_a_postgres_index(pg_uri: str, library: Path, tiny_bundle: Path) -> None:
    """`serve --db postgresql://...` opens the same index through Index.open (the [serve] extra)."""
    import subprocess
    import sys
    import time
    import urllib.request

    for module in ("starlette", "uvicorn", "multipart", "prometheus_client"):
        pytest.importorskip(module, reason="serve needs the [serve] extra")
    from ..conftest import free_port

    assert run_cli("index", tiny_bundle, library, "--db", pg_uri, "--precision", "fp32").exit_code == 0
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "altclip_onnx.cli", "serve", str(tiny_bundle), "--db", pg_uri,
                               "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, server.stdout.read()  # type: ignore[union-attr]
                time.sleep(0.3)
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/search", headers={"Content-Type": "application/json"},
                                         data=json.dumps({"query": QUERY, "k": 3}).encode())
        found = json.loads(urllib.request.urlopen(request, timeout=30).read())["data"]
    finally:
        server.terminate()
        output = server.communicate(timeout=30)[0]
    with Index.open(pg_uri) as index:
        expected = index.search_text(Encoder(tiny_bundle, provider="cpu", precision="fp32"), QUERY, k=3)
    assert [hit["path"] for hit in found] == [hit.path for hit in expected], output
    assert ":***@" in output and "s3cret" not in output  # the URI in its log line, without the password
