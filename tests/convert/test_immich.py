"""The immich layout, run the way immich's machine-learning service runs a CLIP model folder.

``ImmichClip`` below follows immich's code (immich-app/immich, machine-learning/immich_ml/):
- models/clip/textual.py, OpenClipTextualEncoder._load_tokenizer: ``text_cfg.context_length`` from
  config.json (default 77), ``pad_token`` from textual/tokenizer_config.json, ``Tokenizer.from_file``,
  ``enable_padding(length=context_length, pad_token=..., pad_id=token_to_id(pad_token))``,
  ``enable_truncation(max_length=context_length)``; MClipTextualEncoder.tokenize: ``clean_text`` (whitespace
  collapsed), ``input_ids`` and ``attention_mask`` as int32 ``[1, context_length]``;
  ``session.run(None, tokens)[0][0]``.
- models/clip/visual.py, OpenClipVisualEncoder: visual/preprocess_cfg.json ``size`` (int or list),
  ``interpolation``, ``mean``, ``std``, ``resize_mode`` "shortest": transforms.py resize_pil (shortest side,
  int()), crop_pil (centre), to_numpy (/255), normalize; fed as ``{"image": [1, 3, S, S]}``; first output,
  first row.
- models/base.py: the graphs are ``<folder>/<visual|textual>/model.onnx``; only that name is loaded.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from altclip_onnx import Encoder
from altclip_onnx.convert.layouts import IMMICH_IMAGE_INPUT, IMMICH_OUTPUT

from ..cases import LONG_TEXT, PARITY_TEXTS, TOKEN_TEXTS
from ..reference import Reference

FP32_MIN_COSINE = 0.99999


class ImmichClip:
    """immich's way of loading and feeding a CLIP folder (M-CLIP: OpenClipVisualEncoder + MClipTextualEncoder)."""

    def __init__(self, folder: Path) -> None:
        import onnxruntime
        from tokenizers import Tokenizer

        self.config = json.loads((folder / "config.json").read_text())
        self.text_cfg = self.config["text_cfg"]
        tokenizer_cfg = json.loads((folder / "textual" / "tokenizer_config.json").read_text())
        context_length = self.text_cfg.get("context_length", 77)
        pad_token = tokenizer_cfg["pad_token"]
        self.tokenizer = Tokenizer.from_file((folder / "textual" / "tokenizer.json").as_posix())
        pad_id = self.tokenizer.token_to_id(pad_token)
        self.tokenizer.enable_padding(length=context_length, pad_token=pad_token, pad_id=pad_id)
        self.tokenizer.enable_truncation(max_length=context_length)
        self.preprocess_cfg = json.loads((folder / "visual" / "preprocess_cfg.json").read_text())
        size = self.preprocess_cfg["size"]
        self.size = size[0] if isinstance(size, list) else size
        self.resampling = {r.name.lower(): r for r in Image.Resampling}[self.preprocess_cfg["interpolation"].lower()]
        self.mean = np.array(self.preprocess_cfg["mean"], dtype=np.float32)
        self.std = np.array(self.preprocess_cfg["std"], dtype=np.float32)
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        self.textual = onnxruntime.InferenceSession((folder / "textual" / "model.onnx").as_posix(), options,
                                                    providers=["CPUExecutionProvider"])
        self.visual = onnxruntime.InferenceSession((folder / "visual" / "model.onnx").as_posix(), options,
                                                   providers=["CPUExecutionProvider"])

    def tokenize(self, text: str) -> dict[str, np.ndarray]:
        text = " ".join(text.split())  # transforms.clean_text
        tokens = self.tokenizer.encode(text)
        return {"input_ids": np.array([tokens.ids], dtype=np.int32),
                "attention_mask": np.array([tokens.attention_mask], dtype=np.int32)}

    def encode_text(self, text: str) -> np.ndarray:
        return self.textual.run(None, self.tokenize(text))[0][0]

    def transform(self, image: Image.Image) -> dict[str, np.ndarray]:
        image = image if image.mode == "RGB" else image.convert("RGB")  # transforms.decode_pil
        if image.width < image.height:  # transforms.resize_pil
            image = image.resize((self.size, int((image.height / image.width) * self.size)), resample=self.resampling)
        else:
            image = image.resize((int((image.width / image.height) * self.size), self.size), resample=self.resampling)
        left, upper = int(image.size[0] / 2 - self.size / 2), int(image.size[1] / 2 - self.size / 2)  # crop_pil
        image = image.crop((left, upper, left + self.size, upper + self.size))
        array = np.asarray(image, dtype=np.float32) / 255.0  # to_numpy
        array = (array * (1.0 / self.std)) - self.mean / self.std  # normalize
        return {"image": np.expand_dims(array.transpose(2, 0, 1), 0)}

    def encode_image(self, image: Image.Image) -> np.ndarray:
        return self.visual.run(None, self.transform(image))[0][0]

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        return self.visual.run(None, {"image": pixels[None]})[0][0]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def immich(converted: Callable[..., Path]) -> ImmichClip:
    return ImmichClip(converted("immich"))


