"""runtime/pipeline.py, runtime/outputs.py and the embed, embed-text and classify commands, on the tiny bundle and real photos."""

from __future__ import annotations

import inspect
import io
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from altclip_onnx.cli import main
from altclip_onnx.errors import BusyError, InputError, MissingDependencyError, OutputError, install_command
from altclip_onnx.runtime import Encoder
from altclip_onnx.runtime.outputs import EmbedOptions, checkpoint_folder, embed_images_to_file, read_embeddings
from altclip_onnx.runtime.pipeline import embed_images, iter_image_files, iter_lines, split_labels

from ..blocking import BLOCK_EXPORT_SIDE, BLOCKED

skdata = pytest.importorskip("skimage.data")

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


def photo(name: str) -> np.ndarray:
    return getattr(skdata, name)()


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """photos/{astronaut.jpg, b/chelsea.png, b/c/coffee.jpg, rocket.JPG, d/rocket-crop.jpg} and decoys."""
    root = tmp_path_factory.mktemp("photos")
    (root / "b" / "c").mkdir(parents=True)
    (root / "d").mkdir()
    (root / ".hidden").mkdir()
    Image.fromarray(photo("astronaut")).save(root / "astronaut.jpg", quality=90)
    Image.fromarray(photo("chelsea")).save(root / "b" / "chelsea.png")
    Image.fromarray(photo("coffee")).save(root / "b" / "c" / "coffee.jpg", quality=85)
    Image.fromarray(photo("rocket")).save(root / "rocket.JPG", quality=90)
    Image.fromarray(photo("rocket")[50:350, 100:500]).save(root / "d" / "rocket-crop.jpg")
    Image.fromarray(photo("coffee")).save(root / ".hidden" / "coffee.jpg")
    Image.fromarray(photo("coffee")).save(root / ".dotfile.jpg")
    (root / "notes.txt").write_text("not an image, and not an image extension")
    return root


EXPECTED = ["astronaut.jpg", "b/c/coffee.jpg", "b/chelsea.png", "d/rocket-crop.jpg", "rocket.JPG"]


@pytest.fixture(scope="module")
def encoder(tiny_bundle: Path) -> Encoder:
    return Encoder(tiny_bundle, provider="cpu", precision="fp32")


def run_cli(*args: str, input: str | bytes | None = None):  # type: ignore[no-untyped-def]
    result = CliRunner().invoke(main, [str(a) for a in args], input=input, catch_exceptions=False)
    return result


def relative(paths, root: Path) -> list[str]:  # type: ignore[no-untyped-def]
    return [Path(p).relative_to(root).as_posix() for p in paths]


# ----------------------------------------------------------------------------------- inputs


def test_folders_are_walked_recursively_in_a_fixed_order(photos: Path, tmp_path: Path) -> None:
    files = iter_image_files([photos])
    assert inspect.isgenerator(files)  # streamed, never a list of the whole folder
    assert relative(files, photos) == EXPECTED

    listing = tmp_path / "list.txt"
    listing.write_text(f"{photos / 'd'}\n\n{photos / 'notes.txt'}\r\n{photos / 'astronaut.jpg'}\n")
    found = list(iter_image_files([photos / "b"], from_file=listing))
    # explicit files are kept whatever their name (notes.txt then fails when loaded)
    assert relative(found, photos) == ["b/c/coffee.jpg", "b/chelsea.png", "d/rocket-crop.jpg", "notes.txt",
                                       "astronaut.jpg"]
    streamed = list(iter_image_files([], from_file=io.BytesIO(listing.read_bytes())))
    assert relative(streamed, photos) == ["d/rocket-crop.jpg", "notes.txt", "astronaut.jpg"]


def test_lines_and_labels() -> None:
    assert list(iter_lines(io.BytesIO("\ufeffone\r\n\n  \ntwo 猫\n".encode()))) == ["one", "two 猫"]
    assert split_labels(["猫, 狗,car,", ""], ["a, b"]) == ["猫", "狗", "car", "a, b"]  # empty pieces dropped
    with pytest.raises(InputError, match="label '狗' is given twice"):  # would be merged into one at 100%
        split_labels(["猫, 狗", " 狗 "])


# ------------------------------------------------------------------------------------ embed


