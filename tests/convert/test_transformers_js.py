"""transformers.js itself (in Node) loads the converted folder with its own classes and gives our numbers.

The client is the real one: ``@huggingface/transformers`` from npm, its AutoTokenizer, AutoProcessor,
CLIPTextModelWithProjection and CLIPVisionModelWithProjection, run by tests/convert/transformers_js_client.mjs.
Compared with: our Encoder, and the PyTorch/transformers reference stored in the fixture.

Known, documented differences (kept as tests so a change in transformers.js shows):
- U+200D (zero-width joiner, inside family emoji) becomes a space in its tokenizer: other ids.
- Texts longer than max_length: it cuts the ids after adding the special tokens, so ``</s>`` is lost;
  transformers and we truncate the text and keep ``</s>``.
- Its image processor resizes differently from transformers' PIL path; fed our pixel values, its vision
  model gives our vectors exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from altclip_onnx import Encoder

from ..cases import LONG_TEXT, NEW_SENTENCES, ODD_TEXTS, PARITY_TEXTS, TOKEN_TEXTS
from ..reference import Reference

ZWJ_TEXT = ODD_TEXTS[0]  # "Emoji 😀🐱🚀 and a family 👨‍👩‍👧 with a flag 🇯🇵"
TEXTS = [*TOKEN_TEXTS, LONG_TEXT]
DOCUMENTED = {ZWJ_TEXT, LONG_TEXT}
FP32_MIN_COSINE = 0.99999
GATES = {"q8": ("int8", 0.98, 0.995), "fp16": ("fp16", 0.9995, None)}  # dtype: (precision, min, mean cosine)


def cosines(a: Any, b: Any) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def pixels_file(tiny_bundle: Path, fixture_photos: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Our pixel values of the test photos, as raw float32 for the Node client."""
    path = tmp_path_factory.mktemp("pixels") / "pixels.f32"
    Encoder(tiny_bundle, precision="fp32").preprocess(fixture_photos).astype(np.float32).tofile(path)
    return path


@pytest.fixture(scope="module")
def answers(transformers_js: Callable[[dict[str, Any]], dict[str, Any]], converted: Callable[..., Path],
            pixels_file: Path, fixture_photos: list[Path]) -> dict[str, dict[str, Any]]:
    """transformers.js' answers for each dtype: token ids, text embeddings, image embeddings."""
    folder = converted("transformers.js")
    dims = [len(fixture_photos), 3, 224, 224]
    out = {}
    for dtype in ("fp32", "q8", "fp16"):
        request: dict[str, Any] = {"model": str(folder), "dtype": dtype, "texts": TEXTS,
                                   "pixels": {"path": str(pixels_file), "dims": dims}}
        if dtype == "fp32":
            request["images"] = [str(p) for p in fixture_photos]
            request["pixels_out"] = str(pixels_file.with_name("own-pixels.f32"))
        out[dtype] = transformers_js(request)
    return out


def test_token_ids_equal_ours_and_transformers(answers: dict[str, dict[str, Any]], tiny_bundle: Path,
                                               ref: Reference) -> None:
    """36 sentences in the 18 languages plus odd texts (emoji, full-width, tabs, newlines, empty ones)."""
    encoder = Encoder(tiny_bundle, precision="fp32")
    theirs = answers["fp32"]["input_ids"]
    compared = 0
    for text, ids in zip(TEXTS, theirs):
        if text in DOCUMENTED:
            continue
        ours = encoder.tokenize([text])["input_ids"][0].tolist()
        assert ids == ours, text
        assert ids == ref.transformers_ids(text), text
        compared += 1
    assert compared >= 50 and {t for t in NEW_SENTENCES.values()} <= set(TEXTS)


def test_zero_width_joiner_becomes_a_space_in_transformers_js(answers: dict[str, dict[str, Any]], tiny_bundle: Path,
                                                              ref: Reference) -> None:
    """Documented difference: transformers.js' tokenizer turns U+200D into a space; sentencepiece,
    transformers and we keep the family emoji one word. We follow transformers (not copied)."""
    encoder = Encoder(tiny_bundle, precision="fp32")
    ours = encoder.tokenize([ZWJ_TEXT])["input_ids"][0].tolist()
    theirs = answers["fp32"]["input_ids"][TEXTS.index(ZWJ_TEXT)]
    assert ours == ref.transformers_ids(ZWJ_TEXT) == ref.sentencepiece_ids(ZWJ_TEXT)
    assert theirs != ours
    assert theirs == encoder.tokenize([ZWJ_TEXT.replace("\u200d", " ")])["input_ids"][0].tolist()


def test_long_text_loses_its_end_token_in_transformers_js(answers: dict[str, dict[str, Any]], tiny_bundle: Path,
                                                          ref: Reference) -> None:
    """Documented difference: with truncation, transformers.js cuts after adding the special tokens."""
    ours = Encoder(tiny_bundle, precision="fp32").tokenize([LONG_TEXT])["input_ids"][0].tolist()
    theirs = answers["fp32"]["batch_input_ids"][TEXTS.index(LONG_TEXT)]
    assert ours == ref.data["long_text_truncated_77"] and ours[-1] == 2 and len(ours) == 77
    assert len(theirs) == 77 and theirs[:76] == ours[:76] and theirs[-1] != 2
    assert len(answers["fp32"]["input_ids"][TEXTS.index(LONG_TEXT)]) > 77  # untruncated when asked alone


