"""Run a bundle's graphs on the verification cases and hold them against the reference, gate by gate.

The reference is PyTorch's outputs: stored in the bundle (:mod:`.reference`), or computed afresh by the
export side. Gates are declared once, in :mod:`altclip_onnx.precisions`; this module applies them:

- per row and output: cosine and max |diff| to the reference (``min_cosine``, ``max_abs_rel``), and the
  mean cosine per tower (``mean_cosine``);
- batch invariance: rows of the ``alone`` cases run again one at a time (those of the ``quick`` cases once more
  in a batch of the size the runtime side runs: :func:`full_batch`) and must give the same vector;
- zero-shot agreement: each image's top label over the sentences (as labels) must agree with the
  reference's wherever the reference is confident. The gate counts at least ``zero_shot_min_cases``
  confident images and fails only when the disagreements are too many to be chance for a variant that
  truly agrees on ``zero_shot_agreement`` of them (binomial tail below ``zero_shot_significance``), so no
  single image decides it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..bundle import ATTENTION_MASK, INPUT_IDS, TEXTUAL, TOWER_OUTPUTS, TOWERS, VISUAL, tower_output
from ..precisions import PRECISIONS, Gate, gate_for
from ..runtime.images import IMAGE_BATCH_SIZE
from ..runtime.text import TEXT_BATCH_SIZE, pads_texts, unpadded_batches
from .reference import Case, StoredReference

Outputs = list[dict[str, np.ndarray]]

IMAGE, TEXT = tower_output(VISUAL, normalized=True), tower_output(TEXTUAL, normalized=True)  # what zero-shot compares
ZERO_SHOT_MARGIN = 0.05  # the reference's top label must lead the runner-up by this much probability to count


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    denom = np.linalg.norm(a64, axis=-1) * np.linalg.norm(b64, axis=-1)
    return np.sum(a64 * b64, axis=-1) / np.maximum(denom, 1e-30)


def single_row(inputs: dict[str, np.ndarray], row: int) -> dict[str, np.ndarray]:
    """One row of a batched input as a batch of one; a text without the padding the batch gave it."""
    one = {name: value[row : row + 1] for name, value in inputs.items()}
    if ATTENTION_MASK in one:
        length = int(one[ATTENTION_MASK].sum())  # right-padded: the real tokens come first
        one = {name: value[:, :length] for name, value in one.items()}
    return one


def equal_length_batch(one: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    """A text alone (``one``, no padding) first, then ``size - 1`` texts of its length made by rotating its inner
    tokens: a batch to hold it in on a runtime that batches texts only by length (:func:`pads_texts`)."""
    ids = one[INPUT_IDS][0]
    inner = ids[1:-1]
    mates = [np.concatenate([ids[:1], np.roll(inner, shift), ids[-1:]]) for shift in range(1, size)]
    return {INPUT_IDS: np.stack([ids, *mates]), ATTENTION_MASK: np.ones((size, len(ids)), dtype=one[ATTENTION_MASK].dtype)}


def run_batch(session: Any, tower: str, names: list[str], inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Outputs ``names`` for a batch, run the way the runtime side runs one on ``session``: texts regrouped by
    length, unpadded, where the session does not pad texts."""
    if tower != TEXTUAL or pads_texts(session):
        return session.run(names, inputs)
    size = len(inputs[INPUT_IDS])
    outputs: list[np.ndarray] = []
    for rows, batch in unpadded_batches(inputs, size):
        for position, value in enumerate(session.run(names, batch)):
            if len(outputs) == position:
                outputs.append(np.empty((size, *value.shape[1:]), dtype=value.dtype))
            outputs[position][rows] = value
    return outputs


BATCH_SIZES = {VISUAL: IMAGE_BATCH_SIZE, TEXTUAL: TEXT_BATCH_SIZE}


