"""``altclip-onnx bench``: time a bundle's own variants side by side (runtime side, no torch).

Timings on shared machines drift by tens of percent between runs, so variants are timed
interleaved (one run of each in turn, repeated) and reported as medians after warm-up; ratios
between variants of one run are what to quote. Peak memory is measured in a fresh process per
variant (load it, embed one batch of 8) because a process's peak RSS never goes down.

A run says how long it will take before the timing starts, and Ctrl-C stops it within a graph node
(:func:`stop_on_ctrl_c`), not after the onnxruntime call under way (tens of seconds for a batch of 32
through a full-size fp32 tower).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle import ATTENTION_MASK, INPUT_IDS, PIXEL_VALUES, TEXTUAL, TOWER_INPUTS, VISUAL, Manifest, read_manifest
from ..errors import InputError
from ..files import ensure_writable_folder, write_bytes

RSS_BATCH = 8


@dataclass
class Candidate:
    """One thing to time: a name, a tower, a runner taking (batch, tokens) inputs, and its files."""

    name: str
    tower: str
    run: Callable[[dict[str, np.ndarray]], Any]
    size_bytes: int = 0
    rss_command: list[str] | None = None  # a command printing the peak RSS in bytes of a fresh process
    load_seconds: float = 0.0  # how long loading it took (a fresh process for the peak RSS loads it again)


@dataclass
class Result:
    name: str
    tower: str
    latency_ms: float  # batch 1, median
    throughput: dict[str, float] = field(default_factory=dict)  # batch size -> items/s
    peak_rss_mb: float | None = None
    size_mb: float = 0.0


def make_inputs(
    tower: str, batch: int, *, image_size: int = 224, tokens: int = 16, vocab_size: int = 1000, seed: int = 0
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    if tower == VISUAL:
        return {PIXEL_VALUES: rng.standard_normal((batch, 3, image_size, image_size)).astype(np.float32)}
    ids = rng.integers(4, min(vocab_size - 1, 1000), (batch, tokens)).astype(np.int64)
    ids[:, 0], ids[:, -1] = 0, 2
    return {INPUT_IDS: ids, ATTENTION_MASK: np.ones_like(ids)}


def interleaved_medians(
    runners: dict[str, Callable[[], Any]], *, repeats: int, warmup: int = 1, budget_s: float | None = None
) -> dict[str, float]:
    """Median seconds per call of each runner, timed in turn so drifts hit all of them alike."""
    for run in runners.values():
        for _ in range(warmup):
            run()
    times: dict[str, list[float]] = {name: [] for name in runners}
    started = time.perf_counter()
    for i in range(repeats):
        for name, run in runners.items():
            t0 = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t0)
        if budget_s is not None and i >= 2 and time.perf_counter() - started > budget_s:
            break
    return {name: statistics.median(values) for name, values in times.items()}


def measure(
    candidates: list[Candidate],
    *,
    batch_sizes: tuple[int, ...] = (8, 32),
    tokens: int = 16,
    image_size: int = 224,
    vocab_size: int = 1000,
    repeats: int = 10,
    budget_s: float | None = 120.0,
    progress: Callable[[str], None] = lambda message: None,
) -> list[Result]:
    """Latency at batch 1 and throughput at each batch size, interleaved per tower; then peak RSS.

    Before timing, one call of each candidate at batch 1 gives an estimate of the whole run, which
    ``progress`` reports (a full-size bundle takes minutes)."""
    results = {c.name + c.tower: Result(c.name, c.tower, 0.0, size_mb=c.size_bytes / 1e6) for c in candidates}
    first = {}
    for c in candidates:
        inputs = make_inputs(c.tower, 1, image_size=image_size, tokens=tokens, vocab_size=vocab_size)
        t0 = time.perf_counter()
        c.run(inputs)
        first[c.name + c.tower] = time.perf_counter() - t0
    estimate = sum(
        # batch 1: warm-up + repeats; larger batches: warm-up + max(3, repeats // 3), roughly linear in size
        t * ((1 + repeats) + sum(b * (1 + max(3, repeats // 3)) for b in batch_sizes)) for t in first.values()
    )
    if budget_s is not None:
        estimate = min(estimate, (1 + len(batch_sizes)) * 2 * budget_s)
    # each peak-memory probe: a fresh interpreter (about a second), loading the graph, one batch of RSS_BATCH
    estimate += sum(1.0 + c.load_seconds + RSS_BATCH * first[c.name + c.tower] for c in candidates if c.rss_command)
    memory = ", then their peak memory in fresh processes" if any(c.rss_command for c in candidates) else ""
    progress(f"timing {len(candidates)} graphs at batch 1 and {', '.join(map(str, batch_sizes))}{memory}: "
             f"{about(estimate)} (Ctrl-C stops)")
    for tower in (VISUAL, TEXTUAL):
        group = [c for c in candidates if c.tower == tower]
        if not group:
            continue
        for batch in (1, *batch_sizes):
            inputs = make_inputs(tower, batch, image_size=image_size, tokens=tokens, vocab_size=vocab_size)
            progress(f"timing the {tower} tower at batch {batch}")
            medians = interleaved_medians(
                {c.name: (lambda c=c: c.run(inputs)) for c in group},
                repeats=repeats if batch == 1 else max(3, repeats // 3),
                budget_s=budget_s,
            )
            for c in group:
                result = results[c.name + tower]
                if batch == 1:
                    result.latency_ms = medians[c.name] * 1000
                else:
                    result.throughput[str(batch)] = batch / medians[c.name]
    for c in candidates:
        if c.rss_command:
            progress(f"peak memory of {c.name} ({c.tower})")
            results[c.name + c.tower].peak_rss_mb = peak_rss_mb(c.rss_command)
    return list(results.values())


def about(seconds: float) -> str:
    """A duration for people: "about 40 s", "about 6 min"."""
    return f"about {max(1, round(seconds))} s" if seconds < 90 else f"about {round(seconds / 60)} min"


@contextlib.contextmanager
def stop_on_ctrl_c(run_options: Any) -> Iterator[None]:
    """Ctrl-C ends the onnxruntime call under way after its current node, not when the call returns.

    Python runs its SIGINT handler only between calls into C, so a thread woken by the signal
    (``signal.set_wakeup_fd``) sets ``run_options.terminate``; the call then fails, and the runner made by
    :func:`session_runner` raises KeyboardInterrupt. Outside the main thread (no signals there) it does nothing.
    """
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    try:
        previous = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    except ValueError:  # not the main thread
        reader.close()
        writer.close()
        yield
        return

    def watch() -> None:
        with contextlib.suppress(OSError):
            while data := reader.recv(64):
                if signal.SIGINT in data:
                    run_options.terminate = True

    watcher = threading.Thread(target=watch, name="bench-ctrl-c", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        signal.set_wakeup_fd(previous)
        writer.close()  # the watcher reads the end of the stream and returns
        watcher.join(timeout=1)
        reader.close()


def session_runner(session: Any, names: list[str], run_options: Any) -> Callable[[dict[str, np.ndarray]], Any]:
    """Run ``session`` on the ``names`` of an inputs dict; a call ended by :func:`stop_on_ctrl_c` is Ctrl-C."""

    def run(inputs: dict[str, np.ndarray]) -> Any:
        try:
            return session.run(None, {k: inputs[k] for k in names}, run_options)
        except Exception as exc:
            if run_options.terminate:
                raise KeyboardInterrupt from exc
            raise

    return run


def peak_rss_mb(command: list[str]) -> float | None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        return None
    return int(done.stdout.strip().splitlines()[-1]) / 1e6


def rss_probe(model_path: str, tower: str, threads: int | None, image_size: int = 224, vocab_size: int = 1000) -> int:
    """In a fresh process: load one graph, embed a batch of 8, return the peak RSS in bytes."""
    import resource

    from .providers import make_session

    session = make_session(model_path, provider="cpu", threads=threads)
    session.run(None, make_inputs(tower, RSS_BATCH, image_size=image_size, vocab_size=vocab_size))
    # Linux keeps ru_maxrss across fork and exec, so a probe started by a large parent would report the
    # parent's peak; VmHWM belongs to this process's own address space.
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib * 1024 if sys.platform != "darwin" else kib


def bundle_candidates(bundle: Path, *, precisions: list[str] | None, threads: int | None, provider: str | None,
                      run_options: Any = None, progress: Callable[[str], None] = lambda message: None
                      ) -> list[Candidate]:
    """A candidate per tower and variant of ``bundle``; ``run_options`` (onnxruntime.RunOptions) go with every
    call, so :func:`stop_on_ctrl_c` can end one."""
    import onnxruntime

    from .providers import make_session

    manifest = read_manifest(bundle)
    run_options = run_options if run_options is not None else onnxruntime.RunOptions()
    chosen = [(tower, precision) for tower in (VISUAL, TEXTUAL) for precision in manifest.precisions(tower)
              if not precisions or precision in precisions]
    size = sum(manifest.files[f].size for tower, precision in chosen for f in manifest.towers[tower][precision].files)
    progress(f"loading {len(chosen)} graphs ({size / 1e6:.0f} MB); how long the run takes follows one call of each")
    candidates = []
    for tower, precision in chosen:
        variant = manifest.towers[tower][precision]
        started = time.perf_counter()
        # No spinning: variants take turns in one process (see providers.session_options).
        session = make_session(bundle / variant.path, provider=provider, threads=threads, spinning=False)
        candidates.append(
            Candidate(
                name=precision,
                tower=tower,
                run=session_runner(session, list(TOWER_INPUTS[tower]), run_options),
                size_bytes=sum(manifest.files[f].size for f in variant.files),
                rss_command=rss_command(bundle / variant.path, tower, threads, manifest.image.size,
                                        manifest.text.vocab_size),
                load_seconds=time.perf_counter() - started,
            )
        )
    return candidates


def rss_command(
    model_path: Path, tower: str, threads: int | None, image_size: int = 224, vocab_size: int = 1000
) -> list[str]:
    return [sys.executable, "-m", "altclip_onnx.runtime.bench", "--rss-probe",
            str(model_path), tower, str(threads or 0), str(image_size), str(vocab_size)]


def machine_facts(threads: int | None) -> dict[str, Any]:
    import onnxruntime

    from .doctor import cpu_features, cpu_model

    return {
        "cpu": cpu_model(),
        "cpu_features": cpu_features(),
        "logical_cpus": os.cpu_count(),
        "threads": threads or "onnxruntime default (one per physical core)",
        "onnxruntime": onnxruntime.__version__,
        "python": platform.python_version(),
    }


def format_markdown(results: list[Result], *, baseline: str | None = None, batch_sizes: tuple[int, ...] = (8, 32)) -> str:
    """One table per tower; speed-up columns are relative to ``baseline`` (default: the first row)."""
    lines = []
    for tower in (VISUAL, TEXTUAL):
        rows = [r for r in results if r.tower == tower]
        if not rows:
            continue
        base = next((r for r in rows if r.name == baseline), rows[0])
        unit = "images/s" if tower == VISUAL else "texts/s"
        header = ["variant", "batch 1 latency (ms)", f"x vs {base.name}"]
        header += [f"batch {b} ({unit})" for b in batch_sizes]
        header += ["peak RSS (MB)", "file size (MB)", "RSS / size"]
        lines += [f"**{tower} tower**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for r in rows:
            cells = [r.name, f"{r.latency_ms:.1f}", f"{base.latency_ms / r.latency_ms:.2f}x" if r.latency_ms else "-"]
            cells += [f"{r.throughput.get(str(b), float('nan')):.2f}" for b in batch_sizes]
            rss = f"{r.peak_rss_mb:.0f}" if r.peak_rss_mb else "-"
            ratio = f"{r.peak_rss_mb / r.size_mb:.2f}" if r.peak_rss_mb and r.size_mb else "-"
            cells += [rss, f"{r.size_mb:.0f}" if r.size_mb else "-", ratio]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def machine_line(facts: dict[str, Any]) -> str:
    """The header line every table carries: int8 speed depends on VNNI/AMX, so say which CPU it was."""
    features = ", ".join(facts.get("cpu_features") or []) or "instruction sets unknown"
    return (f"{facts['cpu']} [{features}], {facts['logical_cpus']} logical CPUs, threads: {facts['threads']}, "
            f"onnxruntime {facts['onnxruntime']}")


@dataclass(frozen=True)
class BenchSettings:
    batch_sizes: tuple[int, ...] = (8, 32)
    tokens: int = 16
    repeats: int = 10
    threads: int | None = None
    provider: str | None = None
    precisions: tuple[str, ...] = ()  # empty: every variant in the bundle

    @classmethod
    def parse(cls, batch_sizes: str, **values: Any) -> BenchSettings:
        """Settings with ``batch_sizes`` given as text, "8,32"."""
        try:
            sizes = tuple(int(b) for b in batch_sizes.split(",") if b.strip())
        except ValueError as exc:
            raise InputError(f"--batch-sizes: {batch_sizes!r} is not a comma-separated list of numbers") from exc
        if not sizes or min(sizes) < 1:
            raise InputError(f"--batch-sizes: {batch_sizes!r}: give one or more batch sizes of at least 1")
        return cls(batch_sizes=sizes, **values)


@dataclass
class BenchResult:
    bundle: Path
    manifest: Manifest
    settings: BenchSettings
    machine: dict[str, Any]
    results: list[Result]

    def format_markdown(self) -> str:
        head = (f"{self.bundle}: {self.manifest.variant}, {machine_line(self.machine)}, "
                f"text {self.settings.tokens} tokens\n")
        return head + "\n" + format_markdown(self.results, baseline="fp32", batch_sizes=self.settings.batch_sizes)

    def to_json(self) -> str:
        return json.dumps({"bundle": str(self.bundle), "variant": self.manifest.variant, "machine": self.machine,
                           "settings": asdict(self.settings), "results": [asdict(r) for r in self.results]},
                          indent=2)


def bench_bundle(bundle: str | os.PathLike[str], settings: BenchSettings = BenchSettings(), *,
                 output: Path | None = None, progress: Callable[[str], None] = lambda message: None) -> BenchResult:
    """Time a bundle's variants (``altclip-onnx bench``); with ``output``, also write the JSON there
    (its folder is checked for writability first, not after minutes of timing)."""
    from ..hub import locate_bundle

    bundle = locate_bundle(bundle)
    if output is not None:
        ensure_writable_folder(output.absolute().parent)
    import onnxruntime

    manifest = read_manifest(bundle)
    run_options = onnxruntime.RunOptions()
    with stop_on_ctrl_c(run_options):
        candidates = bundle_candidates(bundle, precisions=list(settings.precisions) or None, threads=settings.threads,
                                       provider=settings.provider, run_options=run_options, progress=progress)
        results = measure(candidates, batch_sizes=settings.batch_sizes, tokens=settings.tokens,
                          image_size=manifest.image.size, vocab_size=manifest.text.vocab_size,
                          repeats=settings.repeats, progress=progress)
    result = BenchResult(bundle, manifest, settings, machine_facts(settings.threads), results)
    if output is not None:
        write_bytes(output, result.to_json().encode("utf-8"))
    return result


if __name__ == "__main__":  # the --rss-probe entry point used by measure()
    if len(sys.argv) == 7 and sys.argv[1] == "--rss-probe":
        print(rss_probe(sys.argv[2], sys.argv[3], int(sys.argv[4]) or None, int(sys.argv[5]), int(sys.argv[6])))
    else:
        sys.exit("usage: python -m altclip_onnx.runtime.bench --rss-probe MODEL TOWER THREADS IMAGE_SIZE VOCAB")