def test_layout_matches_immichs_contract(converted: Callable[..., Path], tiny_bundle: Path) -> None:
    import onnx

    folder = converted("immich")
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert files == ["config.json", "textual/model.onnx", "textual/tokenizer.json", "textual/tokenizer_config.json",
                     "visual/model.onnx", "visual/preprocess_cfg.json"]
    config = json.loads((folder / "config.json").read_text())
    manifest = Encoder(tiny_bundle).manifest
    assert config["embed_dim"] == manifest.embedding_dim
    assert config["vision_cfg"]["image_size"] == manifest.image.size
    assert config["text_cfg"]["context_length"] == manifest.text.max_length
    preprocess = json.loads((folder / "visual" / "preprocess_cfg.json").read_text())
    assert preprocess["size"] == [224, 224] and preprocess["interpolation"] == "bicubic"
    assert preprocess["mean"] == list(manifest.image.mean) and preprocess["std"] == list(manifest.image.std)
    assert preprocess["resize_mode"] == "shortest" and preprocess["mode"] == "RGB"
    assert json.loads((folder / "textual" / "tokenizer_config.json").read_text())["pad_token"] == "<pad>"
    assert (folder / "textual" / "tokenizer.json").read_bytes() == (tiny_bundle / "textual" / "tokenizer.json").read_bytes()
    text = onnx.load(str(folder / "textual" / "model.onnx"), load_external_data=False).graph
    assert [(i.name, i.type.tensor_type.elem_type) for i in text.input] == [
        ("input_ids", onnx.TensorProto.INT32), ("attention_mask", onnx.TensorProto.INT32)]
    assert [o.name for o in text.output] == [IMMICH_OUTPUT]
    visual = onnx.load(str(folder / "visual" / "model.onnx"), load_external_data=False).graph
    assert [(i.name, i.type.tensor_type.elem_type) for i in visual.input] == [(IMMICH_IMAGE_INPUT, onnx.TensorProto.FLOAT)]
    assert [o.name for o in visual.output] == [IMMICH_OUTPUT]


def test_text_as_immich_feeds_it(immich: ImmichClip, tiny_bundle: Path, ref: Reference) -> None:
    """int32 [1, 77] padded with <pad>: same ids as ours (then padding), same normalized vectors."""
    encoder = Encoder(tiny_bundle, precision="fp32")
    texts = [*TOKEN_TEXTS, LONG_TEXT]
    for text in texts:
        fed = immich.tokenize(text)
        ids, mask = fed["input_ids"][0], fed["attention_mask"][0]
        assert fed["input_ids"].dtype == np.int32 and fed["input_ids"].shape == (1, 77)
        ours = encoder.tokenize([text])["input_ids"][0].tolist()
        assert ids[: len(ours)].tolist() == ours, text
        assert set(ids[len(ours):].tolist()) <= {1} and mask.sum() == len(ours)
    vectors = np.stack([immich.encode_text(t) for t in texts])
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)  # first output: normalized
    ours = encoder.encode_texts(texts)
    assert min(cosine(a, b) for a, b in zip(vectors, ours)) >= FP32_MIN_COSINE
    reference = ref["parity_text_features"]
    assert min(cosine(immich.encode_text(t), reference[i]) for i, t in enumerate(PARITY_TEXTS)) >= FP32_MIN_COSINE


