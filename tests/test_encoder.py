"""The Encoder against the PyTorch/transformers reference: real numbers, no mocks of the model path.

Tokenization is compared with sentencepiece itself (XLM-R's fairseq offset applied by hand) and with
transformers' XLMRobertaTokenizer; embeddings and zero-shot probabilities with ``AltCLIPModel``
loaded afresh from the tiny checkpoint the bundle was exported from.
"""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from altclip_onnx import DEFAULT_TEMPLATES, Encoder
from altclip_onnx.bundle import PRECISIONS, TEXTUAL, VISUAL, Manifest, read_manifest
from altclip_onnx.errors import BundleError, InputError
from altclip_onnx.export import sources
from altclip_onnx.export.verify import GATES, SENTENCES
from altclip_onnx.runtime.encoder import pick_precision

from .conftest import corpus

skdata = pytest.importorskip("skimage.data")

MIN_COSINE = 0.99999
# Parity numbers seen in this run, printed at the end of the module (pytest -s shows them).
MEASURED: dict[str, str] = {}

# One natural sentence per AltCLIP-m18 language, none of them in the tokenizer's training corpus.
NEW_SENTENCES = {
    "en": "Two children are flying a red kite over a green hill.",
    "zh": "厨房的桌子上放着一碗热腾腾的面条。",
    "ja": "駅の前で友達を待っています。",
    "th": "ฝนตกหนักตลอดทั้งคืนในกรุงเทพ",
    "ko": "아이들이 운동장에서 축구를 하고 있어요.",
    "hi": "पहाड़ों पर बर्फ गिर रही है और नदी जम गई है।",
    "uk": "Діти будують сніговика біля школи.",
    "ar": "يقرأ الرجل الجريدة في المقهى صباحا.",
    "tr": "Çocuklar parkta uçurtma uçuruyor.",
    "vi": "Những đứa trẻ đang thả diều trên đồi xanh.",
    "pl": "Dzieci puszczają latawca na zielonym wzgórzu.",
    "nl": "De trein naar Amsterdam vertrekt om negen uur.",
    "pt": "As crianças brincam com uma pipa vermelha no morro.",
    "it": "La pizza appena sfornata profuma di basilico.",
    "es": "Los niños vuelan una cometa roja sobre la colina.",
    "de": "Die Kinder lassen einen roten Drachen über dem Hügel steigen.",
    "fr": "Les enfants font voler un cerf-volant rouge sur la colline.",
    "ru": "Дети запускают красного воздушного змея над холмом.",
}
assert set(NEW_SENTENCES) == set(SENTENCES)
assert not set(NEW_SENTENCES.values()) & set(corpus())

# Emoji, full-width and half-width forms, tabs, newlines, empty and whitespace-only strings.
ODD_TEXTS = [
    "Emoji 😀🐱🚀 and a family 👨‍👩‍👧 with a flag 🇯🇵",
    "ＡＢＣ１２３ full-width ｆｏｒｍｓ！",
    "ｶﾀｶﾅ half-width katakana",
    "Ⅻ ① ﬁ ㎏ compatibility characters",
    "combining e\u0301 and precomposed é",
    "tab\tseparated\tvalues",
    "line one\nline two\r\nline three\n",
    "trailing newline\n",
    "\ttab first",
    "a \t\n b",
    "multiple     spaces   inside",
    "  leading and trailing  ",
    "\u3000ideographic\u3000space\u3000",
    "no\u00a0break and zero\u200bwidth",
    "",
    " ",
    "   ",
    "\t",
    "\n",
    "\r\n",
    " \t\n\u3000 ",
]
TOKEN_TEXTS = list(NEW_SENTENCES.values()) + list(SENTENCES.values()) + ODD_TEXTS
PARITY_TEXTS = list(NEW_SENTENCES.values()) + list(SENTENCES.values())  # 36: batches 1, 3 and 32 all split it
LONG_TEXT = " ".join(NEW_SENTENCES.values()) + " " + " ".join(SENTENCES.values())

PHOTOS = {  # file name -> (skimage.data function, format)
    "astronaut.jpg": ("astronaut", "JPEG"),
    "chelsea.png": ("chelsea", "PNG"),
    "coffee.jpg": ("coffee", "JPEG"),
    "rocket.png": ("rocket", "PNG"),
    "camera.jpg": ("camera", "JPEG"),  # grayscale: a mode "L" file
}