def full_batch(inputs: dict[str, np.ndarray], tower: str, pad_id: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """A batch of the size the runtime side runs (``BATCH_SIZES``) made of a case's rows over and over, and which
    case row each of its rows is. Texts get an odd padded length: with 32 texts, their class tokens (the rows the
    vectors come from) then fall on every row position of a 32-row GEMM tile. onnxruntime 1.21-1.24's int8 GEMM
    on AMX CPUs got the last row of each such tile wrong (for some widths): an 8-row case, or an even length,
    never showed it, while the Encoder's own batches did."""
    size = len(next(iter(inputs.values())))
    rows = np.arange(BATCH_SIZES[tower]) % size
    batch = {name: value[rows] for name, value in inputs.items()}
    if tower == TEXTUAL and batch[INPUT_IDS].shape[1] % 2 == 0:
        batch = {INPUT_IDS: np.pad(batch[INPUT_IDS], ((0, 0), (0, 1)), constant_values=pad_id),
                 ATTENTION_MASK: np.pad(batch[ATTENTION_MASK], ((0, 0), (0, 1)), constant_values=0)}
    return batch, rows


def run_cases(session: Any, tower: str, cases: list[Case], *, pad_id: int) -> tuple[Outputs, float]:
    """Outputs of ``tower``'s cases (an empty dict for the other tower's), and the lowest cosine between a row
    of an ``alone`` case run by itself and the same row in its batch, or, for a ``quick`` case, in a batch of the
    runtime side's size (:func:`full_batch`) (1.0 when none ran). Every row: which padded lengths a runtime
    computes differently alone is its own business (OpenVINO with its bf16 hint gave the same vector for the
    first row of the first text batch and not for four others). On a session that batches texts only by
    length, each text is held in a batch of its length instead (:func:`equal_length_batch`), as the runtime
    side runs it. ``pad_id``: the bundle's text padding id."""
    names = list(TOWER_OUTPUTS[tower])
    normalized = names[1]
    results: Outputs = [{} for _ in cases]
    lowest = 1.0
    by_length = tower == TEXTUAL and not pads_texts(session)
    for i, case in enumerate(cases):
        if case.tower != tower:
            continue
        results[i] = dict(zip(names, run_batch(session, tower, names, case.inputs)))
        if not case.alone or case.size < 2:
            continue
        alone = []
        for row in range(case.size):
            one = single_row(case.inputs, row)
            vector = session.run([normalized], one)[0]
            alone.append(vector[0])
            lowest = min(lowest, float(cosine_rows(vector, results[i][normalized][row : row + 1])[0]))
            if by_length:
                mates = TEXT_BATCH_SIZE if case.quick else case.size
                batched = session.run([normalized], equal_length_batch(one, mates))[0]
                lowest = min(lowest, float(cosine_rows(vector, batched[:1])[0]))
        if case.quick and not by_length:  # quick cases only: 32 copies of the long texts would cost minutes
            batch, rows = full_batch(case.inputs, tower, pad_id)
            vectors = session.run([normalized], batch)[0]
            lowest = min(lowest, float(cosine_rows(vectors, np.stack(alone)[rows]).min()))
    return results, lowest


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
    provider: str | None = None  # what ran the graphs, when it changes a gate (precisions.gate_for)

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
            "gates": {name: dataclasses.asdict(gate_for(name, self.provider)) for name in PRECISIONS},
            "rows": [dataclasses.asdict(r) for r in self.rows],
            "fused_ops": self.fused_ops,
            **self.extra,
        }

    def format_table(self) -> str:
        width = max([24, *(len(r.case) for r in self.rows)])
        header = (f"{'tower':<8} {'prec':<5} {'case':<{width}} {'shape':<7} {'output':<18} {'max|diff|':>10} "
                  f"{'min cos':>10}  ok")
        lines = [header, "-" * len(header)]
        for r in self.rows:
            lines.append(
                f"{r.tower:<8} {r.precision:<5} {r.case:<{width}} {r.shape:<7} {r.output:<18} "
                f"{r.max_abs_diff:>10.2e} {r.min_cosine:>10.7f}  {'yes' if r.passed else 'NO'}"
            )
        for tower, by_precision in self.fused_ops.items():
            for precision, ops in by_precision.items():
                if ops:
                    listed = ", ".join(f"{op} {n}" for op, n in sorted(ops.items()))
                    lines.append(f"fused ops, {tower} {precision}: {listed}")
        for precision, zs in self.extra.get("zero_shot_agreement", {}).items():
            lines.append(f"zero-shot top-1 agreement, {precision}: {describe_agreement(zs)}")
        for precision, towers in self.extra.get("batch_invariance", {}).items():
            listed = ", ".join(f"{tower} {value:.7f}" for tower, value in towers.items())
            lines.append(f"same input alone and inside a batch, {precision}: min cosine {listed}")
        sensitivity = self.extra.get("max_cosine_between_inputs", {})
        if sensitivity:
            listed = ", ".join(f"{tower} {value:.4f}" for tower, value in sensitivity.items())
            lines.append(f"largest cosine between unrelated inputs (reference): {listed}")
        own = self.extra.get("your_data")
        if own:
            lines.append(f"your data: {own['reference']}")
        where = self.extra.get("where")
        if where:
            lines.append(f"checked on: {where}")
        lines += [f"FAILED: {f}" for f in self.failures]
        lines.append("verification passed" if self.passed else "verification FAILED")
        return "\n".join(lines)


