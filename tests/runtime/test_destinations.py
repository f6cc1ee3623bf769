"""Every writing command checks its destination before the work, and a late write failure is one line."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from click.testing import CliRunner

from altclip_onnx.cli import main
from altclip_onnx.runtime import bench
from altclip_onnx.runtime.encoder import Encoder


@pytest.fixture
def no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any model call fails the test: the destination must be refused before the work starts."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the work ran before the destination was checked")

    monkeypatch.setattr(Encoder, "encode_pixels", refuse)
    monkeypatch.setattr(Encoder, "encode_texts", refuse)
    monkeypatch.setattr(bench, "measure", refuse)


def run(*args: object):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def one_line_error(result, folder: Path) -> str:  # type: ignore[no-untyped-def]
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(folder) in lines[0], result.stderr
    assert "Traceback" not in result.output
    return lines[0]


@pytest.mark.usefixtures("no_work")
@pytest.mark.parametrize("command", ["embed", "embed-text", "index", "fewshot build", "bench"])
def test_a_read_only_destination_is_refused_before_the_work(command: str, read_only_folder: Path,
                                                             tiny_bundle: Path, fixture_photos: list[Path],
                                                             tmp_path: Path) -> None:
    photos = fixture_photos[0].parent
    classes = tmp_path / "classes"
    for name, photo in (("a", fixture_photos[0]), ("b", fixture_photos[1])):
        (classes / name).mkdir(parents=True)
        for i in range(2):
            (classes / name / f"{i}.jpg").write_bytes(photo.read_bytes())
    args = {
        "embed": ("embed", tiny_bundle, photos, "-o", read_only_folder / "emb.npy"),
        "embed-text": ("embed-text", tiny_bundle, "a cat", "-o", read_only_folder / "texts.parquet"),
        "index": ("index", tiny_bundle, photos, "--db", read_only_folder / "db"),
        "fewshot build": ("fewshot", "build", tiny_bundle, classes, "-o", read_only_folder / "cache.npz"),
        "bench": ("bench", tiny_bundle, "-o", read_only_folder / "bench.json"),
    }[command]
    message = one_line_error(run(*args), read_only_folder)
    assert "read-only file system" in message or "permission denied" in message
    assert f"choose another {'--db' if command == 'index' else '-o'} " in message  # the option that chose it


def test_a_full_disk_during_the_final_write_is_one_line(monkeypatch: pytest.MonkeyPatch, tiny_bundle: Path,
                                                        fixture_photos: list[Path], tmp_path: Path) -> None:
    """A failure after the work (here: ENOSPC writing the final .npy) is the usual error, not a traceback."""
    from altclip_onnx.runtime import outputs

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(outputs.np.lib.format, "write_array_header_1_0", full)
    out = tmp_path / "emb.npy"
    result = run("embed", tiny_bundle, *fixture_photos[:2], "-o", out)
    message = one_line_error(result, tmp_path)
    assert "no space left on the device" in message
    assert not out.exists()  # nothing half-written; the finished rows stay in the checkpoint
    assert (tmp_path / "emb.npy.partial").is_dir()


@pytest.mark.usefixtures("no_work")
@pytest.mark.parametrize("command", ["embed", "embed-text"])
def test_an_existing_folder_as_o_is_refused(command: str, tiny_bundle: Path, fixture_photos: list[Path],
                                           tmp_path: Path) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    inputs = fixture_photos[0] if command == "embed" else "hi"
    message = one_line_error(run(command, tiny_bundle, inputs, "-o", folder), folder)
    assert "is a folder" in message and str(folder / "embeddings.npy") in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and not any(folder.iterdir())  # no out.npy beside it