# --- helpers and fixtures -------------------------------------------------------------------------


def fairseq_ids(sp, text: str) -> list[int]:  # type: ignore[no-untyped-def]
    """XLM-R's ids from sentencepiece itself: <s>=0 ... </s>=2, pieces shifted by one, sp's unk (0) -> 3."""
    return [0] + [3 if i == sp.unk_id() else i + 1 for i in sp.encode(text)] + [2]


def unpadded(encoder: Encoder, text: str) -> list[int]:
    batch = encoder.tokenize([text])
    assert batch["attention_mask"].all()
    return batch["input_ids"][0].tolist()


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.sum(a.astype(np.float64) * b, axis=1)


def max_offdiagonal_cosine(vectors: np.ndarray) -> float:
    v = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    sims = v @ v.T
    np.fill_diagonal(sims, -1.0)
    return float(sims.max())


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


@pytest.fixture(scope="module")
def model(transformers_checkpoint: Path):  # type: ignore[no-untyped-def]
    """A model no exporter has touched (the TorchScript exporter can change a traced model's outputs)."""
    return sources.load_model(sources.resolve_source(str(transformers_checkpoint))).model


@pytest.fixture(scope="module")
def hf_tokenizer(transformers_checkpoint: Path):  # type: ignore[no-untyped-def]
    from transformers import XLMRobertaTokenizer

    return XLMRobertaTokenizer.from_pretrained(transformers_checkpoint)


@pytest.fixture(scope="module")
def sp(spm_model: Path):  # type: ignore[no-untyped-def]
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(spm_model))


