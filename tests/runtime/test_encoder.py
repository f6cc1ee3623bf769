"""The Encoder against the PyTorch/transformers reference: real numbers, no mocks of the model path.

Embeddings and zero-shot probabilities are compared with ``AltCLIPModel`` loaded afresh from the tiny
checkpoint the bundle was exported from, through transformers' own tokenizer and image processor. The
fixture builder computed those (tests/fixture.py); this module reads them (tests/reference.py), so it
runs without torch.
"""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from altclip_onnx import DEFAULT_TEMPLATES, Encoder
from altclip_onnx.bundle import TEXTUAL, VISUAL, Manifest, read_manifest
from altclip_onnx.errors import BundleError, InputError
from altclip_onnx.runtime.encoder import pick_precision

from ..cases import CLASSIFY_CASES, NEW_SENTENCES, ODD_PARITY_TEXTS, PARITY_TEXTS, PHOTOS
from ..reference import Reference

MIN_COSINE = 0.99999
# The int8 gate, written here rather than imported from the code it checks: min and mean cosine to PyTorch.
INT8_MIN_COSINE, INT8_MEAN_COSINE = 0.98, 0.995
# Parity numbers seen in this run, printed at the end of the module (pytest -s shows them).
MEASURED: dict[str, str] = {}


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.sum(a.astype(np.float64) * b, axis=1)


def max_offdiagonal_cosine(vectors: np.ndarray) -> float:
    v = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    sims = v @ v.T
    np.fill_diagonal(sims, -1.0)
    return float(sims.max())


