"""Fused graphs, int8 and fp16 variants, their accuracy gates, and the bench command."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest

from altclip_onnx.bundle import TEXTUAL, VISUAL, read_manifest
from altclip_onnx.export import graphs
from altclip_onnx.precisions import PRECISIONS
from altclip_onnx.runtime.encoder import Encoder
from altclip_onnx.verification.check import allowed_disagreements, compare, zero_shot_agreement
from altclip_onnx.verification.reference import Case, read_reference

# The gates as documented (written out here, not imported from the code they check):
# fp16 min cosine >= 0.9995; int8 min >= 0.98 and mean >= 0.995; zero-shot agreement >= 98%.
MIN_COSINE = {"fp16": 0.9995, "int8": 0.98}
MEAN_COSINE = {"int8": 0.995}
ZERO_SHOT_MIN_CASES = 30


def test_variants_pass_their_gates(tiny_bundle: Path) -> None:
    report = json.loads((tiny_bundle / "verify.json").read_text())
    cases = read_reference(tiny_bundle, read_manifest(tiny_bundle)).cases
    assert report["passed"]
    for precision in ("int8", "fp16"):
        for tower in (VISUAL, TEXTUAL):
            rows = [r for r in report["rows"] if r["precision"] == precision and r["tower"] == tower]
            assert len(rows) == 2 * sum(1 for c in cases if c.tower == tower)  # two outputs per case
            assert min(r["min_cosine"] for r in rows) >= MIN_COSINE[precision]
            if precision in MEAN_COSINE:
                assert np.mean([r["mean_cosine"] for r in rows]) >= MEAN_COSINE[precision]
    # fp16 on the CPU provider stays far inside its gate; int8 loses measurably but passes.
    fp16 = min(r["min_cosine"] for r in report["rows"] if r["precision"] == "fp16")
    int8 = min(r["min_cosine"] for r in report["rows"] if r["precision"] == "int8")
    assert fp16 >= 0.9995 and int8 < fp16
    images = sum(c.size for c in cases if c.tower == VISUAL)
    for precision in ("int8", "fp16"):
        zs = report["zero_shot_agreement"][precision]
        assert zs["all_cases"] == images
        # The tiny bundle's seed gives enough confident images to gate on: the gate really ran.
        assert zs["gated"] and zs["confident_cases"] >= ZERO_SHOT_MIN_CASES
        assert zs["confident_cases"] - zs["agreeing"] <= zs["allowed_disagreements"]


def test_manifest_records_accuracy_sizes_and_fusions(tiny_bundle: Path) -> None:
    manifest = read_manifest(tiny_bundle)
    for tower in (VISUAL, TEXTUAL):
        variants = manifest.towers[tower]
        assert set(variants) == {"fp32", "int8", "fp16"}
        assert variants["int8"].path == f"{tower}/model.int8.onnx"
        assert variants["fp16"].path == f"{tower}/model.fp16.onnx"
        for variant in variants.values():
            assert variant.accuracy["min_cosine"] >= 0.98
            for f in variant.files:
                assert manifest.files[f].size > 0 and len(manifest.files[f].sha256) == 64
        assert "zero_shot_top1_agreement" in variants["int8"].accuracy
        fp32 = variants["fp32"].fused_ops
        # One per layer of the tiny model; the image tower's last layer computes the class token alone
        # (export.towers), which is no pattern the fusion knows, and with one query row it gains nothing.
        assert fp32.get("Attention", 0) == (1 if tower == VISUAL else 2)
        assert fp32.get("LayerNormalization", 0) > 0
        assert fp32.get("QuickGelu" if tower == VISUAL else "BiasGelu", 0) == 2
        int8 = variants["int8"].fused_ops
        assert int8.get("MatMulIntegerToFloat", 0) > 0  # quantized projections (per-row, export.quantize)
        # The text tower's int8 keeps the fused GELU (see export.variants.RECIPES); the image tower's is unfused.
        assert int8.get("BiasGelu", 0) == (2 if tower == TEXTUAL else 0)
    text = (tiny_bundle / "verify.json").read_text()
    assert '"fused_ops"' in text and '"Attention": 2' in text


def test_fp16_keeps_float32_boundary_and_int8_is_smaller(tiny_bundle: Path) -> None:
    for tower in (VISUAL, TEXTUAL):
        fp16 = onnx.load(str(tiny_bundle / tower / "model.fp16.onnx"))
        for value in list(fp16.graph.input) + list(fp16.graph.output):
            assert value.type.tensor_type.elem_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.INT64)
        halves = [t for t in fp16.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16]
        assert len(halves) > 10
        assert (tiny_bundle / tower / "model.fp16.onnx").stat().st_size < (tiny_bundle / tower / "model.onnx").stat().st_size
        # int8 weights are stored as int8 (on the tiny model, scales and extra nodes outweigh the saving in
        # bytes; the full model's image tower goes from 1217 MB to 309 MB).
        int8 = onnx.load(str(tiny_bundle / tower / "model.int8.onnx"))
        matmuls = sum(1 for n in int8.graph.node if n.op_type == "MatMulIntegerToFloat")
        weights = [t for t in int8.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 2]
        assert matmuls > 0 and len(weights) >= matmuls
        # The word-embedding table (half the full text tower) is int8 rows, with no float32 copy left.
        tables = {t.name: t.data_type for t in int8.graph.initializer if "word_embeddings" in t.name}
        if tower == TEXTUAL:
            assert tables == {"text_model.roberta.embeddings.word_embeddings.weight_int8": onnx.TensorProto.INT8,
                              "text_model.roberta.embeddings.word_embeddings.weight_scale": onnx.TensorProto.FLOAT}


def test_saved_graphs_are_not_tied_to_this_cpu(tiny_bundle: Path) -> None:
    """onnxruntime's highest optimization level writes NCHWc layouts for this CPU's vector width."""
    for path in tiny_bundle.glob("*/model*.onnx"):
        domains = {node.domain for node in onnx.load(str(path), load_external_data=False).graph.node}
        assert "com.microsoft.nchwc" not in domains, path


def test_auto_precision_picks_int8_on_cpu_and_fp32_stays_the_reference(tiny_bundle: Path) -> None:
    auto = Encoder(tiny_bundle)
    assert auto.precisions == {VISUAL: "int8", TEXTUAL: "int8"}
    reference = Encoder(tiny_bundle, precision="fp32")
    texts = ["a photo of a cat", "一只猫", "صورة قطة"]
    a, b = auto.encode_texts(texts), reference.encode_texts(texts)
    cos = np.sum(a * b, axis=1)
    assert cos.min() > 0.98 and not np.allclose(a, b, atol=1e-6)  # int8 really ran, and is close


def test_gates_fail_when_a_variant_drifts() -> None:
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((8, 16)).astype(np.float32)
    drift = (ref + 0.25 * rng.standard_normal(ref.shape)).astype(np.float32)  # cosine ~0.97
    case = Case(VISUAL, "images b8", {"pixel_values": np.zeros((8, 3, 2, 2), np.float32)})
    norm = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    reference = [{"image_embeds": ref, "image_embeds_norm": norm(ref)}]
    actual = [{"image_embeds": drift, "image_embeds_norm": norm(drift)}]
    for precision in ("int8", "fp16", "fp32"):
        rows, failures = compare([case], reference, actual, precision)
        assert failures and not all(r.passed for r in rows), precision
    rows, failures = compare([case], reference, reference, "int8")
    assert not failures


def zero_shot_case(n_images: int, swaps: int, labels: int = 16) -> dict:
    """n_images images, each pointing at one of ``labels`` labels; the first 2 x ``swaps`` swap labels pairwise."""
    texts = np.eye(labels, dtype=np.float32)
    images = texts[np.arange(n_images) % labels]
    got = images.copy()
    for pair in range(swaps):
        got[[2 * pair, 2 * pair + 1]] = got[[2 * pair + 1, 2 * pair]]
    cases = [Case(VISUAL, "images", {}), Case(TEXTUAL, "labels", {})]
    ref = [{"image_embeds_norm": images}, {"text_embeds_norm": texts}]
    actual = [{"image_embeds_norm": got}, {"text_embeds_norm": texts}]
    return zero_shot_agreement(cases, ref, actual, logit_scale=100.0, gate=PRECISIONS["int8"].gate)


def test_zero_shot_agreement_counts_only_confident_cases() -> None:
    images, swaps, labels = 8, 1, 16
    result = zero_shot_case(images, swaps, labels)
    assert result["confident_cases"] == images
    assert result["agreement"] == pytest.approx((images - 2 * swaps) / images)  # each swap: 2 disagreements
    assert not result["gated"]  # 8 confident images: too few to decide anything
    cases = [Case(VISUAL, "images", {}), Case(TEXTUAL, "labels", {})]
    flat = [{"image_embeds_norm": np.zeros((images, labels), np.float32)},
            {"text_embeds_norm": np.eye(labels, dtype=np.float32)}]
    assert zero_shot_agreement(cases, flat, flat, 100.0, PRECISIONS["int8"].gate)["agreement"] is None  # near-ties


def test_no_single_image_decides_the_zero_shot_gate() -> None:
    """At 64 confident images and 98%: one or two disagreements are chance, a rate well past 2% fails."""
    allowed = allowed_disagreements(64, 0.98, 0.05)
    assert allowed >= 2  # so neither one nor two images decide it
    # The rule: the binomial tail of allowed + 1 disagreements at a 2% rate is under 5%, of allowed over it.
    def tail(k: int) -> float:
        return 1 - sum(math.comb(64, i) * 0.02**i * 0.98 ** (64 - i) for i in range(k))
    assert tail(allowed + 1) < 0.05 <= tail(allowed)
    passing = zero_shot_case(64, swaps=1)  # 2 disagreements
    failing = zero_shot_case(64, swaps=allowed)  # 2 x allowed disagreements
    assert passing["gated"] and passing["confident_cases"] - passing["agreeing"] <= passing["allowed_disagreements"]
    assert failing["confident_cases"] - failing["agreeing"] > failing["allowed_disagreements"]


def test_count_ops_sees_fusions(tiny_bundle: Path) -> None:
    counts = graphs.count_ops(tiny_bundle / "textual" / "model.onnx")
    assert counts["Attention"] == 2 and counts["BiasGelu"] == 2


@pytest.mark.parametrize("tower", [VISUAL, TEXTUAL])
def test_export_progress_says_each_step_once(tower: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The text tower is fused twice (fully for fp32, without attention for int8): two different lines."""
    from altclip_onnx.export.variants import make_variants

    def step(function: object, source: Path, destination: Path, *args: object, **kwargs: object) -> list[Path]:
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_bytes(b"graph")
        return [destination]

    monkeypatch.setattr(graphs, "isolated", step)  # the order of steps and what they say, not their work
    raw = tmp_path / "raw" / "model.onnx"
    raw.parent.mkdir()
    raw.write_bytes(b"raw")
    lines: list[str] = []
    make_variants([raw], tower, ["fp32", "int8", "fp16"], tmp_path / "out", tmp_path / "work", num_heads=2,
                  hidden_size=32, progress=lines.append)
    assert len(lines) == len(set(lines)), lines
    expected = {VISUAL: [f"optimizing the {tower} tower", f"quantizing the {tower} tower to int8",
                         f"converting the {tower} tower to fp16"],
                TEXTUAL: [f"optimizing the {tower} tower", f"optimizing the {tower} tower for int8 (attention left "
                          "unfused)", f"quantizing the {tower} tower to int8", f"converting the {tower} tower to fp16"]}
    assert lines == expected[tower]
