"""Verification: ONNX Runtime against the PyTorch reference, on real photos and multilingual text.

The reference must come from a model no exporter has touched (the TorchScript exporter was seen
to change a traced model's later outputs): ``export`` computes it before exporting, ``verify``
loads the model afresh (or rebuilds a ``--random-init`` model from its recorded seed).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle import TEXTUAL, TOKENIZER, TOWER_OUTPUTS, VERIFY_REPORT, VISUAL, Manifest, read_manifest
from ..errors import SourceError, VerificationError
from ..files import write_json
from ..precisions import PRECISION_NAMES, PRECISIONS, Gate

log = logging.getLogger(__name__)


# One sentence in each of AltCLIP-m18's 18 languages (and so in m9's and AltCLIP's).
SENTENCES = {
    "en": "A photo of an astronaut in an orange suit.",
    "zh": "一只猫躺在沙发上睡觉。",
    "ja": "海辺に沈む夕日の写真です。",
    "th": "ภาพถ่ายของจรวดที่กำลังขึ้นสู่ท้องฟ้า",
    "ko": "테이블 위에 놓인 커피 한 잔",
    "hi": "समुद्र तट पर सूर्यास्त की एक तस्वीर",
    "uk": "Чашка кави на дерев'яному столі.",
    "ar": "صورة لقطة نائمة على الأريكة",
    "tr": "Gökyüzüne yükselen bir roketin fotoğrafı.",
    "vi": "Một tách cà phê trên bàn gỗ.",
    "pl": "Zdjęcie kota śpiącego na kanapie.",
    "nl": "Een foto van een astronaut in een oranje pak.",
    "pt": "Uma xícara de café sobre a mesa.",
    "it": "Un gatto che dorme sul divano.",
    "es": "Una foto de un cohete despegando.",
    "de": "Ein Foto eines Sonnenuntergangs am Strand.",
    "fr": "Une tasse de café sur une table en bois.",
    "ru": "Фотография ракеты, взлетающей в небо.",
}
SAMPLE_PHOTOS = ("astronaut.jpg", "chelsea.jpg", "coffee.jpg", "rocket.jpg")
UNRELATED_IMAGES = (0, 1, 2, 3, 7)  # in sample_images(): the photos and the synthetic pattern


@dataclass
class Case:
    tower: str
    name: str
    inputs: dict[str, np.ndarray]

    @property
    def shape(self) -> str:
        """batch for images, batch x sequence for text."""
        first = next(iter(self.inputs.values()))
        return "x".join(str(d) for d in first.shape[: 1 if self.tower == VISUAL else 2])


def sample_images() -> list[Any]:
    """The shipped photos plus variations (flips, crops, a synthetic pattern): eight distinct images."""
    from PIL import Image, ImageOps

    folder = resources.files("altclip_onnx.export") / "samples"
    photos = []
    for name in SAMPLE_PHOTOS:
        with (folder / name).open("rb") as handle:
            photos.append(Image.open(handle).convert("RGB"))
    y, x = np.mgrid[0:240, 0:320]
    pattern = np.stack([(x * 0.8) % 256, (y * 1.1) % 256, ((x + y) * 0.5) % 256], axis=-1).astype(np.uint8)
    extra = [
        ImageOps.mirror(photos[0]),
        photos[1].crop((0, 0, photos[1].width // 2, photos[1].height)),
        ImageOps.flip(photos[2]),
        Image.fromarray(pattern),
    ]
    return photos + extra


def verification_cases(tokenizer_json: str, manifest: Manifest) -> list[Case]:
    """Batches 1..8, padded and unpadded, short and long (300+ tokens), in 18 languages."""
    from ..runtime.images import preprocess_batch
    from ..runtime.text import load_tokenizer, tokenize

    pixels = preprocess_batch(sample_images(), manifest.image)
    cases = [
        Case(VISUAL, "photo b1", {"pixel_values": pixels[:1]}),
        Case(VISUAL, "photos b3", {"pixel_values": pixels[1:4]}),
        Case(VISUAL, "photos b8", {"pixel_values": pixels}),
    ]
    sentences = list(SENTENCES.values())
    long_text = " ".join(sentences * 4)

    def encode(texts: list[str], max_length: int) -> dict[str, np.ndarray]:
        return tokenize(load_tokenizer(tokenizer_json, manifest.text, max_length), texts)

    short, longest = manifest.text.max_length, manifest.text.model_max_length
    cases += [
        Case(TEXTUAL, "short b1 unpadded", encode(sentences[:1], short)),
        Case(TEXTUAL, "18 languages b8 padded", encode(sentences[1:9], short)),
        Case(TEXTUAL, "18 languages b8 padded", encode(sentences[9:17], short)),
        Case(TEXTUAL, "long b1 unpadded", encode([long_text], longest)),
        Case(TEXTUAL, "long+short b2 padded", encode([long_text, sentences[17]], longest)),
    ]
    for case in cases:
        if case.tower == TEXTUAL and "long" in case.name and case.inputs["input_ids"].shape[1] < 300:
            log.warning("long verification text is only %d tokens", case.inputs["input_ids"].shape[1])
    return cases


def reference_outputs(model: Any, cases: list[Case]) -> list[dict[str, np.ndarray]]:
    """The PyTorch reference: get_image_features / get_text_features, and their L2-normalized forms."""
    import torch

    results = []
    with torch.no_grad():
        for case in cases:
            if case.tower == VISUAL:
                out = model.get_image_features(pixel_values=torch.from_numpy(case.inputs["pixel_values"]))
            else:
                out = model.get_text_features(
                    input_ids=torch.from_numpy(case.inputs["input_ids"]),
                    attention_mask=torch.from_numpy(case.inputs["attention_mask"]),
                )
            embeds = out.pooler_output.float()
            norm = torch.nn.functional.normalize(embeds, dim=-1)
            names = TOWER_OUTPUTS[case.tower]
            results.append({names[0]: embeds.numpy(), names[1]: norm.numpy()})
    return results


def onnx_outputs(
    bundle: Path, manifest: Manifest, precision: str, cases: list[Case]
) -> tuple[list[dict[str, np.ndarray]], dict[str, float]]:
    """Run the cases through one precision, one tower's session at a time (to keep peak memory low).

    Also returns, per tower, the lowest cosine between an input run alone and the same input inside a
    batch (rows of every batched case run again one by one): vectors in an index or an API response must
    not depend on what else was in the batch.
    """
    from ..runtime.providers import make_session

    results: list[dict[str, np.ndarray]] = [{} for _ in cases]
    invariance: dict[str, float] = {}
    for tower in (VISUAL, TEXTUAL):
        session = make_session(bundle / manifest.towers[tower][precision].path, provider="cpu")
        normalized = TOWER_OUTPUTS[tower][1]
        lowest = 1.0
        for i, case in enumerate(cases):
            if case.tower != tower:
                continue
            results[i] = dict(zip(TOWER_OUTPUTS[tower], session.run(list(TOWER_OUTPUTS[tower]), case.inputs)))
            rows = len(next(iter(case.inputs.values())))
            for row in range(rows if rows > 1 else 0):
                vector = session.run([normalized], single_row(case.inputs, row))[0]
                lowest = min(lowest, float(cosine_rows(vector, results[i][normalized][row : row + 1])[0]))
        invariance[tower] = lowest
        del session
    return results, invariance


def single_row(inputs: dict[str, np.ndarray], row: int) -> dict[str, np.ndarray]:
    """One row of a batched input as a batch of one; a text without the padding the batch gave it."""
    one = {name: value[row : row + 1] for name, value in inputs.items()}
    if "attention_mask" in one:
        length = int(one["attention_mask"].sum())  # right-padded: the real tokens come first
        one = {name: value[:, :length] for name, value in one.items()}
    return one


@dataclass
class Row:
    tower: str
    precision: str
    case: str
    shape: str
    output: str
    max_abs_diff: float
    max_abs_reference: float
    min_cosine: float
    mean_cosine: float
    passed: bool


@dataclass
class VerifyReport:
    rows: list[Row] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    fused_ops: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)  # tower -> precision -> op -> n
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.failures

    def summary(self, tower: str, precision: str) -> dict[str, float]:
        rows = [r for r in self.rows if r.tower == tower and r.precision == precision]
        if not rows:
            return {}
        return {
            "max_abs_diff": max(r.max_abs_diff for r in rows),
            "min_cosine": min(r.min_cosine for r in rows),
            "mean_cosine": float(np.mean([r.mean_cosine for r in rows])),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "failures": self.failures,
            "gates": {name: dataclasses.asdict(p.gate) for name, p in PRECISIONS.items()},
            "rows": [dataclasses.asdict(r) for r in self.rows],
            "fused_ops": self.fused_ops,
            **self.extra,
        }

    def format_table(self) -> str:
        header = f"{'tower':<8} {'prec':<5} {'case':<24} {'shape':<7} {'output':<18} {'max|diff|':>10} {'min cos':>10}  ok"
        lines = [header, "-" * len(header)]
        for r in self.rows:
            lines.append(
                f"{r.tower:<8} {r.precision:<5} {r.case:<24} {r.shape:<7} {r.output:<18} "
                f"{r.max_abs_diff:>10.2e} {r.min_cosine:>10.7f}  {'yes' if r.passed else 'NO'}"
            )
        for tower, by_precision in self.fused_ops.items():
            for precision, ops in by_precision.items():
                if ops:
                    listed = ", ".join(f"{op} {n}" for op, n in sorted(ops.items()))
                    lines.append(f"fused ops, {tower} {precision}: {listed}")
        for precision, zs in self.extra.get("zero_shot_agreement", {}).items():
            rate = "n/a (no confident case)" if zs["agreement"] is None else f"{zs['agreement']:.1%}"
            lines.append(
                f"zero-shot top-1 agreement with fp32, {precision}: {rate} over {zs['confident_cases']} confident "
                f"of {zs['all_cases']} cases ({zs['agreement_all_cases']:.1%} over all)"
            )
        for precision, towers in self.extra.get("batch_invariance", {}).items():
            listed = ", ".join(f"{tower} {value:.7f}" for tower, value in towers.items())
            lines.append(f"same input alone and inside a batch, {precision}: min cosine {listed}")
        sensitivity = self.extra.get("max_cosine_between_inputs", {})
        if sensitivity:
            listed = ", ".join(f"{tower} {value:.4f}" for tower, value in sensitivity.items())
            lines.append(f"largest cosine between unrelated inputs (reference): {listed}")
        lines += [f"FAILED: {f}" for f in self.failures]
        lines.append("verification passed" if self.passed else "verification FAILED")
        return "\n".join(lines)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    denom = np.linalg.norm(a64, axis=-1) * np.linalg.norm(b64, axis=-1)
    return np.sum(a64 * b64, axis=-1) / np.maximum(denom, 1e-30)


def compare(
    cases: list[Case], reference: list[dict[str, np.ndarray]], actual: list[dict[str, np.ndarray]], precision: str
) -> tuple[list[Row], list[str]]:
    gate: Gate = PRECISIONS[precision].gate
    rows, failures = [], []
    for case, ref, got in zip(cases, reference, actual):
        for output, ref_value in ref.items():
            value = got[output]
            if value.shape != ref_value.shape or not np.all(np.isfinite(value)):
                failures.append(f"{case.tower} {precision} {case.name} {output}: shape {value.shape} or non-finite values")
                continue
            max_abs = float(np.max(np.abs(value.astype(np.float64) - ref_value)))
            ref_max = float(np.max(np.abs(ref_value)))
            cos = cosine_rows(value, ref_value)
            ok = True
            if gate.max_abs_rel is not None and max_abs > gate.max_abs_rel * max(1.0, ref_max):
                ok = False
                failures.append(
                    f"{case.tower} {precision} {case.name} {output}: max |diff| {max_abs:.3g} > "
                    f"{gate.max_abs_rel:g} x max(1, {ref_max:.3g})"
                )
            if gate.min_cosine is not None and float(cos.min()) < gate.min_cosine:
                ok = False
                failures.append(
                    f"{case.tower} {precision} {case.name} {output}: cosine {cos.min():.6f} < {gate.min_cosine}"
                )
            rows.append(
                Row(case.tower, precision, case.name, case.shape, output, max_abs, ref_max,
                    float(cos.min()), float(cos.mean()), ok)
            )
    if gate.mean_cosine is not None:
        for tower in (VISUAL, TEXTUAL):
            values = [r.mean_cosine for r in rows if r.tower == tower]
            if values and float(np.mean(values)) < gate.mean_cosine:
                failures.append(f"{tower} {precision}: mean cosine {np.mean(values):.5f} < {gate.mean_cosine}")
    return rows, failures


def input_sensitivity(reference: list[dict[str, np.ndarray]], cases: list[Case]) -> dict[str, float]:
    """Largest cosine between the reference embeddings of unrelated inputs, per tower.

    A model that gives every input nearly the same embedding would make every parity check pass;
    the report shows this number so such a model is noticed. Unrelated inputs: the four photos and
    the synthetic pattern (not the flipped or cropped copies), and the sentences in 18 languages.
    """
    pools: dict[str, list[np.ndarray]] = {VISUAL: [], TEXTUAL: []}
    for ref, case in zip(reference, cases):
        if case.name == "photos b8":
            pools[VISUAL].append(ref["image_embeds_norm"][list(UNRELATED_IMAGES)])
        elif case.name.startswith("18 languages"):
            pools[TEXTUAL].append(ref["text_embeds_norm"])
    result = {}
    for tower, parts in pools.items():
        if not parts:
            continue
        stacked = np.concatenate(parts).astype(np.float64)
        sims = stacked @ stacked.T
        np.fill_diagonal(sims, -1.0)
        result[tower] = float(sims.max())
    return result


def check_bundle(
    bundle: Path,
    reference: list[dict[str, np.ndarray]],
    cases: list[Case],
    *,
    manifest: Manifest | None = None,
    precisions: list[str] | None = None,
    progress: Callable[[str], None] = lambda step: None,
) -> VerifyReport:
    """Run every requested precision of the bundle on the cases and compare with the reference."""
    from .towers import check_signature

    manifest = manifest or read_manifest(bundle)
    report = VerifyReport()
    wanted = precisions or sorted(
        set(manifest.precisions(VISUAL)) | set(manifest.precisions(TEXTUAL)), key=PRECISION_NAMES.index
    )
    for tower in (VISUAL, TEXTUAL):
        for precision in wanted:
            variant = manifest.towers[tower].get(precision)
            if variant is None:
                report.failures.append(f"{tower}: the bundle has no {precision} variant")
                continue
            report.failures += check_signature(bundle / variant.path, tower)
            report.fused_ops.setdefault(tower, {})[precision] = dict(variant.fused_ops)
    if report.failures:
        return report
    agreement = {}
    invariance: dict[str, dict[str, float]] = {}
    for precision in wanted:
        progress(f"running the {precision} graphs on {len(cases)} cases, and each batched input alone")
        outputs, invariance[precision] = onnx_outputs(bundle, manifest, precision, cases)
        rows, failures = compare(cases, reference, outputs, precision)
        report.rows += rows
        report.failures += failures
        needed = PRECISIONS[precision].gate.batch_invariance
        for tower, lowest in invariance[precision].items():
            if lowest < needed:
                report.failures.append(f"{tower} {precision}: an input alone and inside a batch give cosine "
                                       f"{lowest:.6f} (< {needed}): vectors depend on the batch")
        if precision != "fp32":
            agreement[precision] = zero_shot_agreement(reference, outputs, cases, manifest.logit_scale)
            rate = agreement[precision]["agreement"]
            needed = PRECISIONS[precision].gate.zero_shot_agreement
            if rate is not None and needed is not None and rate < needed:
                report.failures.append(
                    f"{precision}: zero-shot top-1 agrees with fp32 on {rate:.1%} of confident cases (< {needed:.0%})"
                )
    report.extra["max_cosine_between_inputs"] = input_sensitivity(reference, cases)
    report.extra["zero_shot_agreement"] = agreement
    report.extra["batch_invariance"] = invariance
    return report


ZERO_SHOT_MARGIN = 0.05  # fp32's top label must lead the runner-up by this much probability to count


def zero_shot_agreement(
    reference: list[dict[str, np.ndarray]], actual: list[dict[str, np.ndarray]], cases: list[Case], logit_scale: float
) -> dict[str, Any]:
    """Zero-shot top-1 of each image over the multilingual sentences as labels: variant vs fp32 reference.

    Near-ties (fp32's top label leads by less than ZERO_SHOT_MARGIN) are excluded; with none left the
    agreement is None (reported as n/a), as happens with random weights.
    """
    from ..runtime.encoder import softmax  # the same probabilities the runtime's classify gives

    def probabilities(outputs: list[dict[str, np.ndarray]]) -> np.ndarray:
        images = np.concatenate([o["image_embeds_norm"] for o, c in zip(outputs, cases) if c.name == "photos b8"])
        texts = np.concatenate([o["text_embeds_norm"] for o, c in zip(outputs, cases) if c.name.startswith("18 ")])
        return softmax(logit_scale * images.astype(np.float64) @ texts.T.astype(np.float64))

    ref, got = probabilities(reference), probabilities(actual)
    top2 = np.sort(ref, axis=1)[:, -2:]
    confident = (top2[:, 1] - top2[:, 0]) >= ZERO_SHOT_MARGIN
    agree = ref.argmax(axis=1) == got.argmax(axis=1)
    counted = int(confident.sum())
    return {
        "confident_cases": counted,
        "all_cases": int(len(ref)),
        "agreement": float(agree[confident].mean()) if counted else None,
        "agreement_all_cases": float(agree.mean()),
    }


def verify_bundle(
    bundle: str | Path,
    *,
    model_source: str | None = None,
    precisions: list[str] | None = None,
    cache_dir: str | None = None,
    progress: Callable[[str], None] = lambda step: None,
) -> VerifyReport:
    """``altclip-onnx verify``: load the reference afresh, compare, write verify.json, raise on failure."""
    from .sources import resolve_source, load_model

    folder = Path(bundle)
    manifest = read_manifest(folder)
    source = manifest.source
    if model_source is None and source.get("kind") == "random-init":
        resolved = resolve_source(source["name"], random_init=True, seed=int(source.get("seed", 0)))
    else:
        if model_source is None and source.get("kind") in ("transformers", "flagai") and not Path(source["name"]).is_dir():
            raise SourceError(
                f"{folder}: exported from a local checkpoint folder named {source['name']!r}; "
                "pass it with --model PATH to verify against it"
            )
        resolved = resolve_source(model_source or source.get("repo_id") or source["name"], cache_dir=cache_dir)
    progress(f"loading the reference model {resolved.name} ({resolved.kind})")
    loaded = load_model(resolved, max_length=manifest.text.max_length)
    tokenizer_json = (folder / TOKENIZER).read_text(encoding="utf-8")
    cases = verification_cases(tokenizer_json, manifest)
    progress("computing the PyTorch reference")
    reference = reference_outputs(loaded.model, cases)
    del loaded
    report = check_bundle(folder, reference, cases, manifest=manifest, precisions=precisions, progress=progress)
    write_report(folder, report)
    raise_if_failed(report, folder)
    return report


def write_report(bundle: Path, report: VerifyReport) -> None:
    write_json(bundle / VERIFY_REPORT, report.to_json())


def raise_if_failed(report: VerifyReport, bundle: Path) -> None:
    if not report.passed:
        first = report.failures[0]
        more = f" (and {len(report.failures) - 1} more)" if len(report.failures) > 1 else ""
        raise VerificationError(f"{bundle}: ONNX does not match PyTorch: {first}{more}", report)