def test_embed_writes_npy_and_paths_equal_to_encode_images(photos: Path, tmp_path: Path, tiny_bundle: Path,
                                                           encoder: Encoder) -> None:
    out = tmp_path / "emb.npy"
    result = run_cli("embed", tiny_bundle, photos, "-o", out, "--precision", "fp32", "--batch-size", "2")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("embedded 5 images, ") and "failed" not in result.stdout
    paths = (tmp_path / "emb.paths.txt").read_text().splitlines()
    assert relative(paths, photos) == EXPECTED
    rows = np.load(out)
    assert rows.dtype == np.float32 and rows.shape == (5, encoder.embedding_dim)
    np.testing.assert_allclose(rows, encoder.encode_images(paths), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1, atol=1e-5)
    assert not checkpoint_folder(out).exists()

    # no decoding threads, odd batch size, raw features: same rows as encode_images(normalize=False)
    raw = tmp_path / "raw"
    result = run_cli("embed", tiny_bundle, photos, "-o", raw, "--precision", "fp32", "--workers", "0",
                     "--batch-size", "3", "--no-normalize")
    assert result.exit_code == 0, result.output
    items, raw_rows = read_embeddings(raw)
    assert items == paths
    np.testing.assert_allclose(raw_rows, encoder.encode_images(paths, normalize=False), atol=1e-5)

    again = run_cli("embed", tiny_bundle, photos, "-o", out)
    assert again.exit_code == 1 and "already exists; pass --overwrite" in again.stderr


def test_parquet_round_trip(photos: Path, tmp_path: Path, tiny_bundle: Path, encoder: Encoder) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    pa = pytest.importorskip("pyarrow")
    out = tmp_path / "emb.parquet"
    result = run_cli("embed", tiny_bundle, photos, "-o", out, "--precision", "fp32")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.parquet"]
    table = pq.read_table(out)
    assert table.column_names == ["path", "embedding"]
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), encoder.embedding_dim)
    paths, rows = read_embeddings(out)
    assert relative(paths, photos) == EXPECTED
    np.testing.assert_allclose(rows, encoder.encode_images(paths), atol=1e-6)


