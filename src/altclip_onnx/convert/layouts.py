"""Which file of a bundle goes where for each client, and what each client is told: the one mapping.

A :class:`Layout` is data: the graphs to write (from which tower and precision, to which path, with
which boundary edits), the config files (their values come from the manifest) and the files copied
as they are. :func:`plan` builds it for a client; :mod:`altclip_onnx.convert.run` writes it. Nothing
else in the project knows a client's file names.

transformers.js (``@huggingface/transformers``; checked against 4.3.2)::

    config.json                  model_type "altclip", projection_dim, text/vision sizes, and
                                 "transformers.js_config" (external weights per graph; dtype fp32 when
                                 the bundle has no int8, so the browsers' default q8 finds a file)
    tokenizer.json               the bundle's textual/tokenizer.json, unchanged
    tokenizer_config.json        XLMRobertaTokenizer, its special tokens, model_max_length = text.max_length
    preprocessor_config.json     CLIPImageProcessor settings (the bundle's image spec)
    onnx/text_model.onnx         textual fp32 (+ text_model.onnx_data when its weights are external)
    onnx/text_model_quantized.onnx   textual int8 (transformers.js dtype "q8")
    onnx/text_model_fp16.onnx    textual fp16 (dtype "fp16")
    onnx/vision_model*.onnx      the same for the image tower

  Graphs unchanged (transformers.js feeds ``input_ids``/``attention_mask`` int64 and ``pixel_values``,
  and reads ``text_embeds``/``image_embeds``, which are our names); only external weight files are
  renamed to transformers.js' ``<graph>.onnx_data`` and the graphs pointed at them.

immich (``machine-learning/``, the M-CLIP path: OpenClipVisualEncoder + MClipTextualEncoder)::

    config.json                  OpenCLIP-style: embed_dim, vision_cfg.image_size, text_cfg.context_length
    visual/model.onnx            input ``image`` float32 [batch, 3, S, S]; one output ``embedding``
                                 (L2-normalized, as immich's own exports)
    visual/preprocess_cfg.json   size, mode, mean, std, interpolation, resize_mode "shortest"
    textual/model.onnx           inputs ``input_ids``, ``attention_mask`` int32 [batch, sequence] (cast to
                                 int64 inside); one output ``embedding`` (L2-normalized)
    textual/tokenizer.json       the bundle's tokenizer, unchanged
    textual/tokenizer_config.json  pad_token (immich pads to context_length with it)

  immich loads only ``model.onnx``: one precision per folder (fp32 unless asked otherwise).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..bundle import RESAMPLE_NAMES, TEXTUAL, TOKENIZER, TOWER_INPUTS, VISUAL, Manifest, tower_output
from ..errors import InputError
from ..precisions import PRECISION_NAMES
from .graph import GraphEdits

TRANSFORMERS_JS = "transformers.js"
IMMICH = "immich"
CLIENTS = (TRANSFORMERS_JS, IMMICH)

# transformers.js: graph base names per tower, and file suffix + dtype name per precision.
TJS_GRAPH_NAMES = {TEXTUAL: "text_model", VISUAL: "vision_model"}
TJS_SUFFIXES = {"fp32": "", "int8": "_quantized", "fp16": "_fp16"}

IMMICH_OUTPUT = "embedding"
IMMICH_IMAGE_INPUT = "image"


@dataclass(frozen=True)
class Feed:
    """How a client feeds a graph: input names, integer dtype, and padding (None: to the longest text)."""

    inputs: tuple[str, ...]
    int_dtype: str = "int64"
    pad_to: int | None = None
    output: str = ""  # the output the client reads
    normalized: bool = False  # whether that output is L2-normalized


@dataclass(frozen=True)
class GraphFile:
    tower: str
    precision: str
    path: str  # relative to the output folder
    edits: GraphEdits
    weight_names: tuple[str, ...] | None  # names of its external weight files (None: keep the bundle's)
    feed: Feed


@dataclass(frozen=True)
class Layout:
    client: str
    graphs: tuple[GraphFile, ...]
    configs: dict[str, dict[str, Any]]  # relative path -> JSON object
    copies: dict[str, str] = field(default_factory=dict)  # relative path in the output -> path in the bundle

    def files(self) -> list[str]:
        return sorted([*(g.path for g in self.graphs), *self.configs, *self.copies])


def plan(client: str, manifest: Manifest, precisions: Sequence[str] | None = None) -> Layout:
    """The layout of ``manifest``'s bundle for ``client``; ``precisions``: which variants (default: for
    transformers.js every one the bundle has, for immich fp32)."""
    if client == TRANSFORMERS_JS:
        return _transformers_js(manifest, precisions)
    if client == IMMICH:
        return _immich(manifest, precisions)
    raise InputError(f"unknown client {client!r}: choose from {', '.join(CLIENTS)}")


def _external_weight_names(manifest: Manifest, tower: str, precision: str, graph_name: str) -> tuple[str, ...]:
    """transformers.js' names for a graph's external weights: ``<graph>_data``, ``<graph>_data_1``, ..."""
    variant = manifest.towers[tower][precision]
    count = len(variant.files) - 1
    return tuple(f"{graph_name}_data" + ("" if i == 0 else f"_{i}") for i in range(count))


def _provenance(manifest: Manifest, client: str, precisions: dict[str, list[str]]) -> dict[str, Any]:
    from .. import __version__

    return {
        "layout": client,
        "converted_by": f"altclip-onnx {__version__}",
        "variant": manifest.variant,
        "source": manifest.source,
        "weights_fingerprint": manifest.fingerprint(),
        "embedding_dim": manifest.embedding_dim,
        "logit_scale": manifest.logit_scale,
        "precisions": precisions,
        "accuracy": {tower: {p: manifest.towers[tower][p].accuracy for p in ps} for tower, ps in precisions.items()},
    }


def _chosen(manifest: Manifest, tower: str, precisions: Sequence[str] | None) -> list[str]:
    available = manifest.precisions(tower)
    if precisions is None:
        return available
    missing = [p for p in precisions if p not in available]
    if missing:
        raise InputError(f"the bundle's {tower} tower has no {', '.join(missing)} variant (it has "
                         f"{', '.join(available)}); choose from those or re-export with --precision")
    return [p for p in PRECISION_NAMES if p in precisions]


def _transformers_js(manifest: Manifest, precisions: Sequence[str] | None) -> Layout:
    graphs = []
    chosen: dict[str, list[str]] = {}
    external: dict[str, int] = {}
    for tower in (TEXTUAL, VISUAL):
        chosen[tower] = _chosen(manifest, tower, precisions)
        for precision in chosen[tower]:
            name = TJS_GRAPH_NAMES[tower] + TJS_SUFFIXES[precision]
            weights = _external_weight_names(manifest, tower, precision, f"{name}.onnx")
            if weights:
                external[f"{name}.onnx"] = len(weights)
            feed = Feed(inputs=TOWER_INPUTS[tower], output=tower_output(tower, normalized=False))
            graphs.append(GraphFile(tower, precision, f"onnx/{name}.onnx", GraphEdits(), weights, feed))
    tjs_config: dict[str, Any] = {}
    if external:
        tjs_config["use_external_data_format"] = external
    if any("int8" not in ps for ps in chosen.values()):
        # transformers.js defaults to q8 (the _quantized file) in browsers; without one, say fp32.
        tjs_config["dtype"] = {TJS_GRAPH_NAMES[t]: ("q8" if "int8" in ps else "fp32") for t, ps in chosen.items()}
    text = manifest.text
    config = {
        "model_type": "altclip",
        "architectures": ["AltCLIPModel"],
        "projection_dim": manifest.embedding_dim,
        "logit_scale_init_value": math.log(manifest.logit_scale),
        "text_config": {
            "model_type": "altclip_text_model",
            "vocab_size": text.vocab_size,
            "pad_token_id": text.pad_id,
            "bos_token_id": text.bos_id,
            "eos_token_id": text.eos_id,
        },
        "vision_config": {"model_type": "altclip_vision_model", "image_size": manifest.image.size},
        "transformers.js_config": tjs_config,
        "altclip_onnx": _provenance(manifest, TRANSFORMERS_JS, chosen),
    }
    tokenizer_config = {
        "tokenizer_class": "XLMRobertaTokenizer",
        "model_max_length": text.max_length,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "cls_token": "<s>",
        "sep_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "<pad>",
        "mask_token": "<mask>",
        "padding_side": "right",
        "clean_up_tokenization_spaces": False,
    }
    configs = {
        "config.json": config,
        "tokenizer_config.json": tokenizer_config,
        "preprocessor_config.json": manifest.image.preprocessor_config(),
    }
    return Layout(TRANSFORMERS_JS, tuple(graphs), configs, {"tokenizer.json": TOKENIZER})


def _immich(manifest: Manifest, precisions: Sequence[str] | None) -> Layout:
    if precisions is not None and len(precisions) != 1:
        raise InputError("immich loads one model.onnx per tower: give one --precision (fp32, int8 or fp16)")
    precision = precisions[0] if precisions else "fp32"
    image = manifest.image
    if image.shortest_edge != image.size:
        raise InputError(f"immich resizes the shortest edge to the crop size; this bundle resizes to "
                         f"{image.shortest_edge} and crops {image.size}, so immich would feed other pixels")
    if not math.isclose(image.rescale_factor, 1 / 255):
        raise InputError(f"immich scales pixels by 1/255; this bundle uses {image.rescale_factor}")
    if image.resample not in RESAMPLE_NAMES:
        raise InputError(f"immich names its resampling filter; this bundle's ({image.resample}) has no name")
    chosen = {tower: _chosen(manifest, tower, [precision]) for tower in (TEXTUAL, VISUAL)}
    length = manifest.text.max_length
    text_edits = GraphEdits(int32_inputs=TOWER_INPUTS[TEXTUAL],
                            outputs=((tower_output(TEXTUAL, normalized=True), IMMICH_OUTPUT),))
    image_edits = GraphEdits(rename_inputs={TOWER_INPUTS[VISUAL][0]: IMMICH_IMAGE_INPUT},
                             outputs=((tower_output(VISUAL, normalized=True), IMMICH_OUTPUT),))
    graphs = (
        GraphFile(TEXTUAL, precision, "textual/model.onnx", text_edits, _immich_weights(manifest, TEXTUAL, precision),
                  Feed(TOWER_INPUTS[TEXTUAL], int_dtype="int32", pad_to=length, output=IMMICH_OUTPUT, normalized=True)),
        GraphFile(VISUAL, precision, "visual/model.onnx", image_edits, _immich_weights(manifest, VISUAL, precision),
                  Feed((IMMICH_IMAGE_INPUT,), output=IMMICH_OUTPUT, normalized=True)),
    )
    config = {
        "embed_dim": manifest.embedding_dim,
        "vision_cfg": {"image_size": image.size},
        "text_cfg": {"context_length": length, "vocab_size": manifest.text.vocab_size},
        "altclip_onnx": _provenance(manifest, IMMICH, chosen),
    }
    preprocess = {
        "size": [image.size, image.size],
        "mode": "RGB",
        "mean": list(image.mean),
        "std": list(image.std),
        "interpolation": RESAMPLE_NAMES[image.resample],
        "resize_mode": "shortest",
        "fill_color": 0,
    }
    tokenizer_config = {"tokenizer_class": "XLMRobertaTokenizer", "pad_token": "<pad>", "bos_token": "<s>",
                        "eos_token": "</s>", "unk_token": "<unk>", "model_max_length": manifest.text.model_max_length}
    configs = {
        "config.json": config,
        "visual/preprocess_cfg.json": preprocess,
        "textual/tokenizer_config.json": tokenizer_config,
    }
    return Layout(IMMICH, graphs, configs, {"textual/tokenizer.json": TOKENIZER})


def _immich_weights(manifest: Manifest, tower: str, precision: str) -> tuple[str, ...]:
    """``model.onnx.data`` (then ``.data_1`` ...) beside immich's ``model.onnx``."""
    count = len(manifest.towers[tower][precision].files) - 1
    return tuple("model.onnx.data" + ("" if i == 0 else f"_{i}") for i in range(count))
