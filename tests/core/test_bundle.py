"""The bundle contract (bundle.py, precisions.py) and how files are written (files.py)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import stat
from pathlib import Path

import pytest

from altclip_onnx.bundle import (
    TOWERS,
    Manifest,
    ModelIdentity,
    check_same_model,
    model_filename,
    read_manifest,
    require_integrity,
)
from altclip_onnx.errors import BundleError, InputError, IntegrityError, OutputError, StoreError
from altclip_onnx.files import atomic_path, hash_file, staging_folder, write_json
from altclip_onnx.precisions import PRECISION_NAMES, auto_order, parse_precisions


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


USUAL_FILE = 0o666 & ~0o022  # the tests run with the usual umask 022 (set below)


@pytest.fixture(autouse=True)
def usual_umask():  # type: ignore[no-untyped-def]
    old = os.umask(0o022)
    yield
    os.umask(old)


# --- the manifest ---------------------------------------------------------------------------------


def test_manifest_round_trips_and_lists_every_file(tiny_bundle: Path) -> None:
    manifest = read_manifest(tiny_bundle)
    assert Manifest.from_json(json.loads(json.dumps(manifest.to_json()))) == manifest
    for tower in TOWERS:
        for precision, variant in manifest.towers[tower].items():
            assert variant.path == f"{tower}/{model_filename(precision)}"
            for name in variant.files:
                entry = manifest.files[name]
                path = tiny_bundle / name
                assert entry.size == path.stat().st_size
                assert entry.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert "textual/tokenizer.json" in manifest.files and "visual/preprocessor_config.json" in manifest.files


def test_fingerprint_is_the_fp32_weights_and_survives_moves(tiny_bundle: Path, tmp_path: Path) -> None:
    manifest = read_manifest(tiny_bundle)
    # Documented: sha256 over "name sha256" lines of both towers' fp32 files, sorted by name.
    files = sorted(f for tower in TOWERS for f in manifest.towers[tower]["fp32"].files)
    lines = [f"{name} {hashlib.sha256((tiny_bundle / name).read_bytes()).hexdigest()}" for name in files]
    assert manifest.fingerprint() == hashlib.sha256("\n".join(lines).encode()).hexdigest()
    moved = tmp_path / "elsewhere"
    shutil.copytree(tiny_bundle, moved)
    assert read_manifest(moved).identity() == manifest.identity()
    data = json.loads((moved / "manifest.json").read_text())
    data["files"]["textual/model.onnx"]["sha256"] = "0" * 64
    other = Manifest.from_json(data)
    assert other.fingerprint() != manifest.fingerprint()
    assert not other.identity().same_model(manifest.identity())
    int8_changed = json.loads((tiny_bundle / "manifest.json").read_text())
    int8_changed["files"]["textual/model.int8.onnx"]["sha256"] = "1" * 64  # another int8 of the same weights
    assert Manifest.from_json(int8_changed).fingerprint() == manifest.fingerprint()


def test_same_model_check_refuses_another_and_warns_once_on_another_precision(caplog: pytest.LogCaptureFixture) -> None:
    a = ModelIdentity("a" * 64, "AltCLIP-m18", "AltCLIP-m18", 1024)
    b = dataclasses.replace(a, fingerprint="b" * 64)
    with pytest.raises(StoreError, match=r"^idx: made with X, but B is AltCLIP-m18 \(1024-d, weights bbbbbbbbbbbb\); fix it$"):
        check_same_model("idx: made with X", a, "int8", "B is", b, "int8", error=StoreError, fix="fix it")
    warned: set = set()
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            check_same_model("idx", a, "int8", "B is", a, "fp32", error=StoreError, fix="", warned=warned)
    assert len([r for r in caplog.records if "computed at int8, this encoder runs fp32" in r.getMessage()]) == 1


def test_integrity_names_the_corrupt_file(tiny_bundle: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(tiny_bundle, copy)
    assert require_integrity(copy) == read_manifest(copy)
    with open(copy / "textual/model.int8.onnx", "r+b") as handle:
        handle.seek(100)
        handle.write(b"\x00" * 16)
    with pytest.raises(IntegrityError, match=r"textual/model\.int8\.onnx: sha256 differs .*re-export or re-download"):
        require_integrity(copy)
    (copy / "visual/model.onnx").unlink()
    with pytest.raises(IntegrityError, match=r"\(and 1 more\)") as caught:
        require_integrity(copy)
    assert len(caught.value.problems) == 2 and isinstance(caught.value, BundleError)
    assert any(p.endswith("visual/model.onnx: missing") for p in caught.value.problems)


def test_precisions_are_declared_once_and_parsed_one_way() -> None:
    assert PRECISION_NAMES == ("fp32", "int8", "fp16")
    assert [model_filename(p) for p in PRECISION_NAMES] == ["model.onnx", "model.int8.onnx", "model.fp16.onnx"]
    assert parse_precisions("INT8, fp32") == ("fp32", "int8")
    assert parse_precisions(["fp16", "int8,fp16"]) == ("int8", "fp16")
    with pytest.raises(InputError, match="--precision: unknown bf16; choose from fp32, int8, fp16"):
        parse_precisions("fp32,bf16")
    assert auto_order("CPUExecutionProvider") == ("int8", "fp32")
    assert auto_order("CUDAExecutionProvider") == ("fp16", "fp32")
    assert auto_order("CoreMLExecutionProvider") == ("fp32",)


# --- writing files --------------------------------------------------------------------------------


def test_atomic_writes_leave_nothing_half_written_and_use_the_usual_mode(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    write_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1} and mode(target) == USUAL_FILE
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_staging_folder_gives_every_file_the_usual_mode(tmp_path: Path) -> None:
    target = tmp_path / "bundle"
    with staging_folder(target, overwrite=False) as stage:
        (stage / "sub").mkdir()
        private = stage / "sub" / "model.onnx.data"
        private.write_bytes(b"weights")
        private.chmod(0o600)  # as onnx writes external weights
    assert mode(target) == 0o755 and mode(target / "sub") == 0o755
    assert mode(target / "sub" / "model.onnx.data") == USUAL_FILE
    with pytest.raises(OutputError, match="exists and is not empty; pass --overwrite"):
        with staging_folder(target, overwrite=False):
            pass


def test_hash_file_is_sha256_or_blake2b(tmp_path: Path) -> None:
    path = tmp_path / "x.bin"
    path.write_bytes(os.urandom(3 << 20))
    assert hash_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert hash_file(path, "blake2b-128") == hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()
