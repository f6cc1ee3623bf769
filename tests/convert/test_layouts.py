"""The one mapping (convert/layouts.py) and the boundary edits (convert/graph.py), without any client."""

from __future__ import annotations

import collections
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from altclip_onnx import InputError, read_manifest
from altclip_onnx.convert import IMMICH, TRANSFORMERS_JS, plan
from altclip_onnx.convert.graph import CAST_SUFFIX, GraphEdits, external_files
from altclip_onnx.files import hash_file


def test_transformers_js_names_every_precision_and_reads_the_manifest(tiny_bundle: Path) -> None:
    manifest = read_manifest(tiny_bundle)
    layout = plan(TRANSFORMERS_JS, manifest)
    assert [g.path for g in layout.graphs] == [
        "onnx/text_model.onnx", "onnx/text_model_quantized.onnx", "onnx/text_model_fp16.onnx",
        "onnx/vision_model.onnx", "onnx/vision_model_quantized.onnx", "onnx/vision_model_fp16.onnx"]
    assert all(g.edits == GraphEdits() for g in layout.graphs)  # our names are transformers.js' names
    assert layout.copies == {"tokenizer.json": "textual/tokenizer.json"}
    config = layout.configs["config.json"]
    assert config["projection_dim"] == manifest.embedding_dim
    assert config["text_config"]["vocab_size"] == manifest.text.vocab_size
    assert config["vision_config"]["image_size"] == manifest.image.size
    assert config["transformers.js_config"] == {}  # inline weights; int8 present, so the q8 default finds a file
    assert config["altclip_onnx"]["weights_fingerprint"] == manifest.fingerprint()
    tokenizer = layout.configs["tokenizer_config.json"]
    assert tokenizer["tokenizer_class"] == "XLMRobertaTokenizer" and tokenizer["model_max_length"] == 77
    assert layout.configs["preprocessor_config.json"] == manifest.image.preprocessor_config()


def test_transformers_js_without_int8_says_fp32(tiny_bundle: Path) -> None:
    layout = plan(TRANSFORMERS_JS, read_manifest(tiny_bundle), ["fp32", "fp16"])
    assert [g.path for g in layout.graphs if g.tower == "textual"] == ["onnx/text_model.onnx",
                                                                       "onnx/text_model_fp16.onnx"]
    assert layout.configs["config.json"]["transformers.js_config"]["dtype"] == {"text_model": "fp32",
                                                                                "vision_model": "fp32"}


def test_immich_takes_one_precision_and_edits_the_boundary(tiny_bundle: Path) -> None:
    manifest = read_manifest(tiny_bundle)
    layout = plan(IMMICH, manifest)
    text, image = layout.graphs
    assert (text.path, text.precision, image.path) == ("textual/model.onnx", "fp32", "visual/model.onnx")
    assert text.edits.int32_inputs == ("input_ids", "attention_mask")
    assert text.edits.outputs == (("text_embeds_norm", "embedding"),)
    assert image.edits.rename_inputs == {"pixel_values": "image"}
    assert plan(IMMICH, manifest, ["int8"]).graphs[0].precision == "int8"
    with pytest.raises(InputError, match="one --precision"):
        plan(IMMICH, manifest, ["int8", "fp16"])
    with pytest.raises(InputError, match="unknown client"):
        plan("onnxruntime-web", manifest)


def test_immich_refuses_preprocessing_it_cannot_express(tiny_bundle: Path) -> None:
    manifest = read_manifest(tiny_bundle)
    other = dataclasses.replace(manifest, image=dataclasses.replace(manifest.image, shortest_edge=256))
    with pytest.raises(InputError, match="resizes to 256 and crops 224"):
        plan(IMMICH, other)


def test_a_missing_variant_is_named(other_bundle: Path) -> None:
    manifest = read_manifest(other_bundle)
    missing = [p for p in ("fp32", "int8", "fp16") if p not in manifest.precisions("visual")]
    if not missing:
        pytest.skip("the other bundle has every precision")
    with pytest.raises(InputError, match=f"no {missing[0]} variant"):
        plan(TRANSFORMERS_JS, manifest, [missing[0]])


def test_edits_touch_only_the_boundary_and_any_int8_graph_is_carried(converted: Callable[..., Path],
                                                                      tiny_bundle: Path) -> None:
    """Every node of the bundle's graph is in the converted one (whatever int8 ops it uses), plus one Cast
    per int32 input; initializers are byte-identical; the bundle is untouched."""
    import onnx

    manifest = read_manifest(tiny_bundle)
    for precision in ("fp32", "int8", "fp16"):
        folder = converted(IMMICH, (precision,))
        for tower, casts in (("textual", 2), ("visual", 0)):
            before = onnx.load(str(tiny_bundle / manifest.towers[tower][precision].path))
            after = onnx.load(str(folder / tower / "model.onnx"))
            ops_before = collections.Counter(n.op_type for n in before.graph.node)
            ops_after = collections.Counter(n.op_type for n in after.graph.node)
            assert ops_after - ops_before == collections.Counter({"Cast": casts} if casts else {})
            assert ops_before - ops_after == collections.Counter()
            assert {t.name: t.SerializeToString() for t in before.graph.initializer} == \
                   {t.name: t.SerializeToString() for t in after.graph.initializer}
            assert list(after.opset_import) == list(before.opset_import)
            if casts:
                cast = after.graph.node[0]
                assert cast.op_type == "Cast" and cast.output[0] == "input_ids" + CAST_SUFFIX
    for name, entry in manifest.files.items():
        assert hash_file(tiny_bundle / name) == entry.sha256  # the bundle was only read


def test_external_weights_are_copied_and_renamed(converted: Callable[..., Path], external_bundle: Path) -> None:
    import onnx

    folder = converted(TRANSFORMERS_JS, bundle=external_bundle)
    config = json.loads((folder / "config.json").read_text())
    assert config["transformers.js_config"]["use_external_data_format"] == {
        f"{name}{suffix}.onnx": 1 for name in ("text_model", "vision_model") for suffix in ("", "_quantized", "_fp16")}
    for name, source in (("text_model", "textual/model.onnx"), ("vision_model_quantized", "visual/model.int8.onnx")):
        graph = onnx.load(str(folder / "onnx" / f"{name}.onnx"), load_external_data=False)
        assert external_files(graph) == [f"{name}.onnx_data"]
        assert (folder / "onnx" / f"{name}.onnx_data").read_bytes() == (external_bundle / f"{source}.data").read_bytes()
    assert not list(folder.glob("onnx/*.data"))


def test_converted_graphs_run_in_onnxruntime_like_the_bundles(converted: Callable[..., Path],
                                                              external_bundle: Path, tiny_bundle: Path) -> None:
    from altclip_onnx.runtime.providers import make_session

    folder = converted(TRANSFORMERS_JS, bundle=external_bundle)
    pixels = np.random.default_rng(3).standard_normal((2, 3, 224, 224)).astype(np.float32)
    got = make_session(folder / "onnx" / "vision_model.onnx", provider="cpu").run(None, {"pixel_values": pixels})
    want = make_session(tiny_bundle / "visual" / "model.onnx", provider="cpu").run(None, {"pixel_values": pixels})
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
