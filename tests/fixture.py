"""Build the test fixture: tiny AltCLIP checkpoints in both layouts, a tiny bundle, and the reference.

    python -m tests.fixture build/test-fixture      # needs the [export] extra (torch, transformers, ...)

The weights are random but input-sensitive (see ``init_input_sensitive``) and the tokenizer is a real
sentencepiece unigram model trained here on text in many languages, so the checkpoints go through exactly
the loading code that real ones take. The folder then holds::

    spm/sentencepiece.bpe.model
    checkpoints/AltCLIP-tiny/              transformers' layout (model.safetensors, tokenizer files)
    checkpoints/AltCLIP-m18-flagai-tiny/   FlagAI's layout (pytorch_model.bin with encoder.layer.N, spm only)
    bundle/                                the transformers checkpoint exported (fp32, int8, fp16; verified)
    other-bundle/                          the same architecture with other weights (fp32, int8): another model
    graphs/add.onnx, graphs/external/      two tiny graphs for session tests (y = x + x; one with external data)
    photos/                                tests/cases.py PHOTOS as files
    reference.json, reference.npz          token ids and features from sentencepiece/transformers/PyTorch
    pixels.npz                             transformers' pixel_values for tests/cases.py reference_images()
    COMPLETE                               written last

The reference comes from a model loaded afresh from the checkpoint (never one an exporter has traced),
through transformers' own tokenizer and image processor. Runtime tests read it with tests/reference.py.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from altclip_onnx.export.sources import init_input_sensitive
from . import cases
from .reference import PIXELS_NPZ, REFERENCE_JSON, REFERENCE_NPZ, image_key, text_key

COMPLETE = "COMPLETE"
BUNDLE_PRECISIONS = ("fp32", "int8", "fp16")

TINY_TEXT = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "max_position_embeddings": 514,
    "type_vocab_size": 1,
    "layer_norm_eps": 1e-5,
    "hidden_act": "gelu",
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "project_dim": 24,
}
TINY_VISION = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": 224,
    "patch_size": 32,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "projection_dim": 16,
}
TINY_PROJECTION = 16
WEIGHT_SEED = 1234


# --- checkpoints ------------------------------------------------------------------------------------


def train_sentencepiece(folder: Path) -> Path:
    """A real sentencepiece unigram model with XLM-R's special-piece layout (<unk>=0, <s>=1, </s>=2)."""
    import sentencepiece as spm

    folder.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(cases.corpus()), model_prefix=str(folder / "sp"), vocab_size=600,
        model_type="unigram", character_coverage=1.0, hard_vocab_limit=False, unk_id=0, bos_id=1, eos_id=2,
        pad_id=-1, minloglevel=2,
    )
    target = folder / "sentencepiece.bpe.model"
    (folder / "sp.model").rename(target)
    (folder / "sp.vocab").unlink()
    return target


def sp_vocab_size(spm_path: Path) -> int:
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(spm_path)).get_piece_size()


def tiny_config(spm_path: Path) -> Any:
    from transformers import AltCLIPConfig

    # XLM-R: sentencepiece ids shift by one (fairseq's <s>,<pad>,</s>,<unk> take 0..3) and <mask> comes last.
    text = dict(TINY_TEXT, vocab_size=sp_vocab_size(spm_path) + 2)
    return AltCLIPConfig(text_config=text, vision_config=dict(TINY_VISION), projection_dim=TINY_PROJECTION)


def tiny_model(spm_path: Path, seed: int = WEIGHT_SEED) -> Any:
    from transformers import AltCLIPModel

    model = AltCLIPModel(tiny_config(spm_path))
    init_input_sensitive(model, seed)
    return model.eval()


def save_image_processor(folder: Path) -> None:
    from altclip_onnx.bundle import ImageSpec

    (folder / "preprocessor_config.json").write_text(json.dumps(ImageSpec().preprocessor_config()))


def transformers_checkpoint(folder: Path, spm_path: Path, seed: int = WEIGHT_SEED) -> Path:
    """transformers' AltCLIP layout: config.json (model_type altclip), model.safetensors, tokenizer files."""
    from transformers import XLMRobertaTokenizer

    tiny_model(spm_path, seed).save_pretrained(folder)
    XLMRobertaTokenizer.from_pretrained(spm_path.parent).save_pretrained(folder)
    save_image_processor(folder)
    return folder