def test_parquet_without_pyarrow_says_how_to_install(photos: Path, tmp_path: Path, encoder: Encoder,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(MissingDependencyError, match=re.escape(install_command("parquet"))):
        embed_images_to_file(encoder, iter_image_files([photos]), tmp_path / "x.parquet")
    assert list(tmp_path.iterdir()) == []


def test_bad_files_are_reported_and_skipped(photos: Path, tmp_path: Path, tiny_bundle: Path,
                                            encoder: Encoder) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    Image.fromarray(photo("chelsea")).save(folder / "a-good.jpg")
    (folder / "b-text.jpg").write_text("this is text, not a JPEG")
    good = (photos / "astronaut.jpg").read_bytes()
    (folder / "c-truncated.jpg").write_bytes(good[: len(good) // 3])
    (folder / "d-dangling.png").symlink_to(folder / "missing.png")
    Image.fromarray(photo("coffee")).save(folder / "e-good.png")
    expected = {
        "b-text.jpg": "not an image file",
        "c-truncated.jpg": "truncated or corrupt image data",
        "d-dangling.png": "no such file",
    }
    if os.geteuid() != 0:  # root reads anything
        (folder / "f-locked.jpg").write_bytes(good)
        (folder / "f-locked.jpg").chmod(0)
        expected["f-locked.jpg"] = "permission denied"

    out = tmp_path / "out.npy"
    result = run_cli("embed", tiny_bundle, folder, tmp_path / "nowhere.jpg", "-o", out, "--precision", "fp32",
                     "--batch-size", "2")
    expected["nowhere.jpg"] = "no such file"
    assert result.exit_code == 4  # done, but some inputs failed (2 is a usage error)
    failed = result.stderr.strip().splitlines()
    assert len(failed) == len(expected)
    for line, (name, reason) in zip(failed, expected.items()):
        assert line.startswith("failed: ") and name in line and reason in line, line
    assert f"embedded 2 images, {len(expected)} failed" in result.stdout
    paths, rows = read_embeddings(out)
    assert [Path(p).name for p in paths] == ["a-good.jpg", "e-good.png"]
    np.testing.assert_allclose(rows, encoder.encode_images(paths), atol=1e-6)


# ----------------------------------------------------------------------------------- resume


class Counting:
    """Wraps encode_pixels: counts calls and rows, and raises KeyboardInterrupt on call ``stop_at``."""

    def __init__(self, encoder: Encoder, stop_at: int | None = None) -> None:
        self.encode = encoder.encode_pixels
        self.stop_at = stop_at
        self.calls = 0
        self.rows = 0

    def __call__(self, pixels: np.ndarray, *, normalize: bool = True) -> np.ndarray:
        self.calls += 1
        if self.calls == self.stop_at:
            raise KeyboardInterrupt
        self.rows += len(pixels)
        return self.encode(pixels, normalize=normalize)


def test_an_interrupted_run_resumes_without_redoing_work(photos: Path, tmp_path: Path, tiny_bundle: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    options = EmbedOptions(batch_size=2, workers=2, progress=False)
    reference = Encoder(tiny_bundle, provider="cpu", precision="fp32")
    embed_images_to_file(reference, iter_image_files([photos]), tmp_path / "whole.npy", options)
    expected_paths, expected_rows = read_embeddings(tmp_path / "whole.npy")

    out = tmp_path / "run.npy"
    first = Encoder(tiny_bundle, provider="cpu", precision="fp32")
    monkeypatch.setattr(first, "encode_pixels", Counting(first, stop_at=2))
    with pytest.raises(KeyboardInterrupt):
        embed_images_to_file(first, iter_image_files([photos]), out, options)
    assert first.encode_pixels.rows == 2  # type: ignore[attr-defined]
    assert not out.exists() and not (tmp_path / "run.paths.txt").exists()  # no partial output file
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]
    partial = checkpoint_folder(out)
    assert sorted(p.name for p in partial.iterdir()) == ["000000.items.jsonl", "000000.npy", "lock", "meta.json"]

    # other settings: refused rather than mixed
    with pytest.raises(OutputError, match="other settings"):
        embed_images_to_file(first, iter_image_files([photos]), out, EmbedOptions(normalize=False, progress=False))
    # a run still writing this output (here: a lock held by this test) keeps a second one out
    if sys.platform != "win32":
        import fcntl

        with open(partial / "lock", "a+") as held:
            fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            with pytest.raises(BusyError, match=r"another run (\(pid \d+\) )?is writing it"):
                embed_images_to_file(first, iter_image_files([photos]), out, options)

    second = Encoder(tiny_bundle, provider="cpu", precision="fp32")
    counter = Counting(second)
    monkeypatch.setattr(second, "encode_pixels", counter)
    report = embed_images_to_file(second, iter_image_files([photos]), out, options)
    assert counter.rows == 3 and counter.calls == 2  # the 2 finished files were not encoded again
    assert (report.rows, report.resumed, report.embedded) == (5, 2, 3)
    paths, rows = read_embeddings(out)
    assert paths == expected_paths
    np.testing.assert_allclose(rows, expected_rows, atol=1e-6)
    assert not partial.exists()


KILLED_RUN = """
import sys, time
from altclip_onnx.runtime import Encoder
from altclip_onnx.runtime.outputs import EmbedOptions, embed_images_to_file
from altclip_onnx.runtime.pipeline import iter_image_files

encoder = Encoder(sys.argv[1], provider="cpu", precision="fp32")
encode = encoder.encode_pixels
def slow(pixels, normalize=True):
    time.sleep(0.3)
    return encode(pixels, normalize=normalize)
encoder.encode_pixels = slow
options = EmbedOptions(batch_size=1, workers=1, progress=False, checkpoint_seconds=0)
embed_images_to_file(encoder, iter_image_files([sys.argv[2]]), sys.argv[3], options)
"""


def test_a_killed_run_resumes_from_its_last_chunk(photos: Path, tmp_path: Path, tiny_bundle: Path,
                                                  encoder: Encoder, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "killed.parquet" if _has_pyarrow() else tmp_path / "killed.npy"
    partial = checkpoint_folder(out)
    process = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(tiny_bundle), str(photos), str(out)])
    try:
        deadline = time.monotonic() + 60
        while not (partial / "000001.npy").exists():
            assert process.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert not out.exists()
    committed = len(list(partial.glob("*.npy")))
    assert 2 <= committed < 5

    counter = Counting(encoder)
    monkeypatch.setattr(encoder, "encode_pixels", counter)
    report = embed_images_to_file(encoder, iter_image_files([photos]), out, EmbedOptions(progress=False))
    assert report.resumed == committed and counter.rows == 5 - committed
    paths, rows = read_embeddings(out)
    assert relative(paths, photos) == EXPECTED
    monkeypatch.undo()
    np.testing.assert_allclose(rows, encoder.encode_images(paths), atol=1e-6)
    assert not partial.exists()


def _has_pyarrow() -> bool:
    try:
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        return False
    return True


# -------------------------------------------------------------------------------- embed-text


def test_embed_text_from_args_file_and_stdin(tmp_path: Path, tiny_bundle: Path, encoder: Encoder) -> None:
    texts = ["a photo of a cat", "一张猫的照片", "two\nlines"]
    result = run_cli("embed-text", tiny_bundle, *texts, "-o", tmp_path / "args", "--precision", "fp32")
    assert result.exit_code == 0, result.output
    assert "embedded 3 texts" in result.stdout
    stored = [json.loads(line) for line in (tmp_path / "args.texts.jsonl").read_text().splitlines()]
    assert stored == texts
    items, rows = read_embeddings(tmp_path / "args")
    assert items == texts
    np.testing.assert_allclose(rows, encoder.encode_texts(texts), atol=1e-6)

    listing = tmp_path / "texts.txt"
    listing.write_text("a dog\n\n狗\n", encoding="utf-8")
    result = run_cli("embed-text", tiny_bundle, "--from-file", listing, "-o", tmp_path / "file.npy",
                     "--precision", "fp32")
    assert result.exit_code == 0, result.output
    items, rows = read_embeddings(tmp_path / "file.npy")
    assert items == ["a dog", "狗"]
    np.testing.assert_allclose(rows, encoder.encode_texts(items), atol=1e-6)

    result = run_cli("embed-text", tiny_bundle, "-", "-o", tmp_path / "stdin", "--precision", "fp32",
                     "--no-normalize", input="a dog\n狗\n".encode())
    assert result.exit_code == 0, result.output
    items, rows = read_embeddings(tmp_path / "stdin")
    assert items == ["a dog", "狗"]
    np.testing.assert_allclose(rows, encoder.encode_texts(items, normalize=False), atol=1e-5)

    if _has_pyarrow():
        result = run_cli("embed-text", tiny_bundle, *texts, "-o", tmp_path / "t.parquet", "--precision", "fp32")
        import pyarrow.parquet as pq

        assert pq.read_table(tmp_path / "t.parquet").column("text").to_pylist() == texts


# ---------------------------------------------------------------------------------- classify


def test_classify_table_and_json(photos: Path, tiny_bundle: Path, encoder: Encoder) -> None:
    labels = ["猫", "狗", "car", "rocket, launching"]
    images = [photos / "astronaut.jpg", photos / "b" / "chelsea.png"]
    result = run_cli("classify", tiny_bundle, *images, "--labels", "猫,狗, car", "--label", "rocket, launching",
                     "--precision", "fp32", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [row["path"] for row in rows] == [str(p) for p in images]
    expected = encoder.classify(images, labels)
    for row, probs in zip(rows, expected):
        assert list(row["probabilities"]) == labels
        assert sum(row["probabilities"].values()) == pytest.approx(1, abs=1e-5)
        np.testing.assert_allclose(list(row["probabilities"].values()), probs, atol=1e-5)

    table = run_cli("classify", tiny_bundle, *images, "--labels", "猫,狗,car", "--label", "rocket, launching",
                    "--precision", "fp32", "--top", "2", "--template", "a photo of a {}.")
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    assert lines[0].startswith("image") and "top 2" in lines[0]
    assert len(lines) == 3 and all(line.count("%") == 2 for line in lines[1:])
    probs = encoder.classify(images[:1], labels, ["a photo of a {}."])[0]
    best = labels[int(np.argmax(probs))]
    assert lines[1].split("  ")[1].strip().startswith(best)
    assert f"{100 * probs.max():.1f}%" in lines[1]

    missing = run_cli("classify", tiny_bundle, photos / "nope.jpg", "--labels", "a,b", "--json")
    assert missing.exit_code == 4 and "nope.jpg: no such file" in missing.stderr
    # --json lists failed files too, as evaluate --json does
    assert json.loads(missing.stdout) == [{"path": str(photos / "nope.jpg"), "error": "no such file"}]
    duplicate = run_cli("classify", tiny_bundle, images[0], "--labels", "a, b,a")
    assert duplicate.exit_code == 1 and "label 'a' is given twice" in duplicate.stderr


# -------------------------------------------------------------------------------------- draft


def test_draft_is_close_to_exact_on_a_large_jpeg(tmp_path: Path, encoder: Encoder) -> None:
    big = Image.fromarray(photo("astronaut")).resize((2400, 2400), Image.BICUBIC)
    path = tmp_path / "big.jpg"
    big.save(path, quality=92)
    exact = next(embed_images(encoder, [path], progress=False)).embeddings[0]
    draft = next(embed_images(encoder, [path], draft=True, progress=False)).embeddings[0]
    assert not np.array_equal(exact, draft)
    assert float(exact @ draft) > 0.99  # both L2-normalized


# ------------------------------------------------------------------------------ runtime only


def test_the_commands_never_import_torch_or_transformers(photos: Path, tmp_path: Path, tiny_bundle: Path) -> None:
    code = BLOCK_EXPORT_SIDE + textwrap.dedent(
        f"""
        from altclip_onnx.cli import main
        try:
            main(["embed", {str(tiny_bundle)!r}, {str(photos)!r}, "-o", {str(tmp_path / 'e.npy')!r}])
        except SystemExit as exit:
            assert not exit.code, exit.code
        heavy = [m for m, mod in sys.modules.items() if mod is not None and m.split(".")[0] in {BLOCKED!r}]
        assert not heavy, heavy
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