def normalized(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def record(name: str, got: np.ndarray, want: np.ndarray) -> None:
    MEASURED[name] = (
        f"min cosine {cosines(got, want).min():.9f}, "
        f"max |diff| {float(np.abs(got.astype(np.float64) - want).max()):.3g}"
    )


@pytest.fixture(scope="module", autouse=True)
def report_numbers():  # type: ignore[no-untyped-def]
    yield
    if MEASURED:
        print("\nparity numbers:")
        for name, numbers in MEASURED.items():
            print(f"  {name}: {numbers}")


@pytest.fixture(scope="module")
def encoder(tiny_bundle: Path) -> Encoder:
    """The reference precision: parity with PyTorch is asserted on fp32 (int8 has its own, looser gate)."""
    return Encoder(tiny_bundle, provider="cpu", precision="fp32")


# --- end-to-end parity ----------------------------------------------------------------------------


def test_image_files_match_transformers_and_pytorch(encoder: Encoder, ref: Reference,
                                                    fixture_photos: list[Path]) -> None:
    want = ref["photo_features"]
    got = encoder.encode_images(fixture_photos)
    assert got.shape == (len(fixture_photos), encoder.embedding_dim) and got.dtype == np.float32
    record("images normalized", got, normalized(want))
    assert cosines(got, want).min() >= MIN_COSINE
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(got, normalized(want), atol=1e-5)

    raw = encoder.encode_images(fixture_photos, normalize=False, batch_size=2)
    record("images raw (normalize=False)", raw, want)
    np.testing.assert_allclose(raw, want, atol=1e-4 * max(1.0, float(np.abs(want).max())), rtol=1e-4)
    # The pixels themselves equal transformers' (the photos differ, so the towers see different inputs).
    np.testing.assert_allclose(encoder.preprocess(fixture_photos), ref["photo_pixels"], atol=1e-5)
    # Different photos embed clearly apart, or the parity above would prove little.
    assert max_offdiagonal_cosine(want) < 0.99
    assert Image.open(fixture_photos[list(PHOTOS).index("camera.jpg")]).mode == "L"


@pytest.mark.parametrize("batch_size", [1, 3, 32])
def test_texts_match_transformers_and_pytorch(encoder: Encoder, ref: Reference, batch_size: int) -> None:
    want = ref["parity_text_features"]
    got = encoder.encode_texts(PARITY_TEXTS, batch_size=batch_size)
    assert got.shape == (len(PARITY_TEXTS), encoder.embedding_dim) and got.dtype == np.float32
    record(f"texts normalized, batch {batch_size}", got, normalized(want))
    assert cosines(got, want).min() >= MIN_COSINE
    np.testing.assert_allclose(got, normalized(want), atol=1e-5)

    raw = encoder.encode_texts(PARITY_TEXTS, batch_size=batch_size, normalize=False)
    record(f"texts raw, batch {batch_size}", raw, want)
    np.testing.assert_allclose(raw, want, atol=1e-4 * max(1.0, float(np.abs(want).max())), rtol=1e-4)
    assert max_offdiagonal_cosine(want) < 0.99


class Unpadded:
    """A real text session that, like OpenVINO's runtime, says texts share a batch only with texts of their own
    length (``pads_texts = False``); it records every batch it is given."""

    pads_texts = False

    def __init__(self, session: object) -> None:
        self.session, self.feeds = session, []

    def run(self, names: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.feeds.append(feed)
        return self.session.run(names, feed)  # type: ignore[attr-defined]


@pytest.mark.parametrize("batch_size", [1, 3, 32])
def test_texts_batched_by_length_on_a_runtime_that_never_pads(tiny_bundle: Path, ref: Reference,
                                                             monkeypatch: pytest.MonkeyPatch, batch_size: int) -> None:
    from altclip_onnx.runtime import encoder as encoder_module

    made: list[Unpadded] = []
    make_session = encoder_module.make_session

    def unpadded_session(*args, **kwargs):  # type: ignore[no-untyped-def]
        made.append(Unpadded(make_session(*args, **kwargs)))
        return made[-1]

    monkeypatch.setattr(encoder_module, "make_session", unpadded_session)
    encoder = Encoder(tiny_bundle, provider="cpu", precision="fp32", self_check=False)
    got = encoder.encode_texts(PARITY_TEXTS, batch_size=batch_size)
    assert cosines(got, ref["parity_text_features"]).min() >= MIN_COSINE
    (session,) = made
    lengths = encoder.token_counts(PARITY_TEXTS)
    assert all(feed["attention_mask"].all() and len(feed["input_ids"]) <= batch_size for feed in session.feeds)
    # Every text once, in as few batches of one length each as batch_size allows.
    assert sum(len(feed["input_ids"]) for feed in session.feeds) == len(PARITY_TEXTS)
    assert len(session.feeds) == sum(-(-int(np.sum(lengths == n)) // batch_size) for n in np.unique(lengths))
    # A text alone gets the vector it got among the others.
    for i in (0, len(PARITY_TEXTS) - 1):
        np.testing.assert_allclose(encoder.encode_texts(PARITY_TEXTS[i]), got[i : i + 1], atol=1e-6)


def test_odd_texts_and_single_string_match_pytorch(encoder: Encoder, ref: Reference) -> None:
    got = encoder.encode_texts(ODD_PARITY_TEXTS, batch_size=4)
    record("odd/empty/truncated texts", got, normalized(ref["odd_text_features"]))
    assert cosines(got, ref["odd_text_features"]).min() >= MIN_COSINE
    one = encoder.encode_texts(NEW_SENTENCES["ko"])  # a single string is a batch of one
    assert one.shape == (1, encoder.embedding_dim)
    assert cosines(one, ref["ko_text_features"])[0] >= MIN_COSINE


def test_an_off_by_one_token_id_would_be_caught(encoder: Encoder, ref: Reference) -> None:
    """The tiny model is sensitive enough that a fairseq-offset bug cannot pass the parity checks."""
    assert cosines(encoder.encode_texts(PARITY_TEXTS[:6]), ref["off_by_one_text_features"]).min() < 0.99


# --- zero-shot classification ---------------------------------------------------------------------


@pytest.mark.parametrize("case", list(CLASSIFY_CASES))
def test_classify_equals_hand_computation(encoder: Encoder, ref: Reference, fixture_photos: list[Path],
                                          case: str) -> None:
    labels, templates = CLASSIFY_CASES[case]
    assert encoder.logit_scale == pytest.approx(ref.data["logit_scale"], rel=1e-6)
    got = encoder.classify(fixture_photos, labels, templates)
    want = ref[f"classify_{case}"]  # PyTorch: normalize, average templates, renormalize, scale, softmax
    assert got.shape == (len(fixture_photos), len(labels)) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-5)
    MEASURED[f"classify {case}"] = (
        f"max |diff| {float(np.abs(got - want).max()):.3g}, probabilities {got.min():.3g}..{got.max():.3g}"
    )
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)
    # Real probabilities, not the seed's 0 % / 100 % (softmax of raw, unscaled dot products).
    assert got.min() > 1e-4 and got.max() < 0.9999
    assert len(np.unique(np.round(got, 4))) > len(labels)


def test_default_templates_are_used_when_none(encoder: Encoder, fixture_photos: list[Path]) -> None:
    labels = ["cat", "rocket"]
    default = encoder.classify(fixture_photos[:2], labels)
    np.testing.assert_array_equal(default, encoder.classify(fixture_photos[:2], labels, DEFAULT_TEMPLATES))
    assert all("{}" in t for t in DEFAULT_TEMPLATES) and len(DEFAULT_TEMPLATES) > 1


def test_bad_labels_and_templates_are_refused(encoder: Encoder, fixture_photos: list[Path]) -> None:
    with pytest.raises(InputError, match=r"'a photo of a cat' has no \{\}"):
        encoder.classify(fixture_photos[:1], ["cat", "dog"], ["a photo of a {}", "a photo of a cat"])
    with pytest.raises(InputError, match="no labels"):
        encoder.classify(fixture_photos[:1], [])
    with pytest.raises(InputError, match="no templates"):  # an empty list is not "use the defaults"
        encoder.classify(fixture_photos[:1], ["cat", "dog"], [])
    # A repeated label would be merged into one at 100%, or split its probability: refused.
    with pytest.raises(InputError, match="label 'cat' is given twice"):
        encoder.classify(fixture_photos[:1], ["cat", "dog", " cat "])
    with pytest.raises(InputError, match="a label is empty"):
        encoder.classify(fixture_photos[:1], ["cat", " "])


def test_one_template_string_is_one_template(encoder: Encoder, fixture_photos: list[Path]) -> None:
    labels = ["cat", "rocket"]
    np.testing.assert_array_equal(
        encoder.classify(fixture_photos[:2], labels, "a photo of a {}."),
        encoder.classify(fixture_photos[:2], labels, ["a photo of a {}."]),
    )


# --- precision choice and bundle refusal ----------------------------------------------------------


def manifest_with(manifest: Manifest, precisions: tuple[str, ...]) -> Manifest:
    towers = {}
    for tower in (VISUAL, TEXTUAL):
        fp32 = manifest.towers[tower]["fp32"]
        towers[tower] = {
            p: dataclasses.replace(fp32, precision=p, path=f"{tower}/model{'' if p == 'fp32' else '.' + p}.onnx")
            for p in precisions
        }
    return dataclasses.replace(manifest, towers=towers)


@pytest.mark.parametrize(
    ("precisions", "provider", "expected"),
    [
        (("fp32", "int8", "fp16"), "CPUExecutionProvider", "int8"),
        (("fp32", "int8", "fp16"), "CUDAExecutionProvider", "fp16"),
        (("fp32", "int8", "fp16"), "TensorrtExecutionProvider", "fp16"),
        (("fp32", "int8", "fp16"), "CoreMLExecutionProvider", "fp32"),
        (("fp32", "fp16"), "CPUExecutionProvider", "fp32"),
        (("fp32", "int8"), "CUDAExecutionProvider", "fp32"),
        (("fp32",), "CPUExecutionProvider", "fp32"),
        (("fp32",), "CUDAExecutionProvider", "fp32"),
    ],
)
def test_auto_precision(tiny_bundle: Path, precisions, provider: str, expected: str) -> None:  # type: ignore[no-untyped-def]
    manifest = manifest_with(read_manifest(tiny_bundle), precisions)
    for tower in (VISUAL, TEXTUAL):
        assert pick_precision(manifest, tower, "auto", provider) == expected


def test_explicit_precision(tiny_bundle: Path, tmp_path: Path) -> None:
    manifest = manifest_with(read_manifest(tiny_bundle), ("fp32", "int8"))
    assert pick_precision(manifest, VISUAL, "int8", "CUDAExecutionProvider") == "int8"
    assert pick_precision(manifest, TEXTUAL, "fp32", "CPUExecutionProvider") == "fp32"
    with pytest.raises(InputError, match=r"textual tower has no fp16 variant \(it has fp32, int8\)"):
        pick_precision(manifest, TEXTUAL, "fp16", "CUDAExecutionProvider")
    with pytest.raises(InputError, match=r"unknown precision 'bf16'"):
        pick_precision(manifest, TEXTUAL, "bf16", "CPUExecutionProvider")
    assert Encoder(tiny_bundle, precision="fp32").precisions == {VISUAL: "fp32", TEXTUAL: "fp32"}
    assert Encoder(tiny_bundle, provider="cpu").precisions == {VISUAL: "int8", TEXTUAL: "int8"}
    # A bundle without fp16: asking for it is refused when the Encoder is made, not at first use.
    partial = tmp_path / "no-fp16"
    shutil.copytree(tiny_bundle, partial)
    data = json.loads((partial / "manifest.json").read_text())
    for tower in (VISUAL, TEXTUAL):
        del data["towers"][tower]["variants"]["fp16"]
    (partial / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(InputError, match=r"has no fp16 variant \(it has fp32, int8\)"):
        Encoder(partial, precision="fp16")


def test_auto_precision_on_cpu_stays_close_to_pytorch(tiny_bundle: Path, ref: Reference,
                                                      fixture_photos: list[Path]) -> None:
    """What a CPU user gets by default (int8) passes the int8 gate against PyTorch."""
    auto = Encoder(tiny_bundle, provider="cpu")
    for tower, got, want in (
        (VISUAL, auto.encode_images(fixture_photos), ref["photo_features"]),
        (TEXTUAL, auto.encode_texts(PARITY_TEXTS), ref["parity_text_features"]),
    ):
        assert auto.precisions[tower] == "int8"
        cos = cosines(got, want)
        record(f"{tower} auto (int8)", got, normalized(want))
        assert cos.min() >= INT8_MIN_COSINE, tower
        assert cos.mean() >= INT8_MEAN_COSINE, tower


def test_encoder_refuses_unusable_bundles(tiny_bundle: Path, tmp_path: Path) -> None:
    future = tmp_path / "future"
    future.mkdir()
    data = json.loads((tiny_bundle / "manifest.json").read_text())
    data["format_version"] = "2.0"
    (future / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match="format 2.0 is not supported"):
        Encoder(future)
    with pytest.raises(BundleError, match="no such bundle folder"):
        Encoder(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match=r"manifest\.json: missing"):
        Encoder(tmp_path / "empty")
    with pytest.raises(InputError, match="max_length must be 3..512"):
        Encoder(tiny_bundle, max_length=513)
    manifest = read_manifest(tiny_bundle)
    no_text = dataclasses.replace(manifest, towers={VISUAL: manifest.towers[VISUAL], TEXTUAL: {}})
    with pytest.raises(BundleError, match="lists no textual model"):
        pick_precision(no_text, TEXTUAL, "auto", "CPUExecutionProvider")


# --- every kind of image input --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["chelsea.png", "astronaut.jpg", "camera.jpg"])
def test_every_input_kind_gives_the_same_embedding(encoder: Encoder, fixture_photos: list[Path], name: str) -> None:
    path = next(p for p in fixture_photos if p.name == name)
    data = path.read_bytes()
    with Image.open(path) as opened:
        opened.load()
        pil = opened.copy()
    array = np.asarray(pil)
    assert array.dtype == np.uint8 and array.ndim == (2 if name == "camera.jpg" else 3)
    inputs = [str(path), path, data, pil, array, np.asarray(pil.convert("RGB")), Image.open(io.BytesIO(data))]
    batch = encoder.encode_images(inputs)
    for row in batch[1:]:
        np.testing.assert_allclose(row, batch[0], atol=1e-6)
    for item in inputs[:5]:  # one item alone (not in a list) is a batch of one
        single = encoder.encode_images(item)
        assert single.shape == (1, encoder.embedding_dim)
        np.testing.assert_allclose(single[0], batch[0], atol=1e-6)


def test_bytes_like_inputs_are_one_image(encoder: Encoder, fixture_photos: list[Path]) -> None:
    data = fixture_photos[1].read_bytes()
    want = encoder.encode_images(data)
    for item in (bytearray(data), memoryview(data)):
        got = encoder.encode_images(item)
        assert got.shape == (1, encoder.embedding_dim)
        np.testing.assert_allclose(got, want, atol=1e-6)


def test_a_wrong_array_is_reported_whole(encoder: Encoder) -> None:
    with pytest.raises(InputError, match=r"got float32 \(40, 50, 3\)"):
        encoder.encode_images(np.zeros((40, 50, 3), np.float32))
    batch = np.stack([np.full((40, 50, 3), v, np.uint8) for v in (0, 255)])  # NHWC: a batch of two
    assert encoder.encode_images(batch).shape == (2, encoder.embedding_dim)