def flagai_state_dict(model: Any) -> dict[str, Any]:
    """The same weights under FlagAI's names, with the extra tensors FlagAI checkpoints carry."""
    gen = torch.Generator().manual_seed(7)
    hidden = model.config.text_config.hidden_size
    state = {}
    for key, value in model.state_dict().items():
        if key.endswith("position_ids"):
            continue
        key = re.sub(r"^text_model\.roberta\.encoder\.layers\.", "text_model.roberta.encoder.layer.", key)
        state[key] = value.clone()
    state["text_model.roberta.pooler.dense.weight"] = torch.randn(hidden, hidden, generator=gen)
    state["text_model.roberta.pooler.dense.bias"] = torch.randn(hidden, generator=gen)
    project = model.config.text_config.project_dim
    state["text_model.transformation_pre.weight"] = torch.randn(project, hidden, generator=gen)  # m18's diffusion head
    state["text_model.transformation_pre.bias"] = torch.randn(project, generator=gen)
    return state


def flagai_config(model: Any) -> dict[str, Any]:
    text = dict(TINY_TEXT, vocab_size=model.config.text_config.vocab_size, model_type="xlm-roberta",
                architectures=["RobertaSeriesModelWithTransformation"], pooler_fn="cls", learn_encoder=False)
    return {
        "architectures": ["CLIPHF"],
        "model_type": "clip",
        "text_config": text,
        "vision_config": dict(TINY_VISION, model_type="clip_vision_model"),
        "projection_dim": TINY_PROJECTION,
        "logit_scale_init_value": 2.6592,
        "num_layers": 3,
        "variant": "invert",
        "text_config_dict": None,
        "vision_config_dict": None,
    }


def flagai_checkpoint(folder: Path, spm_path: Path) -> Path:
    """FlagAI's layout: CLIPConfig-style config, pytorch_model.bin with encoder.layer.N, sentencepiece only."""
    folder.mkdir(parents=True)
    model = tiny_model(spm_path)
    torch.save(flagai_state_dict(model), folder / "pytorch_model.bin")
    (folder / "config.json").write_text(json.dumps(flagai_config(model), indent=2))
    shutil.copy(spm_path, folder / "sentencepiece.bpe.model")
    save_image_processor(folder)
    return folder


# --- the reference ----------------------------------------------------------------------------------


def image_processor(spec: Any) -> Any:
    """transformers' PIL-backend CLIP processor (plain CLIPImageProcessor is the torchvision backend in 5.x)."""
    from transformers import CLIPImageProcessorPil

    config = {k: v for k, v in spec.preprocessor_config().items() if k != "image_processor_type"}
    processor = CLIPImageProcessorPil(**config)
    if processor.backend != "pil":
        raise RuntimeError(f"expected the PIL backend, got {processor.backend}")
    return processor


def reference_pixels() -> dict[str, np.ndarray]:
    processors: dict[Any, Any] = {}
    pixels = {}
    for image, spec in cases.reference_images():
        processor = processors.setdefault(spec, image_processor(spec))
        pixels[image_key(image, spec)] = np.asarray(processor(images=image, return_tensors="np")["pixel_values"])[0]
    return pixels


def fairseq_ids(sp: Any, text: str) -> list[int]:
    """XLM-R's ids from sentencepiece itself: <s>=0 ... </s>=2, pieces shifted by one, sp's unk (0) -> 3."""
    return [0] + [3 if i == sp.unk_id() else i + 1 for i in sp.encode(text)] + [2]