def describe_agreement(zs: dict[str, Any]) -> str:
    n, agree = zs["confident_cases"], zs["agreeing"]
    counted = f"{agree} of {n} confident images agree ({zs['all_cases']} images)"
    if not zs["gated"]:
        return f"{counted}; not gated: fewer than {zs['min_cases']} confident images"
    return f"{counted}; fails above {zs['allowed_disagreements']} disagreements"


def compare(cases: list[Case], reference: Outputs, actual: Outputs, precision: str,
            gate: Gate | None = None) -> tuple[list[Row], list[str]]:
    """Rows and failures of the per-row gates (cosine, max |diff|) and the per-tower mean cosine; ``gate``:
    the precision's own unless given."""
    gate = gate or PRECISIONS[precision].gate
    rows, failures = [], []
    for case, ref, got in zip(cases, reference, actual):
        if not got:
            continue
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
                failures.append(f"{case.tower} {precision} {case.name} {output}: max |diff| {max_abs:.3g} > "
                                f"{gate.max_abs_rel:g} x max(1, {ref_max:.3g})")
            if gate.min_cosine is not None and float(cos.min()) < gate.min_cosine:
                ok = False
                failures.append(f"{case.tower} {precision} {case.name} {output}: cosine {cos.min():.6f} < "
                                f"{gate.min_cosine}")
            rows.append(Row(case.tower, precision, case.name, case.shape, output, max_abs, ref_max,
                            float(cos.min()), float(cos.mean()), ok))
    if gate.mean_cosine is not None:
        for tower in TOWERS:
            values = [r.mean_cosine for r in rows if r.tower == tower]
            if values and float(np.mean(values)) < gate.mean_cosine:
                failures.append(f"{tower} {precision}: mean cosine {np.mean(values):.5f} < {gate.mean_cosine}")
    return rows, failures


def allowed_disagreements(n: int, agreement: float, significance: float) -> int:
    """The most disagreements among ``n`` that are still likely (tail probability >= ``significance``) for a
    variant that truly disagrees on ``1 - agreement`` of the cases: one more fails the gate."""
    rate = 1.0 - agreement
    if rate <= 0.0:
        return 0
    tail = 1.0  # P(X >= k) for X ~ Binomial(n, rate), from k = 0 on
    for k in range(1, n + 1):
        tail -= math.comb(n, k - 1) * rate ** (k - 1) * (1.0 - rate) ** (n - k + 1)
        if tail < significance:
            return k - 1
    return n


def zero_shot_agreement(cases: list[Case], reference: Outputs, actual: Outputs, logit_scale: float,
                        gate: Gate) -> dict[str, Any]:
    """Top-1 of each image over the sentences as labels, the variant's against the reference's (see the module)."""
    def probabilities(outputs: Outputs) -> np.ndarray:
        images = np.concatenate([o[IMAGE] for o, c in zip(outputs, cases) if c.tower == VISUAL and c.zero_shot])
        texts = np.concatenate([o[TEXT] for o, c in zip(outputs, cases) if c.tower == TEXTUAL and c.zero_shot])
        logits = logit_scale * images.astype(np.float64) @ texts.T.astype(np.float64)
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        return exp / exp.sum(axis=1, keepdims=True)

    ref, got = probabilities(reference), probabilities(actual)
    top2 = np.sort(ref, axis=1)[:, -2:]
    confident = (top2[:, 1] - top2[:, 0]) >= ZERO_SHOT_MARGIN
    agree = ref.argmax(axis=1) == got.argmax(axis=1)
    n = int(confident.sum())
    needed = gate.zero_shot_agreement or 0.0
    allowed = allowed_disagreements(n, needed, gate.zero_shot_significance)
    return {
        "confident_cases": n,
        "agreeing": int(agree[confident].sum()),
        "all_cases": int(len(ref)),
        "agreement": float(agree[confident].mean()) if n else None,
        "agreement_all_cases": float(agree.mean()),
        "min_cases": gate.zero_shot_min_cases,
        "gated": n >= gate.zero_shot_min_cases,
        "allowed_disagreements": allowed,
    }