@pytest.fixture(scope="module")
def converted_tokenizer(spm_model: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """transformers' slow->fast conversion from a folder holding only sentencepiece.bpe.model."""
    from transformers import XLMRobertaTokenizer

    folder = tmp_path_factory.mktemp("spm-only")
    shutil.copy(spm_model, folder / "sentencepiece.bpe.model")
    return XLMRobertaTokenizer.from_pretrained(folder)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for name, (function, fmt) in PHOTOS.items():
        path = folder / name
        Image.fromarray(getattr(skdata, function)()).save(path, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
        paths.append(path)
    assert Image.open(folder / "camera.jpg").mode == "L"
    return paths


def reference_pixels(bundle: Path, paths: list[Path]) -> torch.Tensor:
    """transformers' CLIPImageProcessorPil, configured from the bundle's preprocessor_config.json."""
    from transformers import CLIPImageProcessorPil

    config = json.loads((bundle / "visual/preprocessor_config.json").read_text())
    config.pop("image_processor_type")
    processor = CLIPImageProcessorPil(**config)
    assert processor.backend == "pil"
    images = [Image.open(p) for p in paths]
    return processor(images=images, return_tensors="pt")["pixel_values"]


def reference_image_features(model, bundle: Path, paths: list[Path]) -> np.ndarray:  # type: ignore[no-untyped-def]
    with torch.no_grad():
        return model.get_image_features(pixel_values=reference_pixels(bundle, paths)).pooler_output.numpy()


def reference_text_features(model, tokenizer, texts: list[str], max_length: int = 77) -> np.ndarray:  # type: ignore[no-untyped-def]
    batch = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        return model.get_text_features(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).pooler_output.numpy()


def normalized(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


# --- 1. tokenization ------------------------------------------------------------------------------


def test_tokenizer_equals_sentencepiece_with_fairseq_offset(tiny_bundle: Path, sp) -> None:  # type: ignore[no-untyped-def]
    long = Encoder(tiny_bundle, max_length=512)  # no truncation in play
    mismatches = [(t, unpadded(long, t), fairseq_ids(sp, t)) for t in TOKEN_TEXTS if unpadded(long, t) != fairseq_ids(sp, t)]
    assert mismatches == []
    # Unseen scripts really exercise <unk> (id 3), and the shift is real (no id collides with specials).
    ids = [i for t in TOKEN_TEXTS for i in unpadded(long, t)[1:-1]]
    assert 3 in ids and 1 not in ids and 0 not in ids and 2 not in ids
    for text in ("", " ", "   ", "\t", "\n", "\r\n", " \t\n\u3000 "):
        assert unpadded(long, text) == [0, 2], repr(text)
    # Whitespace is a separator only: tabs, newlines and runs of spaces tokenize like one space.
    assert unpadded(long, "tab\tseparated\tvalues") == unpadded(long, "tab separated values")
    assert unpadded(long, "a \t\n b") == unpadded(long, "a b")
    assert unpadded(long, "trailing newline\n") == unpadded(long, "trailing newline")
    # nmt_nfkc: full-width forms are their ASCII letters.
    assert unpadded(long, "ＡＢＣ１２３") == unpadded(long, "ABC123")


def test_tokenizer_equals_transformers(tiny_bundle: Path, converted_tokenizer, hf_tokenizer) -> None:  # type: ignore[no-untyped-def]
    long = Encoder(tiny_bundle, max_length=512)
    for text in TOKEN_TEXTS:
        ours = unpadded(long, text)
        assert ours == converted_tokenizer(text)["input_ids"], repr(text)
        assert ours == hf_tokenizer(text)["input_ids"], repr(text)


def test_where_transformers_and_sentencepiece_differ_we_follow_transformers(  # type: ignore[no-untyped-def]
    tiny_bundle: Path, sp, converted_tokenizer
) -> None:
    """Two inputs on which transformers 5 (what AltCLIPModel users run) and raw sentencepiece differ.

    U+0085 (NEXT LINE) is whitespace to the tokenizers pipeline (WhitespaceSplit) but an ordinary,
    unknown character to sentencepiece; literal special-token strings in the text become the special
    ids in transformers, but plain characters in sentencepiece. The bundle follows transformers.
    """
    long = Encoder(tiny_bundle, max_length=512)
    for text in ("a\x85b", "<mask> and <s> and </s>", "a <pad> b"):
        assert unpadded(long, text) == converted_tokenizer(text)["input_ids"], repr(text)
        assert unpadded(long, text) != fairseq_ids(sp, text), repr(text)
    assert unpadded(long, "a\x85b") == unpadded(long, "a b")
    assert 1 in unpadded(long, "a <pad> b")  # a pad id with mask 1: what transformers does too


def test_old_style_checkpoint_tokenizer_json_matches_transformers(  # type: ignore[no-untyped-def]
    transformers_checkpoint: Path, converted_tokenizer, tmp_path: Path
) -> None:
    """A checkpoint whose tokenizer.json was written by transformers 4 (as Hub repos of that time were:
    normalizer Precompiled + Replace(' {2,}', ' '), pre_tokenizer Metaspace only) must still tokenize
    like transformers and sentencepiece: transformers 5 rebuilds that pipeline on load; the tokenizers
    runtime takes the file as it is, which adds a lone '▁' piece for whitespace-only text and for
    trailing whitespace ("x\\n" from a file's lines)."""
    from tokenizers import Tokenizer

    old = tmp_path / "old-style"
    shutil.copytree(transformers_checkpoint, old)
    data = json.loads((old / "tokenizer.json").read_text())
    data["normalizer"] = {
        "type": "Sequence",
        "normalizers": [data["normalizer"], {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "}],
    }
    data["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "add_prefix_space": True}
    data["decoder"] = {"type": "Metaspace", "replacement": "▁", "add_prefix_space": True}
    (old / "tokenizer.json").write_text(json.dumps(data))

    bundle_tokenizer = Tokenizer.from_str(sources.load_model(sources.resolve_source(str(old))).tokenizer_json)
    bundle_tokenizer.no_padding()
    for text in ("   ", "\n", "trailing newline\n", "tabs\tand\nnewlines", "a  b"):
        if bundle_tokenizer.encode(text).ids != converted_tokenizer(text)["input_ids"]:
            pytest.xfail(
                f"export copies a checkpoint's transformers-4 tokenizer.json verbatim: {text!r} -> "
                f"{bundle_tokenizer.encode(text).ids}, transformers 5 -> {converted_tokenizer(text)['input_ids']}"
            )


def test_truncation_keeps_end_of_sequence(tiny_bundle: Path, encoder: Encoder, sp, hf_tokenizer) -> None:  # type: ignore[no-untyped-def]
    full = fairseq_ids(sp, LONG_TEXT)
    assert len(full) > 200
    ids = unpadded(encoder, LONG_TEXT)  # default: the manifest's 77
    assert encoder.max_length == 77
    assert ids == full[:76] + [2]
    assert ids == hf_tokenizer(LONG_TEXT, truncation=True, max_length=77)["input_ids"]

    short = Encoder(tiny_bundle, max_length=16)
    assert unpadded(short, LONG_TEXT) == full[:15] + [2]
    # Every length around the limit, word by word: untouched up to 16 ids, cut to 15 + </s> beyond.
    words = LONG_TEXT.split(" ")
    lengths = set()
    for n in range(1, 16):
        text = " ".join(words[:n])
        want = fairseq_ids(sp, text)
        lengths.add(len(want))
        assert unpadded(short, text) == (want if len(want) <= 16 else want[:15] + [2]), text
    assert min(lengths) < 16 < max(lengths)


def test_batch_padding_uses_pad_id_and_zero_mask(encoder: Encoder, sp) -> None:  # type: ignore[no-untyped-def]
    texts = ["a", NEW_SENTENCES["de"], "", NEW_SENTENCES["th"], LONG_TEXT]
    batch = encoder.tokenize(texts)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.dtype == np.int64 and mask.dtype == np.int64
    assert ids.shape == mask.shape == (5, 77)
    for row, text in enumerate(texts):
        want = fairseq_ids(sp, text)[:76]
        want = want if want[-1] == 2 else want + [2]
        n = len(want)
        assert ids[row, :n].tolist() == want
        assert mask[row, :n].tolist() == [1] * n
        assert ids[row, n:].tolist() == [1] * (77 - n)
        assert mask[row, n:].tolist() == [0] * (77 - n)
    # Padded only to the longest text of the batch.
    assert encoder.tokenize(["a", "b c"])["input_ids"].shape[1] == len(fairseq_ids(sp, "b c"))


# --- 2. end-to-end parity -------------------------------------------------------------------------


def test_image_files_match_transformers_and_pytorch(  # type: ignore[no-untyped-def]
    encoder: Encoder, model, tiny_bundle: Path, photos: list[Path]
) -> None:
    want = reference_image_features(model, tiny_bundle, photos)
    got = encoder.encode_images(photos)
    assert got.shape == (len(photos), encoder.embedding_dim) and got.dtype == np.float32
    record("images normalized", got, normalized(want))
    assert cosines(got, want).min() >= MIN_COSINE
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(got, normalized(want), atol=1e-5)

    raw = encoder.encode_images(photos, normalize=False, batch_size=2)
    record("images raw (normalize=False)", raw, want)
    np.testing.assert_allclose(raw, want, atol=1e-4 * max(1.0, float(np.abs(want).max())), rtol=1e-4)
    # The pixels themselves equal transformers' (the photos differ, so the towers see different inputs).
    pixels = encoder.preprocess(photos)
    np.testing.assert_allclose(pixels, reference_pixels(tiny_bundle, photos).numpy(), atol=1e-5)
    # Different photos embed clearly apart, or the parity above would prove little.
    assert max_offdiagonal_cosine(want) < 0.99


@pytest.mark.parametrize("batch_size", [1, 3, 32])
def test_texts_match_transformers_and_pytorch(  # type: ignore[no-untyped-def]
    encoder: Encoder, model, hf_tokenizer, batch_size: int
) -> None:
    want = reference_text_features(model, hf_tokenizer, PARITY_TEXTS)
    got = encoder.encode_texts(PARITY_TEXTS, batch_size=batch_size)
    assert got.shape == (len(PARITY_TEXTS), encoder.embedding_dim) and got.dtype == np.float32
    record(f"texts normalized, batch {batch_size}", got, normalized(want))
    assert cosines(got, want).min() >= MIN_COSINE
    np.testing.assert_allclose(got, normalized(want), atol=1e-5)

    raw = encoder.encode_texts(PARITY_TEXTS, batch_size=batch_size, normalize=False)
    record(f"texts raw, batch {batch_size}", raw, want)
    np.testing.assert_allclose(raw, want, atol=1e-4 * max(1.0, float(np.abs(want).max())), rtol=1e-4)
    assert max_offdiagonal_cosine(want) < 0.99


def test_odd_texts_and_single_string_match_pytorch(encoder: Encoder, model, hf_tokenizer) -> None:  # type: ignore[no-untyped-def]
    texts = ODD_TEXTS[:6] + ["", "   ", LONG_TEXT]
    want = reference_text_features(model, hf_tokenizer, texts)
    got = encoder.encode_texts(texts, batch_size=4)
    record("odd/empty/truncated texts", got, normalized(want))
    assert cosines(got, want).min() >= MIN_COSINE
    one = encoder.encode_texts(NEW_SENTENCES["ko"])  # a single string is a batch of one
    assert one.shape == (1, encoder.embedding_dim)
    assert cosines(one, reference_text_features(model, hf_tokenizer, [NEW_SENTENCES["ko"]]))[0] >= MIN_COSINE


def test_an_off_by_one_token_id_would_be_caught(encoder: Encoder, model, hf_tokenizer) -> None:  # type: ignore[no-untyped-def]
    """The tiny model is sensitive enough that a fairseq-offset bug cannot pass the parity checks."""
    batch = hf_tokenizer(PARITY_TEXTS[:6], padding=True, return_tensors="pt")
    shifted = torch.where(batch["attention_mask"] == 1, batch["input_ids"] + 1, batch["input_ids"])
    with torch.no_grad():
        wrong = model.get_text_features(input_ids=shifted, attention_mask=batch["attention_mask"]).pooler_output
    assert cosines(encoder.encode_texts(PARITY_TEXTS[:6]), wrong.numpy()).min() < 0.99


# --- 3. zero-shot classification ------------------------------------------------------------------


def hand_probabilities(model, tokenizer, bundle: Path, photos: list[Path], labels, templates) -> np.ndarray:  # type: ignore[no-untyped-def]
    texts = [template.format(label) for label in labels for template in templates]
    batch = tokenizer(texts, padding=True, truncation=True, max_length=77, return_tensors="pt")
    with torch.no_grad():
        text = model.get_text_features(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).pooler_output
        image = model.get_image_features(pixel_values=reference_pixels(bundle, photos)).pooler_output
        text = text / text.norm(dim=-1, keepdim=True)
        classifier = text.reshape(len(labels), len(templates), -1).mean(dim=1)
        classifier = classifier / classifier.norm(dim=-1, keepdim=True)
        image = image / image.norm(dim=-1, keepdim=True)
        logits = model.logit_scale.exp() * image @ classifier.T
        return logits.softmax(dim=-1).numpy()


@pytest.mark.parametrize(
    ("labels", "templates"),
    [
        (["cat", "astronaut", "rocket", "cup of coffee", "man with a camera"], ["a photo of a {}.", "a picture of a {}."]),
        (["猫", "宇航员", "火箭", "咖啡"], ["一张{}的照片", "{}"]),
        (["قطة", "رائد فضاء", "صاروخ", "قهوة"], ["صورة {}", "a photo of a {}."]),
        (["cat", "dog", "rocket"], None),
    ],
    ids=["en", "zh", "ar", "default-templates"],
)
def test_classify_equals_hand_computation(  # type: ignore[no-untyped-def]
    encoder: Encoder, model, hf_tokenizer, tiny_bundle: Path, photos: list[Path], labels, templates, request
) -> None:
    assert encoder.logit_scale == pytest.approx(float(model.logit_scale.exp()), rel=1e-6)
    got = encoder.classify(photos, labels, templates)
    want = hand_probabilities(model, hf_tokenizer, tiny_bundle, photos, labels, templates or list(DEFAULT_TEMPLATES))
    assert got.shape == (len(photos), len(labels)) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-5)
    MEASURED[f"classify {request.node.callspec.id}"] = (
        f"max |diff| {float(np.abs(got - want).max()):.3g}, probabilities {got.min():.3g}..{got.max():.3g}"
    )
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)
    # Real probabilities, not the seed's 0 % / 100 % (softmax of raw, unscaled dot products).
    assert got.min() > 1e-4 and got.max() < 0.9999
    assert len(np.unique(np.round(got, 4))) > len(labels)


def test_default_templates_are_used_when_none(encoder: Encoder, photos: list[Path]) -> None:
    labels = ["cat", "rocket"]
    default = encoder.classify(photos[:2], labels)
    np.testing.assert_array_equal(default, encoder.classify(photos[:2], labels, DEFAULT_TEMPLATES))
    assert all("{}" in t for t in DEFAULT_TEMPLATES) and len(DEFAULT_TEMPLATES) > 1


def test_template_without_placeholder_is_refused(encoder: Encoder, photos: list[Path]) -> None:
    with pytest.raises(InputError, match=r"'a photo of a cat' has no \{\}"):
        encoder.classify(photos[:1], ["cat", "dog"], ["a photo of a {}", "a photo of a cat"])
    with pytest.raises(InputError, match="no labels"):
        encoder.classify(photos[:1], [])
    with pytest.raises(InputError, match="no templates"):  # an empty list is not "use the defaults"
        encoder.classify(photos[:1], ["cat", "dog"], [])


def test_one_template_string_is_one_template(encoder: Encoder, photos: list[Path]) -> None:
    labels = ["cat", "rocket"]
    np.testing.assert_array_equal(
        encoder.classify(photos[:2], labels, "a photo of a {}."), encoder.classify(photos[:2], labels, ["a photo of a {}."])
    )


# --- 4. precision choice and bundle refusal -------------------------------------------------------


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


def test_explicit_precision(tiny_bundle: Path) -> None:
    manifest = manifest_with(read_manifest(tiny_bundle), ("fp32", "int8"))
    assert pick_precision(manifest, VISUAL, "int8", "CUDAExecutionProvider") == "int8"
    assert pick_precision(manifest, TEXTUAL, "fp32", "CPUExecutionProvider") == "fp32"
    with pytest.raises(InputError, match=r"textual tower has no fp16 variant \(it has fp32, int8\)"):
        pick_precision(manifest, TEXTUAL, "fp16", "CUDAExecutionProvider")
    with pytest.raises(InputError, match=r"unknown precision 'bf16'"):
        pick_precision(manifest, TEXTUAL, "bf16", "CPUExecutionProvider")
    # The real bundle: an Encoder asked for a precision it lacks says so at construction.
    real = read_manifest(tiny_bundle)
    missing = [p for p in PRECISIONS if p not in real.precisions(VISUAL)]
    if missing:
        has = ", ".join(real.precisions(VISUAL))
        with pytest.raises(InputError, match=rf"has no {missing[0]} variant \(it has {has}\)"):
            Encoder(tiny_bundle, precision=missing[0])
    assert Encoder(tiny_bundle, precision="fp32").precisions == {VISUAL: "fp32", TEXTUAL: "fp32"}
    auto = "int8" if "int8" in real.precisions(VISUAL) else "fp32"
    assert Encoder(tiny_bundle, provider="cpu").precisions[VISUAL] == auto


def test_auto_precision_on_cpu_stays_close_to_pytorch(  # type: ignore[no-untyped-def]
    tiny_bundle: Path, model, hf_tokenizer, photos: list[Path]
) -> None:
    """What a CPU user gets by default (int8 when the bundle has it) passes that precision's gate."""
    auto = Encoder(tiny_bundle, provider="cpu")
    for tower, got, want in (
        (VISUAL, auto.encode_images(photos), reference_image_features(model, tiny_bundle, photos)),
        (TEXTUAL, auto.encode_texts(PARITY_TEXTS), reference_text_features(model, hf_tokenizer, PARITY_TEXTS)),
    ):
        precision = auto.precisions[tower]
        gate = GATES[precision]
        cos = cosines(got, want)
        record(f"{tower} auto ({precision})", got, normalized(want))
        assert cos.min() >= (gate.min_cosine or MIN_COSINE), tower
        if gate.mean_cosine is not None:
            assert cos.mean() >= gate.mean_cosine, tower


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


# --- 5. every kind of image input -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["chelsea.png", "astronaut.jpg", "camera.jpg"])
def test_every_input_kind_gives_the_same_embedding(encoder: Encoder, photos: list[Path], name: str) -> None:
    path = next(p for p in photos if p.name == name)
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


def test_bytes_like_inputs_are_one_image(encoder: Encoder, photos: list[Path]) -> None:
    data = photos[1].read_bytes()
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