def reference_values(fixture: Path, spm_path: Path, checkpoint: Path, photos: list[Path]) -> tuple[dict, dict]:
    """(JSON values, arrays) for the runtime tests, from sentencepiece, transformers and a fresh model."""
    import sentencepiece as spm
    from PIL import Image
    from transformers import XLMRobertaTokenizer

    from altclip_onnx.export import sources

    sp = spm.SentencePieceProcessor(model_file=str(spm_path))
    converted = XLMRobertaTokenizer.from_pretrained(spm_path.parent)  # slow->fast from the .model alone
    hf = XLMRobertaTokenizer.from_pretrained(checkpoint)
    data: dict[str, Any] = {
        "sentencepiece_ids": {text_key(t): fairseq_ids(sp, t) for t in cases.sentencepiece_texts()},
        "transformers_ids": {text_key(t): converted(t)["input_ids"] for t in cases.transformers_texts()},
        "checkpoint_tokenizer_ids": {text_key(t): hf(t)["input_ids"] for t in cases.TOKEN_TEXTS},
        "long_text_truncated_77": hf(cases.LONG_TEXT, truncation=True, max_length=77)["input_ids"],
    }
    from transformers.image_transforms import get_resize_output_image_size

    data["resize_sizes"] = [
        [w, h, edge, *reversed(get_resize_output_image_size(np.zeros((3, h, w), np.uint8), size=edge,
                                                             default_to_square=False,
                                                             input_data_format="channels_first"))]
        for w, h, edge in cases.resize_size_cases()
    ]
    model = sources.load_model(sources.resolve_source(str(checkpoint))).model  # afresh: no exporter touched it
    data["logit_scale"] = float(model.logit_scale.exp())
    processor = image_processor(cases.SPEC)
    pixels = processor(images=[Image.open(p) for p in photos], return_tensors="pt")["pixel_values"]

    def text_features(texts: list[str], ids: Any = None) -> np.ndarray:
        batch = hf(texts, padding=True, truncation=True, max_length=77, return_tensors="pt")
        input_ids = batch["input_ids"] if ids is None else ids(batch)
        with torch.no_grad():
            return model.get_text_features(input_ids=input_ids, attention_mask=batch["attention_mask"]).pooler_output.numpy()

    arrays: dict[str, np.ndarray] = {"photo_pixels": pixels.numpy()}
    with torch.no_grad():
        image = model.get_image_features(pixel_values=pixels).pooler_output
    arrays["photo_features"] = image.numpy()
    arrays["parity_text_features"] = text_features(cases.PARITY_TEXTS)
    arrays["odd_text_features"] = text_features(cases.ODD_PARITY_TEXTS)
    arrays["ko_text_features"] = text_features([cases.NEW_SENTENCES["ko"]])
    # A fairseq-offset bug (every real id one too high) must be visibly different.
    arrays["off_by_one_text_features"] = text_features(
        cases.PARITY_TEXTS[:6], ids=lambda b: torch.where(b["attention_mask"] == 1, b["input_ids"] + 1, b["input_ids"]))
    from altclip_onnx import DEFAULT_TEMPLATES

    image_norm = torch.nn.functional.normalize(image, dim=-1)
    for name, (labels, templates) in cases.CLASSIFY_CASES.items():
        templates = templates or list(DEFAULT_TEMPLATES)
        text = torch.from_numpy(text_features([t.replace("{}", label) for label in labels for t in templates]))
        text = torch.nn.functional.normalize(text, dim=-1)
        classifier = torch.nn.functional.normalize(text.reshape(len(labels), len(templates), -1).mean(dim=1), dim=-1)
        arrays[f"classify_{name}"] = (model.logit_scale.exp() * image_norm @ classifier.T).softmax(dim=-1).detach().numpy()
    return data, arrays


def tiny_graphs(folder: Path) -> None:
    """graphs/add.onnx (y = x + x) and graphs/external/model.onnx, whose weights are in model.onnx.data."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def model(nodes: list[Any], name: str, weights: list[Any] = ()) -> Any:  # type: ignore[assignment]
        graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])], list(weights))
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        proto.ir_version = 8
        return proto

    (folder / "external").mkdir(parents=True)
    onnx.save_model(model([helper.make_node("Add", ["x", "x"], ["y"])], "add"), str(folder / "add.onnx"))
    weight = numpy_helper.from_array(np.ones((2, 2), dtype=np.float32), "w")
    onnx.save_model(model([helper.make_node("MatMul", ["x", "w"], ["y"])], "external", [weight]),
                    str(folder / "external" / "model.onnx"), save_as_external_data=True,
                    location="model.onnx.data", size_threshold=0)


# --- the whole fixture --------------------------------------------------------------------------------


def build(folder: Path) -> Path:
    """Build the fixture in ``folder`` (created; must not hold a fixture already). Returns ``folder``."""
    from altclip_onnx.export import ExportOptions, export_bundle

    folder = Path(folder)
    if (folder / COMPLETE).exists():
        raise FileExistsError(f"{folder}: a fixture is already there; delete it to rebuild")
    folder.mkdir(parents=True, exist_ok=True)
    spm_path = train_sentencepiece(folder / "spm")
    checkpoint = transformers_checkpoint(folder / "checkpoints" / "AltCLIP-tiny", spm_path)
    flagai_checkpoint(folder / "checkpoints" / "AltCLIP-m18-flagai-tiny", spm_path)
    export_bundle(str(checkpoint), folder / "bundle", ExportOptions(precisions=BUNDLE_PRECISIONS))
    other = transformers_checkpoint(folder / "checkpoints" / "AltCLIP-tiny-other", spm_path, seed=WEIGHT_SEED + 1)
    export_bundle(str(other), folder / "other-bundle", ExportOptions(precisions=("fp32", "int8"), verify=False))
    tiny_graphs(folder / "graphs")
    photos = cases.write_photos(folder / "photos")
    data, arrays = reference_values(folder, spm_path, checkpoint, photos)
    (folder / REFERENCE_JSON).write_text(json.dumps(data), encoding="utf-8")
    np.savez(folder / REFERENCE_NPZ, **arrays)
    np.savez(folder / PIXELS_NPZ, **reference_pixels())
    (folder / COMPLETE).write_text("ok\n")
    return folder


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m tests.fixture FOLDER")
    print(build(Path(sys.argv[1])))