def test_text_embeddings_equal_ours_at_fp32(answers: dict[str, dict[str, Any]], tiny_bundle: Path,
                                            ref: Reference) -> None:
    encoder = Encoder(tiny_bundle, precision="fp32")
    theirs = np.array(answers["fp32"]["text_embeds"])
    ours = encoder.encode_texts(TEXTS, normalize=False)
    kept = [i for i, t in enumerate(TEXTS) if t not in DOCUMENTED]
    assert cosines(theirs[kept], ours[kept]).min() >= FP32_MIN_COSINE
    # And against PyTorch itself, on the 36 sentences in 18 languages.
    rows = [TEXTS.index(t) for t in PARITY_TEXTS]
    assert cosines(theirs[rows], ref["parity_text_features"]).min() >= FP32_MIN_COSINE


def test_image_embeddings_equal_ours_on_our_pixels(answers: dict[str, dict[str, Any]], tiny_bundle: Path,
                                                   fixture_photos: list[Path], ref: Reference) -> None:
    encoder = Encoder(tiny_bundle, precision="fp32")
    theirs = np.array(answers["fp32"]["image_embeds"])
    ours = encoder.encode_images(fixture_photos, normalize=False)
    assert theirs.shape == ours.shape
    assert cosines(theirs, ours).min() >= FP32_MIN_COSINE
    assert cosines(theirs, ref["photo_features"]).min() >= FP32_MIN_COSINE


def test_its_own_image_processor_is_close_but_not_equal(answers: dict[str, dict[str, Any]], tiny_bundle: Path,
                                                        fixture_photos: list[Path], pixels_file: Path) -> None:
    """Its CLIPImageProcessor reads preprocessor_config.json (same sizes, mean, std) but resizes its own way."""
    encoder = Encoder(tiny_bundle, precision="fp32")
    own = np.fromfile(pixels_file.with_name("own-pixels.f32"), dtype=np.float32)
    own = own.reshape(answers["fp32"]["own_pixel_dims"])
    ours = encoder.preprocess(fixture_photos)
    assert own.shape == ours.shape
    gap = float(np.abs(own - ours).max())
    assert 0 < gap < 3.0  # differs, and only by resampling (not by layout, mean or std)
    assert float(np.abs(own - ours).mean()) < 0.1  # measured: 0.03 to 0.08 per photo
    cos = cosines(answers["fp32"]["own_image_embeds"], encoder.encode_pixels(ours, normalize=False))
    assert cos.min() >= 0.999, cos


@pytest.mark.parametrize("dtype", ["q8", "fp16"])
def test_quantized_and_fp16_graphs_give_the_bundles_numbers(answers: dict[str, dict[str, Any]], dtype: str,
                                                            tiny_bundle: Path, ref: Reference) -> None:
    """dtype q8 loads text_model_quantized.onnx (our int8), fp16 text_model_fp16.onnx: on the batch
    transformers.js built, they equal the bundle's graphs in onnxruntime, and stay within the variant's
    gate against PyTorch."""
    from altclip_onnx.runtime.providers import make_session

    precision, min_gate, mean_gate = GATES[dtype]
    got = answers[dtype]
    batch = np.array(got["batch_input_ids"], dtype=np.int64)
    attention = np.array(got["batch_attention_mask"], dtype=np.int64)
    session = make_session(tiny_bundle / "textual" / f"model.{precision}.onnx", provider="cpu")
    want = session.run(["text_embeds"], {"input_ids": batch, "attention_mask": attention})[0]
    assert cosines(got["text_embeds"], want).min() >= FP32_MIN_COSINE
    rows = [TEXTS.index(t) for t in PARITY_TEXTS]
    cos = cosines(np.array(got["text_embeds"])[rows], ref["parity_text_features"])
    assert cos.min() >= min_gate and (mean_gate is None or cos.mean() >= mean_gate)
    image = cosines(got["image_embeds"], ref["photo_features"])
    assert image.min() >= min_gate and (mean_gate is None or image.mean() >= mean_gate)


def test_external_weights_load_under_transformers_js_names(transformers_js: Callable[[dict[str, Any]], dict[str, Any]],
                                                           converted: Callable[..., Path], external_bundle: Path,
                                                           tiny_bundle: Path, fixture_photos: list[Path],
                                                           pixels_file: Path) -> None:
    """Full-size towers keep their weights in a .data file; transformers.js finds them as <graph>.onnx_data."""
    folder = converted("transformers.js", ("fp32",), bundle=external_bundle)
    assert (folder / "onnx" / "text_model.onnx_data").is_file()
    got = transformers_js({"model": str(folder), "dtype": "fp32", "texts": PARITY_TEXTS[:4],
                           "pixels": {"path": str(pixels_file), "dims": [len(fixture_photos), 3, 224, 224]}})
    encoder = Encoder(tiny_bundle, precision="fp32")
    assert cosines(got["text_embeds"], encoder.encode_texts(PARITY_TEXTS[:4], normalize=False)).min() >= FP32_MIN_COSINE
    assert cosines(got["image_embeds"], encoder.encode_images(fixture_photos, normalize=False)).min() >= FP32_MIN_COSINE

