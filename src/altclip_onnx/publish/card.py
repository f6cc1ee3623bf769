"""The model card ``altclip-onnx push`` writes: what the bundle is, how accurate each variant measured,
and how to load it in Python, from the command line, in transformers.js and in immich.

Every figure comes from the manifest (what verify measured at export); nothing is invented. Standard
library only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..bundle import TEXTUAL, TOWERS, VISUAL, Manifest
from ..models import display_name, languages
from ..precisions import PRECISIONS, TRANSFORMERS_JS_DTYPES

TOWER_TITLES = {VISUAL: "image", TEXTUAL: "text"}


def _front_matter(manifest: Manifest) -> str:
    lines = ["---", "library_name: altclip-onnx", "pipeline_tag: zero-shot-image-classification",
             "tags:", *(f"- {t}" for t in ("onnx", "clip", "altclip", "multilingual", "feature-extraction",
                                            "transformers.js", "immich"))]
    codes = languages(manifest.variant)
    if codes:
        lines += ["language:", *(f"- {code}" for code in codes)]
    repo = manifest.source.get("repo_id")
    if manifest.source.get("kind") == "hub" and repo:
        lines += ["base_model:", f"- {repo}"]
    lines.append("---")
    return "\n".join(lines)


def _size(manifest: Manifest, files: tuple[str, ...]) -> str:
    total = sum(manifest.files[f].size for f in files if f in manifest.files)
    return f"{total / 1e6:,.1f} MB" if total >= 1e5 else f"{total / 1e3:,.1f} kB"


def _cos(value: Any) -> str:
    return "–" if value is None else f"{float(value):.5f}"


def variants_table(manifest: Manifest) -> str:
    rows = ["| tower | precision | file | size | min cosine | mean cosine | zero-shot top-1 agreement | gate |",
            "|---|---|---|---:|---:|---:|---:|---|"]
    for tower in TOWERS:
        for name in manifest.precisions(tower):
            variant = manifest.towers[tower][name]
            acc = variant.accuracy
            agreement = (acc.get("zero_shot_top1_agreement") or {}).get("agreement")
            gate = PRECISIONS[name].gate
            gate_text = ", ".join(part for part in (
                f"min ≥ {gate.min_cosine}" if gate.min_cosine else "",
                f"mean ≥ {gate.mean_cosine}" if gate.mean_cosine else "",
                f"agreement ≥ {gate.zero_shot_agreement:.0%}" if gate.zero_shot_agreement else "") if part)
            rows.append(f"| {TOWER_TITLES[tower]} | {name} | `{variant.path}` | {_size(manifest, variant.files)} | "
                        f"{_cos(acc.get('min_cosine'))} | {_cos(acc.get('mean_cosine'))} | "
                        f"{'–' if agreement is None else f'{agreement:.0%}'} | {gate_text} |")
    return "\n".join(rows)


def model_card(manifest: Manifest, repo_id: str, *, verify_report: Path | None = None) -> str:
    """The README.md of a Hub repository holding this bundle."""
    name = display_name(manifest.variant, str(manifest.source.get("name") or ""))
    source = manifest.source
    if source.get("kind") == "hub" and source.get("repo_id"):
        origin = f"[{source['repo_id']}](https://huggingface.co/{source['repo_id']})"
    elif source.get("kind") == "random-init":
        origin = f"random weights (seed {source.get('seed')}): **the embeddings mean nothing**; for testing only"
    else:
        origin = f"a local {source.get('kind', '?')} checkpoint named `{source.get('name', '?')}`"
    codes = languages(manifest.variant)
    passed = None
    if verify_report is not None and verify_report.is_file():
        try:
            passed = bool(json.loads(verify_report.read_text(encoding="utf-8")).get("passed"))
        except (OSError, ValueError, AttributeError):
            passed = None
    ref = f"hf://{repo_id}"
    folder = repo_id.split("/")[-1]
    dtypes = ", ".join(f'`"{TRANSFORMERS_JS_DTYPES[p]}"` ({p})' for p in manifest.precisions(TEXTUAL))
    exported = ", ".join(f"{k} {v}" for k, v in manifest.exported_with.items())
    sections = [
        _front_matter(manifest),
        f"# {name} (ONNX, altclip-onnx bundle)",
        f"{name}, BAAI's multilingual CLIP, exported to ONNX by [altclip-onnx](https://pypi.org/project/altclip-onnx/) "
        f"and verified against PyTorch. Runs with onnxruntime, tokenizers, numpy and Pillow: no PyTorch.",
        "\n".join(line for line in [
            f"- **Source**: {origin}",
            f"- **Languages**: {' '.join(codes)}" if codes else "- **Languages**: those of the source checkpoint",
            f"- **Embeddings**: {manifest.embedding_dim}-d, image and text in one space; "
            f"logit scale {manifest.logit_scale:g}",
            f"- **Text**: XLM-R ids, truncated at {manifest.text.max_length} tokens (the graph takes up to "
            f"{manifest.text.model_max_length}); **images**: {manifest.image.size}×{manifest.image.size}, "
            "CLIP preprocessing (bicubic resize of the shortest edge, centre crop, normalize)",
            f"- **Weights fingerprint**: `{manifest.fingerprint()}` (the same for every precision)",
            f"- **Exported with**: {exported}" if exported else "",
            f"- **Verification at export**: {'passed' if passed else 'failed' if passed is False else 'see verify.json'}"
            " (`verify.json`); every file's sha256 is in `manifest.json` and is checked before it runs",
        ] if line),
        "## Variants and their measured accuracy",
        "Cosine to the PyTorch fp32 reference (`get_image_features` / `get_text_features`) over the verification "
        "cases (photos, 18-language sentences, batches 1–8, a 512-token text); zero-shot agreement is top-1 "
        "agreement with fp32 where fp32 is confident. A variant that misses its gate fails the export.",
        variants_table(manifest),
        "## Python",
        "```sh\npip install 'altclip-onnx[hub]'\n```",
        "```python\nfrom altclip_onnx import Encoder\n\n"
        f'enc = Encoder("{ref}")            # downloaded into the Hugging Face cache, checked against manifest.json\n'
        'texts = enc.encode_texts(["一只猫", "a photo of a cat", "Eine Katze"])   # float32 [3, D], L2-normalized\n'
        'images = enc.encode_images(["cat.jpg"])                                # float32 [1, D]\n'
        'print(enc.classify(["cat.jpg"], ["猫", "狗", "rocket"]))                  # probabilities\n```',
        "`precision=\"auto\"` (default) runs int8 on CPUs and fp16 on CUDA when present; `\"fp32\"` gives the reference.",
        "## Command line",
        f"```sh\naltclip-onnx classify {ref} cat.jpg --labels 猫,狗,car\n"
        f"altclip-onnx embed {ref} photos/ -o vectors.npy\n"
        f"altclip-onnx index {ref} ~/Pictures --db photos.idx && altclip-onnx search --db photos.idx \"海边的日落\"\n```",
        "## transformers.js",
        f"```sh\npip install 'altclip-onnx[hub,convert]'\n"
        f"altclip-onnx convert {ref} --to transformers.js -o {folder}-transformers-js\n```",
        "```js\nimport { AutoTokenizer, CLIPTextModelWithProjection, CLIPVisionModelWithProjection, AutoProcessor, RawImage }\n"
        "  from '@huggingface/transformers';\n"
        f"const dir = '/path/to/{folder}-transformers-js';\n"
        "const tokenizer = await AutoTokenizer.from_pretrained(dir);\n"
        "const textModel = await CLIPTextModelWithProjection.from_pretrained(dir, { dtype: 'fp32' });\n"
        "const { text_embeds } = await textModel(tokenizer(['一只猫', 'a cat'], { padding: true, truncation: true }));\n"
        "const processor = await AutoProcessor.from_pretrained(dir);\n"
        "const visionModel = await CLIPVisionModelWithProjection.from_pretrained(dir, { dtype: 'fp32' });\n"
        "const { image_embeds } = await visionModel(await processor(await RawImage.read('cat.jpg')));\n```",
        f"dtypes: {dtypes}. Two known differences from this bundle's own tokenizer (and from sentencepiece and "
        f"transformers): transformers.js turns a zero-width joiner (U+200D, inside family emoji) into a space, and "
        f"it truncates texts longer than {manifest.text.max_length} tokens by cutting the end, `</s>` included. "
        "Its image processor resizes slightly differently from transformers' (and ours): for identical image "
        "vectors, feed pixel values made by altclip-onnx (`Encoder.preprocess`).",
        "## immich",
        f"```sh\naltclip-onnx convert {ref} --to immich -o {folder}-immich\n```",
        "The folder has immich's layout (`config.json`, `visual/model.onnx` with an input `image`, "
        "`textual/model.onnx` with int32 `input_ids`/`attention_mask`, tokenizer and preprocessing files). immich "
        "loads models by name from its own list (`immich-app/<name>` on the Hub), so a new model enters immich "
        "through a pull request there; the folder is what such a repository holds.",
    ]
    return "\n\n".join(s for s in sections if s) + "\n"