def test_images_as_immich_feeds_them(immich: ImmichClip, tiny_bundle: Path, fixture_photos: list[Path],
                                     ref: Reference) -> None:
    """An input named image; fed our pixels, our vectors exactly; with immich's own resize (int() sizes,
    no transparency compositing) only slightly different pixels."""
    encoder = Encoder(tiny_bundle, precision="fp32")
    pixels = encoder.preprocess(fixture_photos)
    ours = encoder.encode_pixels(pixels)
    fed_ours = np.stack([immich.encode_pixels(p) for p in pixels])
    assert min(cosine(a, b) for a, b in zip(fed_ours, ours)) >= FP32_MIN_COSINE
    assert min(cosine(a, b) for a, b in zip(fed_ours, ref["photo_features"])) >= FP32_MIN_COSINE
    own = [immich.transform(Image.open(p)) for p in fixture_photos]
    assert all(o["image"].shape == (1, 3, 224, 224) and o["image"].dtype == np.float32 for o in own)
    gaps = [float(np.abs(o["image"][0] - p).max()) for o, p in zip(own, pixels)]
    assert max(gaps) < 0.5, gaps  # the same bicubic filter (PIL); only sizes and rounding may differ
    assert min(cosine(immich.encode_image(Image.open(p)), o) for p, o in zip(fixture_photos, ours)) >= 0.9999


@pytest.mark.parametrize("precision", ["int8", "fp16"])
def test_other_precisions_take_the_place_of_model_onnx(converted: Callable[..., Path], precision: str,
                                                       tiny_bundle: Path, fixture_photos: list[Path]) -> None:
    """immich loads only model.onnx: --precision puts the int8 or fp16 graph there, fed the same way."""
    from altclip_onnx.runtime.providers import make_session

    client = ImmichClip(converted("immich", (precision,)))
    config = json.loads((converted("immich", (precision,)) / "config.json").read_text())
    assert config["altclip_onnx"]["precisions"] == {"textual": [precision], "visual": [precision]}
    original = make_session(tiny_bundle / "textual" / f"model.{precision}.onnx", provider="cpu")
    for text in PARITY_TEXTS[:6]:
        fed = client.tokenize(text)
        want = original.run(["text_embeds_norm"], {k: v.astype(np.int64) for k, v in fed.items()})[0][0]
        assert cosine(client.encode_text(text), want) >= FP32_MIN_COSINE
    pixels = Encoder(tiny_bundle, precision=precision).preprocess(fixture_photos[:2])
    want = Encoder(tiny_bundle, precision=precision).encode_pixels(pixels[:1])[0]
    assert cosine(client.encode_pixels(pixels[0]), want) >= FP32_MIN_COSINE


def test_external_weights_keep_immichs_file_names(converted: Callable[..., Path], external_bundle: Path,
                                                  tiny_bundle: Path) -> None:
    folder = converted("immich", ("int8",), bundle=external_bundle)
    assert (folder / "textual" / "model.onnx.data").read_bytes() == \
        (external_bundle / "textual" / "model.int8.onnx.data").read_bytes()
    client = ImmichClip(folder)
    want = Encoder(tiny_bundle, precision="int8").session("textual").run(
        ["text_embeds_norm"], {k: v.astype(np.int64) for k, v in client.tokenize(PARITY_TEXTS[0]).items()})[0][0]
    assert cosine(client.encode_text(PARITY_TEXTS[0]), want) >= FP32_MIN_COSINE


def test_sessions_declare_what_immich_feeds(immich: ImmichClip) -> None:
    # immich feeds exactly these names; onnxruntime refuses a feed the graph does not declare.
    names = [i.name for i in immich.textual.get_inputs()]
    assert names == ["input_ids", "attention_mask"]
    assert [i.name for i in immich.visual.get_inputs()] == ["image"]
    assert all(i.type == "tensor(int32)" for i in immich.textual.get_inputs())