def input_sensitivity(reference: StoredReference) -> dict[str, float]:
    """Largest cosine between the reference embeddings of unrelated inputs, per tower.

    A model that gives every input nearly the same embedding would make every parity check pass; the
    report shows this number so such a model is noticed. Unrelated: the distinct images (the shipped
    photos and the synthetic patterns, not their transformed copies) and the sentences.
    """
    images = {row: out[IMAGE][j] for case, out in zip(reference.cases, reference.outputs)
              if case.tower == VISUAL for j, row in enumerate(case.rows)}
    pools = {
        VISUAL: [images[row] for row in reference.distinct_images if row in images],
        TEXTUAL: [v for case, out in zip(reference.cases, reference.outputs)
                  if case.tower == TEXTUAL and case.zero_shot for v in out[TEXT]],
    }
    result = {}
    for tower, vectors in pools.items():
        if len(vectors) < 2:
            continue
        stacked = np.stack(vectors).astype(np.float64)
        sims = stacked @ stacked.T
        np.fill_diagonal(sims, -1.0)
        result[tower] = float(sims.max())
    return result


def check_precision(
    reference: StoredReference,
    precision: str,
    session_for: Callable[[str], Any],
    *,
    logit_scale: float,
    towers: tuple[str, ...] = TOWERS,
    quick: bool = False,
    provider: str | None = None,
    pad_id: int,
) -> tuple[list[Row], list[str], dict[str, float], dict[str, Any] | None]:
    """One precision against the reference: (rows, failures, lowest batch-invariance cosine per tower,
    zero-shot agreement or None).

    ``session_for(tower)`` gives the session to run. ``quick``: only the ``quick`` cases, each row also alone
    (the first-use check); no zero-shot check (too few images to gate on). ``provider``: what runs the sessions,
    when it changes the gate (:func:`~altclip_onnx.precisions.gate_for`). ``pad_id``: the bundle's text padding id.
    """
    gate = gate_for(precision, provider)
    indices = [i for i, c in enumerate(reference.cases) if c.tower in towers and (c.quick or not quick)]
    cases = [reference.cases[i] for i in indices]
    expected = [reference.outputs[i] for i in indices]
    outputs: Outputs = [{} for _ in cases]
    invariance: dict[str, float] = {}
    for tower in towers:
        ran, invariance[tower] = run_cases(session_for(tower), tower, cases, pad_id=pad_id)
        outputs = [o or r for o, r in zip(outputs, ran)]
    rows, failures = compare(cases, expected, outputs, precision, gate)
    for tower, lowest in invariance.items():
        if lowest < gate.batch_invariance:
            failures.append(f"{tower} {precision}: an input alone and inside a batch give cosine {lowest:.6f} "
                            f"(< {gate.batch_invariance}): vectors depend on the batch")
    agreement = None
    labelled = {c.tower for c in cases if c.zero_shot}
    if gate.zero_shot_agreement is not None and not quick and labelled == set(TOWERS):
        agreement = zero_shot_agreement(cases, expected, outputs, logit_scale, gate)
        disagreements = agreement["confident_cases"] - agreement["agreeing"]
        if agreement["gated"] and disagreements > agreement["allowed_disagreements"]:
            failures.append(f"{precision}: zero-shot top-1 disagrees with the reference on {disagreements} of "
                            f"{agreement['confident_cases']} confident images (more than "
                            f"{agreement['allowed_disagreements']} allowed for {gate.zero_shot_agreement:.0%} agreement)")
    return rows, failures, invariance, agreement
