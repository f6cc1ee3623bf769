"""What runs is what was verified: corrupt or truncated weights are refused before anything runs or is written."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from altclip_onnx import Encoder, IntegrityError, OutputError
from altclip_onnx import bundle as bundle_module
from altclip_onnx.bundle import REFERENCE_FILES, VERIFIED_RECORD
from altclip_onnx.cli import main


@pytest.fixture
def copy(tiny_bundle: Path, tmp_path: Path) -> Path:
    target = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, target, ignore=shutil.ignore_patterns(VERIFIED_RECORD))
    return target


def flip(path: Path, offset: int, length: int = 4096) -> None:
    """Invert ``length`` bytes in the middle of the weights, keeping the size (as a bad disk or copy would)."""
    with open(path, "r+b") as handle:
        handle.seek(offset)
        data = handle.read(length)
        handle.seek(offset)
        handle.write(bytes(b ^ 0xFF for b in data))


def hash_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = bundle_module.hash_file

    def counting(path, *args):  # type: ignore[no-untyped-def]
        calls.append(Path(path).name)
        return real(path, *args)

    monkeypatch.setattr(bundle_module, "hash_file", counting)
    return calls


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_a_flipped_block_of_weights_is_refused_before_anything_runs(copy: Path, precision: str) -> None:
    graph = copy / "visual" / ("model.onnx" if precision == "fp32" else "model.int8.onnx")
    flip(graph, graph.stat().st_size // 2)
    with pytest.raises(IntegrityError, match=rf"{graph}: sha256 differs from the manifest .*re-export or re-download"):
        Encoder(copy, precision=precision)


def test_a_truncated_file_is_named_not_a_crash_in_onnxruntime(copy: Path) -> None:
    graph = copy / "textual" / "model.int8.onnx"
    size = graph.stat().st_size
    os.truncate(graph, size // 2)
    with pytest.raises(IntegrityError, match=rf"{graph}: {size // 2} bytes, the manifest says {size} \(truncated"):
        Encoder(copy)


def test_checksums_are_checked_once_per_file_state(copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = hash_calls(monkeypatch)
    Encoder(copy, precision="fp32")
    # Both towers' graphs, the tokenizer, and the reference the first-use check reads.
    reference = [Path(name).name for name in REFERENCE_FILES]
    assert sorted(calls) == sorted(["model.onnx", "model.onnx", "tokenizer.json", *reference])
    record = json.loads((copy / VERIFIED_RECORD).read_text())
    assert set(record["files"]) == {"visual/model.onnx", "textual/model.onnx", "textual/tokenizer.json",
                                    *REFERENCE_FILES}
    calls.clear()
    Encoder(copy, precision="fp32")
    assert calls == []  # recorded: a restart does not hash 2 GB again
    Encoder(copy, precision="int8")
    assert sorted(calls) == ["model.int8.onnx", "model.int8.onnx"]  # only what was not checked yet
    # Same size, new content: the file's state changed (mtime, ctime), so it is hashed again and refused.
    time.sleep(0.01)
    graph = copy / "textual" / "model.onnx"
    flip(graph, graph.stat().st_size // 3, 64)
    calls.clear()
    with pytest.raises(IntegrityError, match="textual/model.onnx: sha256 differs"):
        Encoder(copy, precision="fp32")
    assert calls == ["model.onnx"]


def test_a_read_only_bundle_is_checked_every_time(copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = hash_calls(monkeypatch)

    def refuse(path, data):  # type: ignore[no-untyped-def]
        raise OutputError(f"{path}: cannot be written (read-only file system)")

    monkeypatch.setattr(bundle_module, "write_json", refuse)
    for _ in range(2):
        Encoder(copy, precision="fp32")
    files = 3 + len(REFERENCE_FILES)  # two graphs, the tokenizer, the reference
    assert len(calls) == 2 * files and not (copy / VERIFIED_RECORD).exists()


def test_the_cli_refuses_in_one_line_and_writes_nothing(copy: Path, fixture_photos: list[Path],
                                                        tmp_path: Path) -> None:
    graph = copy / "visual" / "model.onnx"
    flip(graph, graph.stat().st_size // 2)
    out = tmp_path / "out" / "emb.npy"
    result = CliRunner().invoke(main, ["embed", str(copy), str(fixture_photos[0]), "-o", str(out),
                                       "--precision", "fp32"], catch_exceptions=False)
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f"error: {graph}: sha256 differs from the manifest (corrupt or modified); re-export or re-download the bundle"]
    assert not out.parent.exists()
    # The other precision's files are intact and still run.
    assert Encoder(copy, precision="int8").encode_images(fixture_photos[:1]).shape == (1, 16)


def test_an_intact_bundle_gives_the_same_vectors_with_and_without_the_check(tiny_bundle: Path,
                                                                             fixture_photos: list[Path]) -> None:
    checked = Encoder(tiny_bundle, precision="fp32").encode_images(fixture_photos)
    unchecked = Encoder(tiny_bundle, precision="fp32", check_files=False).encode_images(fixture_photos)
    np.testing.assert_array_equal(checked, unchecked)
