"""Export: both layouts, the bundle contract, parity with PyTorch, and every error path."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from altclip_onnx.bundle import TEXTUAL, VISUAL, check_integrity, read_manifest
from altclip_onnx.errors import BundleError, InputError, OutputError, SourceError, VerificationError
from altclip_onnx.export import ExportOptions, export_bundle, verify_against_model
from altclip_onnx.export import sources, towers
from altclip_onnx.export.verify import reference_outputs
from altclip_onnx.models import KNOWN_VARIANTS, canonical_variant
from altclip_onnx.verification import check_bundle, verify_bundle
from altclip_onnx.verification.reference import StoredReference, read_reference

from ..cases import SENTENCES
from ..fixture import TINY_PROJECTION, TINY_TEXT, TINY_VISION


def session(bundle: Path, tower: str) -> ort.InferenceSession:
    return ort.InferenceSession(str(bundle / tower / "model.onnx"), providers=["CPUExecutionProvider"])


def fresh_model(folder: Path):  # type: ignore[no-untyped-def]
    return sources.load_model(sources.resolve_source(str(folder))).model


def cli(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "altclip_onnx.cli", *args],
        capture_output=True, text=True, cwd=cwd, env={**os.environ, **(env or {})}, timeout=300,
    )


# --- the bundle -------------------------------------------------------------------------------


def test_bundle_layout_and_manifest(tiny_bundle: Path) -> None:
    manifest = read_manifest(tiny_bundle)
    assert manifest.format_version == "1.1"
    assert manifest.embedding_dim == TINY_PROJECTION
    assert manifest.logit_scale == pytest.approx(np.exp(2.6592), rel=1e-6)
    assert manifest.text.max_length == 77 and manifest.text.pad_id == 1
    assert manifest.text.model_max_length == 512
    assert manifest.image.size == 224 and manifest.image.resample == 3
    assert manifest.source["kind"] == "transformers"
    assert {"torch", "transformers", "onnx", "onnxruntime"} <= set(manifest.exported_with)
    for tower in (VISUAL, TEXTUAL):
        assert manifest.precisions(tower) == ["fp32", "int8", "fp16"]
        assert (tiny_bundle / manifest.towers[tower]["fp32"].path).is_file()
    for name in ("manifest.json", "verify.json", "visual/model.onnx", "visual/preprocessor_config.json",
                 "textual/model.onnx", "textual/tokenizer.json"):
        assert (tiny_bundle / name).is_file(), name
    # No absolute paths anywhere in the manifest: the bundle can move.
    text = (tiny_bundle / "manifest.json").read_text()
    assert str(tiny_bundle.parent) not in text and "/tmp" not in text
    # preprocessor_config.json and tokenizer.json agree with the manifest.
    pre = json.loads((tiny_bundle / "visual/preprocessor_config.json").read_text())
    assert pre["crop_size"] == {"height": 224, "width": 224} and pre["resample"] == 3
    tok = json.loads((tiny_bundle / "textual/tokenizer.json").read_text())
    assert tok["truncation"]["max_length"] == 77 and tok["padding"]["pad_id"] == 1


def test_verify_report_passes_with_real_numbers(tiny_bundle: Path) -> None:
    report = json.loads((tiny_bundle / "verify.json").read_text())
    assert report["passed"] is True and report["failures"] == []
    rows = report["rows"]
    assert {r["tower"] for r in rows} == {VISUAL, TEXTUAL}
    assert any(r["shape"].startswith("8x") for r in rows if r["tower"] == TEXTUAL)
    assert any(int(r["shape"].split("x")[1]) >= 300 for r in rows if r["tower"] == TEXTUAL)
    fp32 = [r for r in rows if r["precision"] == "fp32"]
    assert len(fp32) == 2 * len(read_reference(tiny_bundle, read_manifest(tiny_bundle)).cases)  # 2 outputs each
    for row in fp32:
        assert row["max_abs_diff"] <= 1e-4 * max(1.0, row["max_abs_reference"])
        assert row["min_cosine"] >= 0.99999
    # Input-sensitive weights: different inputs must embed clearly apart, or parity proves nothing.
    for tower, cosine in report["max_cosine_between_inputs"].items():
        assert cosine < 0.99, tower


def test_integrity_and_unknown_format(tiny_bundle: Path, tmp_path: Path) -> None:
    assert check_integrity(tiny_bundle) == []
    copy = tmp_path / "moved"
    shutil.copytree(tiny_bundle, copy)  # a moved bundle still works and still checks out
    assert check_integrity(copy) == []
    data = bytearray((copy / "visual/model.onnx").read_bytes())
    data[-10] ^= 0xFF
    (copy / "visual/model.onnx").write_bytes(bytes(data))
    problems = check_integrity(copy)
    assert len(problems) == 1 and "visual/model.onnx" in problems[0] and "sha256" in problems[0]
    result = cli("verify", str(copy), "--integrity")
    assert result.returncode == 1 and "visual/model.onnx: sha256 differs from the manifest" in result.stderr
    assert "re-export or re-download the bundle" in result.stderr
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["format_version"] = "2.0"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="format 2.0 is not supported"):
        read_manifest(copy)


# --- signature, dynamic axes and parity --------------------------------------------------------


def test_signature_names_and_dynamic_axes(tiny_bundle: Path) -> None:
    for tower in (VISUAL, TEXTUAL):
        assert towers.check_signature(tiny_bundle / tower / "model.onnx", tower) == []
        sess = session(tiny_bundle, tower)
        assert [i.name for i in sess.get_inputs()] == list(towers.TOWER_SPECS[tower].inputs)
        assert [o.name for o in sess.get_outputs()] == list(towers.TOWER_SPECS[tower].outputs)
    ids_shape = session(tiny_bundle, TEXTUAL).get_inputs()[0].shape
    assert ids_shape == ["batch", "sequence"]
    assert session(tiny_bundle, TEXTUAL).get_inputs()[0].type == "tensor(int64)"


@pytest.mark.parametrize("batch", [1, 3, 7])
def test_image_tower_batches_match_pytorch(tiny_bundle: Path, transformers_checkpoint: Path, batch: int) -> None:
    model = fresh_model(transformers_checkpoint)
    pixels = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        ref = model.get_image_features(pixel_values=pixels).pooler_output.numpy()
    embeds, norm = session(tiny_bundle, VISUAL).run(None, {"pixel_values": pixels.numpy()})
    assert embeds.shape == (batch, TINY_PROJECTION)
    np.testing.assert_allclose(embeds, ref, atol=1e-4 * max(1, np.abs(ref).max()))
    np.testing.assert_allclose(norm, ref / np.linalg.norm(ref, axis=1, keepdims=True), atol=1e-5)


def test_last_image_layer_computes_the_class_token_alone(transformers_checkpoint: Path, tmp_path: Path) -> None:
    # The pooled output reads one row of the last layer; computing that row alone must give the layer's
    # own numbers, and the exported graph must really skip the other rows (its last MLP sees one row).
    import onnx

    model = fresh_model(transformers_checkpoint)
    size = TINY_VISION["image_size"]
    pixels = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))
    last = model.vision_model.encoder.layers[-1]
    with torch.no_grad():
        outputs = model.vision_model(pixel_values=pixels, output_hidden_states=True)
        whole = outputs.last_hidden_state[:, 0]
        alone = towers.class_token_of_layer(last, outputs.hidden_states[-2])
        another_row = towers.class_token_of_layer(last, outputs.hidden_states[-2].roll(1, dims=1))
    np.testing.assert_allclose(alone.numpy(), whole.numpy(), atol=1e-5 * max(1, whole.abs().max().item()))
    assert not np.allclose(another_row.numpy(), whole.numpy(), atol=1e-3)

    (path,) = towers.export_tower(model, VISUAL, tmp_path / "model.onnx")
    proto = onnx.load(str(path))
    assert "Gemm" not in {node.op_type for node in proto.graph.node}  # every Linear a MatMul, which int8 quantizes
    up_projections = [node.output[0] for node in proto.graph.node if "mlp/fc1/" in node.name and node.op_type == "MatMul"]
    assert len(up_projections) == TINY_VISION["num_hidden_layers"]
    proto.graph.output.extend(onnx.ValueInfoProto(name=name) for name in up_projections)
    onnx.save(proto, str(path))
    pixels = np.zeros((2, 3, TINY_VISION["image_size"], TINY_VISION["image_size"]), np.float32)
    outputs = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(up_projections, {"pixel_values": pixels})
    patches = (TINY_VISION["image_size"] // TINY_VISION["patch_size"]) ** 2
    assert [output.shape[1] for output in outputs] == [patches + 1] * (len(outputs) - 1) + [1]


@pytest.mark.parametrize("sequence", [1, 5, 77, 512])
def test_text_tower_sequences_match_pytorch(tiny_bundle: Path, transformers_checkpoint: Path, sequence: int) -> None:
    model = fresh_model(transformers_checkpoint)
    vocab = model.config.text_config.vocab_size
    gen = torch.Generator().manual_seed(sequence)
    ids = torch.randint(4, vocab - 1, (3, sequence), generator=gen)
    ids[:, 0] = 0
    ids[:, -1] = 2
    mask = torch.ones_like(ids)
    if sequence > 2:  # the last row is padded (pad id 1, mask 0)
        ids[2, sequence // 2:] = 1
        ids[2, sequence // 2 - 1] = 2
        mask[2, sequence // 2:] = 0
    with torch.no_grad():
        ref = model.get_text_features(input_ids=ids, attention_mask=mask).pooler_output.numpy()
    embeds, _ = session(tiny_bundle, TEXTUAL).run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
    np.testing.assert_allclose(embeds, ref, atol=1e-4 * max(1, np.abs(ref).max()))


def test_different_inputs_embed_apart(tiny_bundle: Path) -> None:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tiny_bundle / "textual/tokenizer.json"))
    enc = tok.encode_batch(list(SENTENCES.values())[:6])
    ids = np.array([e.ids for e in enc], dtype=np.int64)
    mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
    _, norm = session(tiny_bundle, TEXTUAL).run(None, {"input_ids": ids, "attention_mask": mask})
    sims = norm @ norm.T
    np.fill_diagonal(sims, 0)
    assert sims.max() < 0.99
    # An off-by-one token id must move the embedding clearly.
    _, shifted = session(tiny_bundle, TEXTUAL).run(None, {"input_ids": np.where(mask == 1, ids + 1, ids),
                                                          "attention_mask": mask})
    assert float(np.min(np.sum(norm * shifted, axis=1))) < 0.99


# --- tokenizer ----------------------------------------------------------------------------------


def test_token_ids_equal_sentencepiece_with_fairseq_offset(tiny_bundle: Path, spm_model: Path) -> None:
    import sentencepiece as spm
    from tokenizers import Tokenizer

    sp = spm.SentencePieceProcessor(model_file=str(spm_model))
    tok = Tokenizer.from_file(str(tiny_bundle / "textual/tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    texts = list(SENTENCES.values()) + ["Emoji 😀🐱 ＡＢＣ１２３", "tabs\tand\nnewlines", "", "   "]
    for text in texts:
        expected = [0] + [(i + 1 if i != sp.unk_id() else 3) for i in sp.encode(text)] + [2]
        assert tok.encode(text).ids == expected, text


# --- both layouts ---------------------------------------------------------------------------------


def test_flagai_layout_converts_to_the_same_model(flagai_checkpoint: Path, transformers_checkpoint: Path) -> None:
    assert sources.detect_layout(flagai_checkpoint) == "flagai"
    assert sources.detect_layout(transformers_checkpoint) == "transformers"
    flag = fresh_model(flagai_checkpoint)
    ref = fresh_model(transformers_checkpoint)
    flag_state, ref_state = flag.state_dict(), ref.state_dict()
    assert flag_state.keys() == ref_state.keys()
    for key in ref_state:
        assert torch.equal(flag_state[key], ref_state[key]), key


def test_flagai_export_equals_transformers_export(flagai_checkpoint: Path, tiny_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "flagai-bundle"
    result = export_bundle(str(flagai_checkpoint), out, ExportOptions())
    assert result.report is not None and result.report.passed
    assert result.manifest.source["kind"] == "flagai"
    assert result.manifest.variant == "custom"  # not one of the published names
    # Tokenizer converted from sentencepiece alone gives the same ids as the checkpoint's tokenizer.json.
    from tokenizers import Tokenizer

    a = Tokenizer.from_file(str(out / "textual/tokenizer.json"))
    b = Tokenizer.from_file(str(tiny_bundle / "textual/tokenizer.json"))
    for text in SENTENCES.values():
        assert a.encode(text).ids == b.encode(text).ids
    pixels = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    got = session(out, VISUAL).run(None, {"pixel_values": pixels})[0]
    want = session(tiny_bundle, VISUAL).run(None, {"pixel_values": pixels})[0]
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_hub_cache_layout_is_used_offline(flagai_checkpoint: Path, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A Hub id resolves through huggingface_hub's cache layout; with the files cached, no network is needed."""
    snapshot = tmp_path / "cache" / "models--BAAI--AltCLIP-m18" / "snapshots" / ("0" * 40)
    shutil.copytree(flagai_checkpoint, snapshot)
    (tmp_path / "cache" / "models--BAAI--AltCLIP-m18" / "refs").mkdir()
    (tmp_path / "cache" / "models--BAAI--AltCLIP-m18" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    resolved = sources.resolve_source("AltCLIP-XLMR-L-m18", cache_dir=tmp_path / "cache")
    assert resolved.kind == "hub" and resolved.repo_id == "BAAI/AltCLIP-m18" and resolved.variant == "AltCLIP-m18"
    assert resolved.path == snapshot
    assert sources.detect_layout(resolved.path) == "flagai"


def test_hub_unreachable_says_how_to_get_the_files(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SourceError) as info:
        sources.resolve_source("m9", cache_dir=tmp_path / "empty")
    message = str(info.value)
    assert "BAAI/AltCLIP-m9" in message and "hf download BAAI/AltCLIP-m9" in message and "\n" not in message
    # The library's own reason comes whole (it used to be cut mid-word at 160 characters).
    cause = info.value.__cause__
    assert cause is not None and " ".join(str(cause).split()) in message


# --- random init ----------------------------------------------------------------------------------


def tiny_architecture(variant: str) -> dict:
    return {
        "text_config": dict(TINY_TEXT, vocab_size=1000),
        "vision_config": dict(TINY_VISION),
        "projection_dim": TINY_PROJECTION,
        "logit_scale_init_value": 4.605170185988092,
    }


def test_random_init_rebuilds_from_seed_and_verifies(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(sources, "architecture", tiny_architecture)
    out = tmp_path / "random"
    # fp32 only: the int8/fp16 gates are tested on the tiny bundle (tests/test_optimize.py).
    result = export_bundle("m18", out, ExportOptions(random_init=True, seed=5, precisions=("fp32",)))
    manifest = result.manifest
    assert manifest.source == {"name": "m18", "kind": "random-init", "seed": 5}
    assert manifest.logit_scale == pytest.approx(100.0, rel=1e-5)
    assert verify_bundle(out).passed  # the stored reference, no torch needed
    assert verify_against_model(out).passed  # rebuilds the reference model from the recorded seed
    # A different seed is a different model: the same check must then fail, loudly.
    other = sources.load_model(sources.resolve_source("m18", random_init=True, seed=6))
    stored = read_reference(out, manifest)
    reference = StoredReference(stored.cases, reference_outputs(other.model, stored.cases), stored.images)
    bad = check_bundle(out, reference, manifest=manifest)
    assert not bad.passed and any("cosine" in f or "max |diff|" in f for f in bad.failures)


def test_known_architectures_say_where_numbers_come_from() -> None:
    for name, variant in KNOWN_VARIANTS.items():
        arch = sources.architecture(name)
        assert arch["text_config"]["vocab_size"] == 250002 and arch["vision_config"]["patch_size"] == 14
        assert variant.dims_source
    assert not KNOWN_VARIANTS["AltCLIP-m18"].dims_certain
    assert "UNCERTAIN" in KNOWN_VARIANTS["AltCLIP-m18"].dims_source


def test_names_resolve() -> None:
    for name in ("m18", "M18", "AltCLIP-XLMR-L-m18", "BAAI/AltCLIP-m18", "AltCLIP-m18"):
        assert canonical_variant(name) == "AltCLIP-m18"
    assert canonical_variant("AltCLIP-XLMR-L") == "AltCLIP"
    assert canonical_variant("m9") == "AltCLIP-m9"


def test_export_options_own_their_defaults_and_checks(tmp_path: Path) -> None:
    assert (ExportOptions().opset, ExportOptions().max_length) == (17, 77)
    for bad in ({"opset": 99}, {"max_length": 2}, {"max_length": 513}, {"precisions": ("bf16",)}):
        with pytest.raises(InputError):
            ExportOptions(**bad)  # type: ignore[arg-type]
    result = cli("export", "m18", "--random-init", "--opset", "99", "-o", str(tmp_path / "x"))
    assert result.returncode == 2 and "opset must be 14..21, not 99" in result.stderr
    assert not (tmp_path / "x").exists()


# --- errors ---------------------------------------------------------------------------------------


def test_unknown_name_lists_known_ones(tmp_path: Path) -> None:
    result = cli("export", "clip-vit-xxl", "--no-verify", "-o", str(tmp_path / "x"))
    assert result.returncode == 1
    assert "unknown model 'clip-vit-xxl'" in result.stderr and "BAAI/AltCLIP-m18" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "x").exists()


def test_missing_and_corrupt_weights_name_the_file(transformers_checkpoint: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(transformers_checkpoint, broken)
    (broken / "model.safetensors").write_bytes(b"this is not a safetensors file")
    with pytest.raises(SourceError, match=r"model\.safetensors: cannot read weights"):
        sources.load_model(sources.resolve_source(str(broken)))
    result = cli("export", str(broken), "-o", str(tmp_path / "out"))
    assert result.returncode == 1 and "model.safetensors" in result.stderr and "Traceback" not in result.stderr
    (broken / "model.safetensors").unlink()
    with pytest.raises(SourceError, match="no weights"):
        sources.load_model(sources.resolve_source(str(broken)))


def test_weights_not_matching_config_are_refused(flagai_checkpoint: Path, tmp_path: Path) -> None:
    broken = tmp_path / "short"
    shutil.copytree(flagai_checkpoint, broken)
    state = torch.load(broken / "pytorch_model.bin", weights_only=True)
    del state["visual_projection.weight"]
    torch.save(state, broken / "pytorch_model.bin")
    with pytest.raises(SourceError, match="1 tensors missing .*visual_projection"):
        sources.load_model(sources.resolve_source(str(broken)))


def test_pickled_code_is_never_executed(flagai_checkpoint: Path, tmp_path: Path) -> None:
    import pickle

    class Evil:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    broken = tmp_path / "evil"
    shutil.copytree(flagai_checkpoint, broken)
    with open(broken / "pytorch_model.bin", "wb") as handle:
        pickle.dump({"x": Evil()}, handle)
    with pytest.raises(SourceError, match="pytorch_model.bin: cannot read weights"):
        sources.load_model(sources.resolve_source(str(broken)))
    assert not (tmp_path / "pwned").exists()


def test_non_empty_output_is_refused_without_overwrite(transformers_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OutputError, match="not empty; pass --overwrite"):
        export_bundle(str(transformers_checkpoint), out, ExportOptions(verify=False))
    assert (out / "keep.txt").read_text() == "mine"
    export_bundle(str(transformers_checkpoint), out, ExportOptions(verify=False, overwrite=True))
    assert not (out / "keep.txt").exists() and (out / "manifest.json").is_file()


def test_failed_export_leaves_nothing_behind(transformers_checkpoint: Path, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    calls = []
    real = towers.export_tower

    def fail_on_second(model, tower, destination, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(tower)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C half-way
        return real(model, tower, destination, **kwargs)

    monkeypatch.setattr(towers, "export_tower", fail_on_second)
    with pytest.raises(KeyboardInterrupt):
        export_bundle(str(transformers_checkpoint), tmp_path / "half", ExportOptions(verify=False))
    assert list(tmp_path.iterdir()) == []


def test_verification_failure_fails_the_export(transformers_checkpoint: Path, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from altclip_onnx.export import verify

    real = verify.reference_outputs

    def skewed(model, cases):  # type: ignore[no-untyped-def]
        outputs = real(model, cases)
        outputs[0]["image_embeds"] = outputs[0]["image_embeds"] * 1.01
        return outputs

    monkeypatch.setattr(verify, "reference_outputs", skewed)
    with pytest.raises(VerificationError, match="ONNX does not match PyTorch: visual fp32 image 1 b1 image_embeds"):
        export_bundle(str(transformers_checkpoint), tmp_path / "bad", ExportOptions())
    assert not (tmp_path / "bad").exists()


def test_export_cli_end_to_end(transformers_checkpoint: Path, tmp_path: Path) -> None:
    # A relative -o, from another working directory, as README's own commands use it.
    (tmp_path / "work").mkdir()
    result = cli("export", str(transformers_checkpoint), "-o", "../cli", cwd=tmp_path / "work")
    assert result.returncode == 0, result.stderr
    assert "wrote ../cli (" in result.stdout
    assert "verification passed" in result.stdout and "max|diff|" in result.stdout
    texts = tmp_path / "texts.txt"
    texts.write_text("a photo of a cat\nEin Foto einer Rakete\n", encoding="utf-8")
    result = cli("verify", str(tmp_path / "cli"), "--model", str(transformers_checkpoint), "--texts", str(texts))
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "cli" / "verify.json").read_text())
    assert report["passed"] is True and "PyTorch" in report["your_data"]["reference"]
    # Against PyTorch, every precision (fp32 too) is checked on the user's texts.
    assert {r["precision"] for r in report["rows"] if r["case"].startswith("your texts")} == {"fp32", "int8"}


def test_every_bundle_file_gets_the_usual_mode(transformers_checkpoint: Path, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """onnx writes external weights (model.onnx.data) as 0600; a bundle copied to a server must be readable."""
    monkeypatch.setattr(towers, "EXTERNAL_DATA_THRESHOLD", 0)  # the tiny towers get external weights too
    old = os.umask(0o022)
    try:
        result = export_bundle(str(transformers_checkpoint), tmp_path / "b",
                               ExportOptions(precisions=("fp32",), optimize=False, verify=False))
    finally:
        os.umask(old)
    data = [f for f in result.manifest.files if f.endswith(".onnx.data")]
    assert sorted(data) == ["textual/model.onnx.data", "visual/model.onnx.data"]
    for path in [result.bundle, *result.bundle.rglob("*")]:
        assert path.stat().st_mode & 0o777 == (0o755 if path.is_dir() else 0o644), path


def test_a_read_only_destination_is_refused_before_loading(transformers_checkpoint: Path, read_only_folder: Path,
                                                           monkeypatch) -> None:  # type: ignore[no-untyped-def]
    def no_load(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("the model was loaded before the destination was checked")

    monkeypatch.setattr(sources, "load_model", no_load)
    from altclip_onnx.export import build

    monkeypatch.setattr(build, "load_model", no_load)
    with pytest.raises(OutputError, match=rf"{read_only_folder}: cannot write the bundle there \((read-only file "
                                          r"system|permission denied)\)"):
        export_bundle(str(transformers_checkpoint), read_only_folder / "bundle", ExportOptions())
