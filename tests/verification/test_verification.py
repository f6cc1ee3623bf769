"""Verification where the bundle runs: the stored PyTorch reference, the torch-free verify command, and the
first-use check Encoder runs once per variant, provider and machine.

These run in the torch-free environment too (scripts/test.sh): nothing here needs the export side.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from altclip_onnx import Encoder, VerificationError
from altclip_onnx.bundle import (MANIFEST, REFERENCE_FILES, TEXTUAL, VERIFIED_RECORD, VISUAL, read_manifest)
from altclip_onnx.files import hash_file
from altclip_onnx.precisions import PRECISIONS
from altclip_onnx.runtime.images import IMAGE_BATCH_SIZE
from altclip_onnx.runtime.text import TEXT_BATCH_SIZE
from altclip_onnx.verification import selfcheck, verify_bundle
from altclip_onnx.verification.reference import read_reference

# What the issue asks of the verification set (written out: the counts are the contract, not the code's).
MIN_IMAGES = 64
MIN_SENTENCES = 64
LANGUAGES = 18


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "altclip_onnx.cli", *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})})


def copy_bundle(bundle: Path, target: Path) -> Path:
    shutil.copytree(bundle, target, ignore=shutil.ignore_patterns(VERIFIED_RECORD))
    return target


def swap_int8_graph(bundle: Path, other: Path, tower: str) -> None:
    """Replace ``tower``'s int8 graph with another model's and update the manifest to match, so integrity
    passes and only the numbers can tell."""
    relpath = f"{tower}/model.int8.onnx"
    shutil.copy(other / relpath, bundle / relpath)
    data = json.loads((bundle / MANIFEST).read_text())
    data["files"][relpath] = {"sha256": hash_file(bundle / relpath), "size": (bundle / relpath).stat().st_size}
    (bundle / MANIFEST).write_text(json.dumps(data))


def test_the_bundle_carries_enough_cases_in_every_language(tiny_bundle: Path) -> None:
    manifest = read_manifest(tiny_bundle)
    assert set(REFERENCE_FILES) <= set(manifest.reference) <= set(manifest.files)
    reference = read_reference(tiny_bundle, manifest)
    images = sorted(row for c in reference.cases if c.tower == VISUAL for row in c.rows)
    assert images == list(range(len(reference.images))) and len(images) >= MIN_IMAGES
    sentences = {t for c in reference.cases if c.tower == TEXTUAL and c.max_length == manifest.text.max_length
                 for t in c.texts}
    languages = {lang for c in reference.cases for lang in c.languages if lang != "mixed"}
    assert len(sentences) >= MIN_SENTENCES and len(languages) == LANGUAGES
    assert any(c.quick for c in reference.cases if c.tower == VISUAL)
    assert any(c.quick for c in reference.cases if c.tower == TEXTUAL)
    assert len(reference.image_notes) == len(reference.images) and reference.distinct_images


def test_stored_inputs_are_what_the_runtime_makes(tiny_bundle: Path) -> None:
    """The sentences re-tokenized here give the stored ids; the stored crops normalize to the stored pixels."""
    encoder = Encoder(tiny_bundle, precision="fp32", self_check=False)
    reference = read_reference(tiny_bundle, read_manifest(tiny_bundle))
    for case in reference.cases:
        if case.tower == TEXTUAL and case.max_length == encoder.max_length:
            ids = encoder.tokenize(list(case.texts))
            np.testing.assert_array_equal(ids["input_ids"], case.inputs["input_ids"])
        elif case.tower == VISUAL:
            pixels = encoder.preprocess([reference.images[row] for row in case.rows])
            np.testing.assert_array_equal(pixels, case.inputs["pixel_values"])


def test_torch_free_verify_passes_and_records(tiny_bundle: Path, tmp_path: Path) -> None:
    bundle = copy_bundle(tiny_bundle, tmp_path / "b")
    report = verify_bundle(bundle, provider="cpu")
    assert report.passed
    precisions = read_manifest(bundle).precisions(VISUAL)
    assert {r.precision for r in report.rows} == set(precisions)
    for precision in precisions:
        gate = PRECISIONS[precision].gate
        rows = [r for r in report.rows if r.precision == precision]
        assert gate.min_cosine is None or min(r.min_cosine for r in rows) >= gate.min_cosine
    for precision, zs in report.extra["zero_shot_agreement"].items():
        assert zs["min_cases"] == PRECISIONS[precision].gate.zero_shot_min_cases
    numbers = json.loads((bundle / VERIFIED_RECORD).read_text())["numbers"]
    assert len(numbers) == 2 * len(precisions)  # every tower at every precision, on this machine


def test_verify_refuses_a_swapped_int8_graph_naming_tower_and_precision(tiny_bundle: Path, other_bundle: Path,
                                                                        tmp_path: Path) -> None:
    bundle = copy_bundle(tiny_bundle, tmp_path / "b")
    swap_int8_graph(bundle, other_bundle, VISUAL)
    assert cli("verify", str(bundle), "--integrity").returncode == 0  # the checksums agree
    result = cli("verify", str(bundle), "--provider", "cpu")
    assert result.returncode == 3, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "visual int8" in last and "cosine" in last
    assert "Traceback" not in result.stderr
    # Only int8 is wrong: the other precisions still pass on their own.
    assert cli("verify", str(bundle), "--precision", "fp32").returncode == 0


def test_a_bundle_without_a_reference_says_so_in_one_line(tiny_bundle: Path, tmp_path: Path) -> None:
    bundle = copy_bundle(tiny_bundle, tmp_path / "old")
    data = json.loads((bundle / MANIFEST).read_text())
    data["format_version"] = "1.0"
    data.pop("reference")
    for name in REFERENCE_FILES:
        data["files"].pop(name)
    (bundle / MANIFEST).write_text(json.dumps(data))
    result = cli("verify", str(bundle))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "PyTorch reference" in lines[0] and "re-export" in lines[0] and "--model" in lines[0]
    # Encoder still runs such a bundle (nothing to check it against), and says so once.
    assert Encoder(bundle, precision="int8").encode_texts(["hi"]).shape[0] == 1


def test_encoder_refuses_a_variant_that_fails_here_and_can_be_told_to_trust_it(
        tiny_bundle: Path, other_bundle: Path, tmp_path: Path) -> None:
    bundle = copy_bundle(tiny_bundle, tmp_path / "b")
    swap_int8_graph(bundle, other_bundle, TEXTUAL)
    encoder = Encoder(bundle, provider="cpu", precision="int8")
    encoder.encode_images(np.zeros((1, 40, 40, 3), np.uint8))  # the image tower is fine
    with pytest.raises(VerificationError) as caught:
        encoder.encode_texts(["a photo of a cat"])
    message = str(caught.value)
    assert "\n" not in message
    assert "textual" in message and "int8" in message and "CPUExecutionProvider" in message and "cosine" in message
    trusted = Encoder(bundle, provider="cpu", precision="int8", self_check=False)
    assert trusted.encode_texts(["a photo of a cat"]).shape == (1, trusted.embedding_dim)
    # The command line: exit 3 with one line, or the opt-out.
    texts = tmp_path / "texts.txt"
    texts.write_text("a photo of a cat\n")
    result = cli("embed-text", str(bundle), "--precision", "int8", "--from-file", str(texts), "-o", str(tmp_path / "v.npy"))
    assert result.returncode == 3 and "textual" in result.stderr and "Traceback" not in result.stderr
    result = cli("--no-self-check", "embed-text", str(bundle), "--precision", "int8", "--from-file", str(texts),
                 "-o", str(tmp_path / "v.npy"))
    assert result.returncode == 0, result.stderr


def test_first_use_check_runs_once_per_place(tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = copy_bundle(tiny_bundle, tmp_path / "b")
    ran = []
    real = selfcheck.check_precision
    monkeypatch.setattr(selfcheck, "check_precision", lambda *a, **k: ran.append(a[1]) or real(*a, **k))
    Encoder(bundle, precision="int8").encode_texts(["one"])
    assert ran == ["int8"]
    Encoder(bundle, precision="int8").encode_texts(["two"])  # recorded: not again
    assert ran == ["int8"]
    Encoder(bundle, precision="fp32").encode_texts(["three"])  # another variant: checked
    assert ran == ["int8", "fp32"]
    other_cpu = {**selfcheck.cpu_identity(), "features": ["sse4_2"]}
    monkeypatch.setattr(selfcheck, "cpu_identity", lambda: other_cpu)
    Encoder(bundle, precision="int8").encode_texts(["four"])  # another CPU: checked again
    assert ran == ["int8", "fp32", "int8"]


class AloneAtOneLength:
    """A real text session that, like a runtime whose kernels depend on the shape, nudges the vector of a text
    run by itself at one length only (by 1% of its length: cosine about 0.99995, which only the batch test,
at 0.99999, can see)."""

    def __init__(self, session: object, length: int) -> None:
        self.session, self.length = session, length

    def run(self, names: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        outputs = self.session.run(names, feed)
        return nudged(outputs) if feed["input_ids"].shape == (1, self.length) else outputs

    def __getattr__(self, name: str) -> object:
        return getattr(self.session, name)


def nudged(outputs: list[np.ndarray]) -> list[np.ndarray]:
    """Every vector moved by 1% of its length (cosine about 0.99995: only the batch test, at 0.99999, sees it)."""
    direction = np.cos(np.arange(outputs[0].shape[-1]))
    direction /= np.linalg.norm(direction)
    return [value + 0.01 * np.linalg.norm(value, axis=-1, keepdims=True) * direction for value in outputs]


class OtherwiseWhen(AloneAtOneLength):
    """A real text session whose vectors move whenever ``when(feed)`` holds, and which says whether texts of
    different lengths may share a padded batch on it (``pads_texts``, as OpenVINO's runtime says it may not)."""

    def __init__(self, session: object, when: object, pads_texts: bool) -> None:
        self.session, self.when, self.pads_texts = session, when, pads_texts

    def run(self, names: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        outputs = self.session.run(names, feed)
        return nudged(outputs) if self.when(feed) else outputs  # type: ignore[operator]


def padded(feed: dict[str, np.ndarray]) -> bool:
    return not feed["attention_mask"].all()


def with_others(feed: dict[str, np.ndarray]) -> bool:
    return len(feed["input_ids"]) > 1


@pytest.mark.parametrize("when, pads_texts, passes", [
    (padded, True, False),  # a padded text computed otherwise, and padded batches formed: refused
    (padded, False, True),  # the same, on a runtime that batches texts only by length: never padded, passes
    # Unpadded, but the vector moves with other texts of its length: refused (the quick batch's texts differ in
    # length, so only the batch of one length the check builds around each text can catch it).
    (with_others, False, False),
])
def test_a_runtime_that_batches_texts_by_length_is_checked_the_way_it_runs(tiny_bundle: Path, tmp_path: Path, when,
                                                                           pads_texts: bool, passes: bool) -> None:
    bundle = copy_bundle(tiny_bundle, tmp_path / "b")
    manifest = read_manifest(bundle)
    encoder = Encoder(bundle, precision="fp32", self_check=False)
    session = OtherwiseWhen(encoder.session(TEXTUAL), when, pads_texts)
    if passes:
        selfcheck.ensure_verified(bundle, manifest, TEXTUAL, "fp32", session)
    else:
        with pytest.raises(VerificationError, match="does not match the bundle's PyTorch reference here"):
            selfcheck.ensure_verified(bundle, manifest, TEXTUAL, "fp32", session)


def test_first_use_check_runs_every_row_of_its_batches_alone(tiny_bundle: Path, tmp_path: Path) -> None:
    """A variant whose vector for a text alone differs at the length of the quick batch's last row only (the
    first row is another length) is refused as batch-dependent: one row alone would have passed it."""
    bundle = copy_bundle(tiny_bundle, tmp_path / "b")
    manifest = read_manifest(bundle)
    quick = next(c for c in read_reference(bundle, manifest, quick_only=True).cases if c.tower == TEXTUAL)
    lengths = quick.inputs["attention_mask"].sum(axis=1)
    assert lengths[-1] != lengths[0]
    encoder = Encoder(bundle, precision="fp32", self_check=False)
    session = AloneAtOneLength(encoder.session(TEXTUAL), int(lengths[-1]))
    with pytest.raises(VerificationError, match="alone and inside a batch .* vectors depend on the batch"):
        selfcheck.ensure_verified(bundle, manifest, TEXTUAL, "fp32", session)
    selfcheck.ensure_verified(bundle, manifest, TEXTUAL, "fp32", encoder.session(TEXTUAL))  # the real one passes


TILE_ROWS = 32


class WrongOnALastTileRow(AloneAtOneLength):
    """A real text session that gets a text wrong (its vector negated) when the text's class token is the last
    row of a 32-row tile of the [texts x tokens] rows the GEMMs run on, as onnxruntime 1.21-1.24's int8 GEMM did
    on AMX CPUs (docs/limits.md): right alone, and in an 8-text batch at the quick case's length."""

    def __init__(self, session: object) -> None:
        self.session = session

    def run(self, names: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        outputs = self.session.run(names, feed)
        count, length = feed["input_ids"].shape
        wrong = [row for row in range(count) if row * length % TILE_ROWS == TILE_ROWS - 1]
        for value in outputs:
            value[wrong] = -value[wrong]
        return outputs


class WrongPastRow(AloneAtOneLength):
    """A real image session that gets every image past the first ``rows`` of a batch wrong (negated)."""

    def __init__(self, session: object, rows: int) -> None:
        self.session, self.rows = session, rows

    def run(self, names: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        outputs = self.session.run(names, feed)
        for value in outputs:
            value[self.rows :] = -value[self.rows :]
        return outputs


def test_first_use_check_runs_texts_in_a_batch_of_the_encoders_size(tiny_bundle: Path, tmp_path: Path) -> None:
    """A text wrong only in a batch as large as the Encoder's is refused: the quick case's own batch of 8 (and
    each text alone) come out right on that session, the check's batch of TEXT_BATCH_SIZE texts does not."""
    bundle = copy_bundle(tiny_bundle, tmp_path / "b")
    manifest = read_manifest(bundle)
    quick = next(c for c in read_reference(bundle, manifest, quick_only=True).cases if c.tower == TEXTUAL)
    encoder = Encoder(bundle, precision="fp32", self_check=False)
    real, session = encoder.session(TEXTUAL), WrongOnALastTileRow(encoder.session(TEXTUAL))
    assert quick.size < TEXT_BATCH_SIZE
    for got, expected in zip(session.run(["text_embeds"], quick.inputs), real.run(["text_embeds"], quick.inputs)):
        np.testing.assert_array_equal(got, expected)  # the quick case alone cannot tell
    with pytest.raises(VerificationError, match="alone and inside a batch .* vectors depend on the batch"):
        selfcheck.ensure_verified(bundle, manifest, TEXTUAL, "fp32", session)
    selfcheck.ensure_verified(bundle, manifest, TEXTUAL, "fp32", real)  # the real one passes


def test_first_use_check_runs_images_in_a_batch_of_the_encoders_size(tiny_bundle: Path, tmp_path: Path) -> None:
    bundle = copy_bundle(tiny_bundle, tmp_path / "b")
    manifest = read_manifest(bundle)
    quick = next(c for c in read_reference(bundle, manifest, quick_only=True).cases if c.tower == VISUAL)
    assert quick.size < IMAGE_BATCH_SIZE
    encoder = Encoder(bundle, precision="fp32", self_check=False)
    with pytest.raises(VerificationError, match="alone and inside a batch .* vectors depend on the batch"):
        selfcheck.ensure_verified(bundle, manifest, VISUAL, "fp32", WrongPastRow(encoder.session(VISUAL), quick.size))
    selfcheck.ensure_verified(bundle, manifest, VISUAL, "fp32", encoder.session(VISUAL))


def test_a_read_only_bundle_records_in_the_user_cache(read_only_bundle: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = read_only_bundle
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    Encoder(bundle, precision="int8").encode_texts(["hi"])
    cached = list((tmp_path / "cache" / "altclip-onnx" / "verified").glob("*.json"))
    assert len(cached) == 1 and json.loads(cached[0].read_text())["numbers"]


def test_verify_adds_your_own_images_and_texts(tiny_bundle: Path, fixture_photos: list[Path], tmp_path: Path) -> None:
    bundle = copy_bundle(tiny_bundle, tmp_path / "b")
    photos = tmp_path / "photos"
    photos.mkdir()
    for photo in fixture_photos:
        shutil.copy(photo, photos / photo.name)
    texts = tmp_path / "texts.txt"
    texts.write_text("a photo of a cat\n一只猫\n\nEin Hund im Park\n", encoding="utf-8")
    result = cli("verify", str(bundle), "--images", str(photos), "--texts", str(texts), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    own = [r for r in report["rows"] if r["case"].startswith("your ")]
    precisions = [p for p in read_manifest(bundle).precisions(VISUAL) if p != "fp32"]  # fp32 is their reference
    assert {r["precision"] for r in own} == set(precisions)
    images = sum(int(r["shape"]) for r in own if r["tower"] == VISUAL and r["output"] == "image_embeds")
    assert images == len(fixture_photos) * len(precisions)
    assert "fp32" in report["your_data"]["reference"]
    # Unusable own data: one line, naming the option.
    result = cli("verify", str(bundle), "--texts", str(tmp_path / "missing.txt"))
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    result = cli("verify", str(bundle), "--images", str(empty))
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode == 1 and len(errors) == 1 and str(empty) in errors[0] and "Traceback" not in result.stderr
