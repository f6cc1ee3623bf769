"""``altclip-onnx tune``: time every provider and precision that passes the bundle's check here, per tower,
and record the fastest in the machine profile (:mod:`.profile`) that ``precision="auto"`` follows.

A candidate is a (tower, provider, precision). Each is loaded and first held against the PyTorch reference
the bundle carries (the first-use check, :func:`~altclip_onnx.verification.selfcheck.ensure_verified`); one
that fails is reported and never timed or chosen. The verified ones of a tower are timed interleaved (one
call of each in turn, after warm-up; medians) at the batch sizes that matter: one and eight images, one and
32 texts of 16 tokens. The choice per tower is the candidate with the highest geometric mean of its items/s
over those batch sizes, so neither single requests nor batches are sacrificed to the other.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..bundle import TEXTUAL, TOWER_INPUTS, TOWERS, VISUAL, Manifest, read_manifest
from ..errors import BundleError, InputError, VerificationError
from ..precisions import parse_precisions
from ..verification.reference import has_reference
from ..verification.selfcheck import ensure_verified
from .bench import about, interleaved_medians, make_inputs, session_runner, stop_on_ctrl_c
from .profile import machine, save_profile
from .providers import available_providers, make_session, resolve_provider_name

#: The batch sizes timed per tower: a single request and a typical batch.
TUNED_BATCHES: dict[str, tuple[int, ...]] = {VISUAL: (1, 8), TEXTUAL: (1, 32)}
UNITS = {VISUAL: "images/s", TEXTUAL: "texts/s"}


@dataclass(frozen=True)
class TuneSettings:
    """``providers`` / ``precisions`` empty: every provider available here / every variant in the bundle.
    ``budget_s``: seconds per tower and batch size after which timing stops at the end of a round (at least
    three rounds run): full-size fp32 towers at batch 8 take seconds a call on small CPUs."""

    repeats: int = 10
    budget_s: float = 60.0
    threads: int | None = None
    tokens: int = 16
    providers: tuple[str, ...] = ()
    precisions: tuple[str, ...] = ()

    @classmethod
    def parse(cls, providers: tuple[str, ...] = (), precisions: tuple[str, ...] = (), **values: Any) -> TuneSettings:
        """Settings from command-line values: provider names short or full, precisions as ``"fp32,int8"``."""
        names = tuple(resolve_provider_name(p) for part in providers for p in part.split(",") if p.strip())
        return cls(providers=names, precisions=parse_precisions(precisions) if precisions else (), **values)


@dataclass
class Candidate:
    """One row of the result: a candidate at one batch size (``items_per_s`` None when not timed)."""

    tower: str
    provider: str
    precision: str
    batch: int
    verified: bool
    items_per_s: float | None = None


@dataclass
class TuneResult:
    bundle: Path
    settings: TuneSettings
    machine: dict[str, Any]
    candidates: list[Candidate]
    chosen: dict[str, dict[str, str]]
    refused: dict[str, str] = field(default_factory=dict)  # "tower provider precision" -> why it was not timed
    saved: Path | None = None

    def profile(self) -> dict[str, Any]:
        """What the machine profile records (and ``tune --json`` prints, with the machine and where it went)."""
        return {"chosen": self.chosen, "candidates": [asdict(c) for c in self.candidates], "refused": self.refused,
                "threads": self.settings.threads, "tuned": time.strftime("%Y-%m-%dT%H:%M:%S%z")}

    def to_json(self) -> str:
        return json.dumps({**self.profile(), "bundle": str(self.bundle), "machine": self.machine,
                           "saved": str(self.saved) if self.saved else None}, indent=2)

    def format_markdown(self) -> str:
        cpu = self.machine["cpu"]
        lines = [f"{self.bundle}: {cpu['model'] or cpu['machine']} [{', '.join(cpu['features']) or 'features unknown'}], "
                 f"{', '.join(self.machine['runtime'])}, threads: {self.settings.threads or 'default'}", ""]
        for tower in TOWERS:
            batches = TUNED_BATCHES[tower]
            header = ["provider", "precision", "verified here", *(f"batch {b} ({UNITS[tower]})" for b in batches), ""]
            lines += [f"**{tower} tower**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            pairs = dict.fromkeys((c.provider, c.precision) for c in self.candidates if c.tower == tower)
            for provider, precision in pairs:
                rows = {c.batch: c for c in self.candidates if (c.tower, c.provider, c.precision) == (tower, provider, precision)}
                first = next(iter(rows.values()))
                speeds = [f"{rows[b].items_per_s:.2f}" if b in rows and rows[b].items_per_s else "-" for b in batches]
                mark = "chosen" if self.chosen.get(tower) == {"provider": provider, "precision": precision} else ""
                lines.append(f"| {provider} | {precision} | {'yes' if first.verified else 'no'} | "
                             f"{' | '.join(speeds)} | {mark} |")
            lines.append("")
        for what, why in self.refused.items():
            lines.append(f"- not timed: {what}: {why}")
        where = f"recorded in {self.saved}" if self.saved else "not recorded (no writable place)"
        lines.append(f"{where}; precision auto (Encoder, every command, serve) follows it on this machine")
        return "\n".join(lines)


def _score(speeds: list[float]) -> float:
    return math.exp(sum(math.log(s) for s in speeds) / len(speeds))


def choose(candidates: list[Candidate]) -> dict[str, dict[str, str]]:
    """Per tower, the verified (provider, precision) with the highest geometric mean of items/s over the
    tuned batch sizes; :class:`VerificationError` when a tower has none."""
    chosen = {}
    for tower in TOWERS:
        timed: dict[tuple[str, str], list[float]] = {}
        for c in candidates:
            if c.tower == tower and c.verified and c.items_per_s:
                timed.setdefault((c.provider, c.precision), []).append(c.items_per_s)
        if not timed:
            raise VerificationError(f"no {tower} candidate passes the bundle's check on this machine; "
                                    "run 'altclip-onnx verify' to see why")
        provider, precision = max(timed, key=lambda pair: _score(timed[pair]))
        chosen[tower] = {"provider": provider, "precision": precision}
    return chosen


def tune_bundle(bundle: str | os.PathLike[str], settings: TuneSettings = TuneSettings(), *,
                progress: Callable[[str], None] = lambda message: None, save: bool = True) -> TuneResult:
    """Load, check and time every candidate; record the choice (unless ``save=False``) and return it all."""
    import onnxruntime

    from ..hub import locate_bundle

    bundle = locate_bundle(bundle)
    manifest = read_manifest(bundle)
    if not has_reference(manifest):
        raise BundleError(f"{bundle}: carries no PyTorch reference, so no candidate can be verified on this machine "
                          "and tune would choose blind; re-export the bundle with this altclip-onnx")
    present = available_providers()
    providers = list(settings.providers) or present
    for provider in providers:
        if provider not in present:
            raise InputError(f"provider {provider} is not available here (available: {', '.join(present)}); "
                             "run 'altclip-onnx doctor' to see how to install it")
    run_options = onnxruntime.RunOptions()
    rows: list[Candidate] = []
    refused: dict[str, str] = {}
    with stop_on_ctrl_c(run_options):
        for tower in TOWERS:  # one tower's sessions at a time: all of a full-size bundle's would take 10 GB
            runners, tower_rows, tower_refused = _load_and_check(bundle, manifest, tower, providers, settings,
                                                                 run_options, progress)
            _time(tower, runners, tower_rows, manifest, settings, progress)
            rows += tower_rows
            refused.update(tower_refused)
            del runners
    result = TuneResult(bundle, settings, machine(), rows, choose(rows), refused)
    if save:
        result.saved = save_profile(bundle, manifest, result.profile(), result.machine)
    return result


Runner = Callable[[dict[str, Any]], Any]


def _load_and_check(bundle: Path, manifest: Manifest, tower: str, providers: list[str], settings: TuneSettings,
                    run_options: Any, progress: Callable[[str], None]
                    ) -> tuple[dict[tuple[str, str, str], Runner], list[Candidate], dict[str, str]]:
    """Every candidate of ``tower`` loaded and held against the reference: runners of the verified ones, a
    row per candidate and batch size, and why each refused one was refused."""
    wanted = [(tower, provider, precision) for provider in providers for precision in manifest.precisions(tower)
              if not settings.precisions or precision in settings.precisions]
    progress(f"{tower} tower: loading {len(wanted)} candidates ({len(providers)} providers) and checking each "
             "against the bundle's PyTorch reference; how long the timing takes follows one call of each "
             "(Ctrl-C stops)")
    runners: dict[tuple[str, str, str], Runner] = {}
    rows: list[Candidate] = []
    refused: dict[str, str] = {}
    for tower, provider, precision in wanted:
        name = f"{tower} {provider} {precision}"
        try:
            # No spinning: candidates take turns in one process (see providers.session_options).
            session = make_session(bundle / manifest.towers[tower][precision].path, provider=provider,
                                   threads=settings.threads, spinning=False)
            if session.get_providers()[0] != provider:
                raise BundleError(f"onnxruntime runs it on {session.get_providers()[0]} instead")
            ensure_verified(bundle, manifest, tower, precision, session)
        except (BundleError, VerificationError) as exc:
            refused[name] = str(exc)
            progress(f"{name}: refused ({exc})")
        else:
            runners[(tower, provider, precision)] = session_runner(session, list(TOWER_INPUTS[tower]), run_options)
        rows += [Candidate(tower, provider, precision, batch, name not in refused) for batch in TUNED_BATCHES[tower]]
    return runners, rows, refused


def _time(tower: str, runners: dict[tuple[str, str, str], Runner], rows: list[Candidate], manifest: Manifest,
          settings: TuneSettings, progress: Callable[[str], None]) -> None:
    """Fill in items/s of ``tower``'s verified rows: per batch size, interleaved medians."""
    if not runners:
        return

    def inputs(batch: int) -> dict[str, Any]:
        return make_inputs(tower, batch, image_size=manifest.image.size, tokens=settings.tokens,
                           vocab_size=manifest.text.vocab_size)

    one = inputs(1)
    single_s = 0.0  # one call of each candidate at batch 1
    for run in runners.values():
        run(one)  # the first call pays for allocations; the second tells the time
        started = time.perf_counter()
        run(one)
        single_s += time.perf_counter() - started
    batches = TUNED_BATCHES[tower]
    # per batch size: warm-up + repeats rounds (fewer past the budget), each call about batch times a single call
    estimate = sum(single_s * batch * (1 + min(settings.repeats, max(3, settings.budget_s // max(single_s * batch, 1e-9))))
                   for batch in batches)
    progress(f"timing {len(runners)} verified candidates at {len(batches)} batch sizes: {about(estimate)}")
    for step, batch in enumerate(batches, 1):
        progress(f"[{step}/{len(batches)}] the {tower} tower at batch {batch}: {len(runners)} candidates")
        data = inputs(batch)
        medians = interleaved_medians({key: (lambda run=run: run(data)) for key, run in runners.items()},
                                      repeats=settings.repeats, budget_s=settings.budget_s)
        for row in rows:
            key = (row.tower, row.provider, row.precision)
            if key in medians and row.batch == batch:
                row.items_per_s = batch / medians[key]
