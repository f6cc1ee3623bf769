"""Ray throughput: ``embed --ray`` with N actors x T threads against the single-process ``embed``, same bundle,
same photos, same machine.

Runs, in turn (``--rounds`` times, interleaved, medians reported):

- **single process**: :func:`~altclip_onnx.runtime.outputs.embed_images_to_file` with ``--threads`` onnxruntime
  threads (default 2) and ``--workers`` decoding threads, as ``altclip-onnx embed`` runs;
- **Ray**, for each ``--layouts`` entry ``AxT`` (default ``2x1,1x2``): :func:`altclip_onnx.distributed.embed_images`
  with A actors of T onnxruntime threads (and one decoding thread each), on the Ray at ``--address`` (default
  ``auto``: a local Ray on this machine, over loopback).

Each setting runs over half the photos, then over all of them, writing Parquet to a fresh place each time.
Reported: both wall times (Ray: including its actors' start and model load, not Ray's own start, which happens
once before everything), and the **steady** throughput, the second half of the photos over the difference of
the two times: what a long job gets once every fixed cost (actors, model load, scheduling) is paid. The issue's
goal: Ray 2x1 steady >= 90% of the single process.

Photos are made as in ``folder_throughput.py`` (1024x768 JPEGs from scikit-image's samples) unless ``--folder``
gives real ones. Prints a Markdown table (with the CPU) and writes JSON.

Usage::

    python benchmarks/ray_throughput.py --bundle BUNDLE [--images 256] [--precision auto] [--threads 2]
        [--layouts 2x1,1x2] [--rounds 2] [--address auto] [--folder PHOTOS] [--json ray_throughput.json]

Needs the [distributed] extra and scikit-image (to make photos). On the tiny test bundle the model is far
faster than decoding and Ray's per-block overhead dominates: only a full-size model measures what matters.
"""

from __future__ import annotations

import os

# A benchmark on one machine: Ray over loopback (by default it uses this machine's network address even for a
# local instance). Set before Ray is imported.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from altclip_onnx.distributed import RayOptions, connect, embed_images  # noqa: E402
from altclip_onnx.runtime import Encoder  # noqa: E402
from altclip_onnx.runtime.doctor import cpu_summary  # noqa: E402
from altclip_onnx.runtime.outputs import EmbedOptions, embed_images_to_file  # noqa: E402


def single_process(bundle: str, files: list[Path], out: Path, args: argparse.Namespace) -> float:
    """Seconds for ``embed`` in one process over ``files`` (the model loaded before timing)."""
    encoder = Encoder(bundle, provider="cpu", precision=args.precision, threads=args.threads)
    encoder.encode_images([files[0]])
    started = time.perf_counter()
    embed_images_to_file(encoder, files, out, EmbedOptions(batch_size=args.batch_size, workers=args.workers,
                                                           progress=False))
    return time.perf_counter() - started


def on_ray(bundle: str, files: list[Path], out: Path, actors: int, threads: int, args: argparse.Namespace) -> float:
    """Seconds for ``embed --ray`` over ``files``, its actors' start and model load included."""
    started = time.perf_counter()
    embed_images([str(f) for f in files], bundle, out, RayOptions(
        address=args.address, actors=actors, threads=threads, workers=1, batch_size=args.batch_size,
        shard_rows=args.shard_rows, precision=args.precision, provider="cpu", progress=False))
    return time.perf_counter() - started


def measure(name: str, run: Any, files: list[Path], work: Path) -> dict[str, Any]:
    """Wall time over half the photos and over all of them; the difference is the steady cost of the second
    half, without what every run pays once (actors, model load, scheduling)."""
    half = files[: len(files) // 2]
    seconds = []
    for chosen in (half, files):
        out = work / f"out-{len(chosen)}.parquet"
        seconds.append(run(chosen, out))
        shutil.rmtree(out, ignore_errors=True) if out.is_dir() else out.unlink(missing_ok=True)
    steady = (len(files) - len(half)) / (seconds[1] - seconds[0]) if seconds[1] > seconds[0] else None
    return {"run": name, "wall_half_s": seconds[0], "wall_s": seconds[1], "steady": steady}


def markdown(rows: list[dict[str, Any]], images: int, cpu: str, bundle: str, precision: str) -> str:
    base = rows[0]["steady"]
    lines = [f"{cpu}; {images} photos (1024x768 JPEG), bundle {bundle}, precision {precision}", "",
             f"| run | wall time, {images // 2} photos | wall time, {images} photos | steady throughput "
             "(second half) | vs single process |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        steady = f"{r['steady']:.2f} img/s" if r["steady"] else "-"
        ratio = f"{100 * r['steady'] / base:.0f}%" if r["steady"] and base else "-"
        lines.append(f"| {r['run']} | {r['wall_half_s']:.1f} s | {r['wall_s']:.1f} s | {steady} | {ratio} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2, help="Single process: onnxruntime threads.")
    parser.add_argument("--workers", type=int, default=2, help="Single process: decoding threads.")
    parser.add_argument("--layouts", default="2x1,1x2", help="Ray runs: ACTORSxTHREADS, comma-separated.")
    parser.add_argument("--shard-rows", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--address", default="auto")
    parser.add_argument("--folder", type=Path, help="Real photos instead of made ones.")
    parser.add_argument("--work-dir", type=Path)
    parser.add_argument("--json", dest="json_path", type=Path, default=Path("ray_throughput.json"))
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ray-throughput-", dir=args.work_dir))
    try:
        if args.folder:
            files = sorted(p for p in args.folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
            files = files[: args.images]
        else:
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            from folder_throughput import make_photos

            files = make_photos(work / "photos", args.images, 1024, 768)
        layouts = [tuple(int(x) for x in layout.split("x")) for layout in args.layouts.split(",") if layout]
        connect(args.address)  # Ray starts once, outside every timing
        results: dict[str, list[dict[str, Any]]] = {}
        runs = [(f"single process, {args.threads} threads",
                 lambda chosen, out: single_process(args.bundle, chosen, out, args))]
        runs += [(f"Ray, {a} actor{'s' if a > 1 else ''} x {t} thread{'s' if t > 1 else ''}",
                  lambda chosen, out, a=a, t=t: on_ray(args.bundle, chosen, out, a, t, args)) for a, t in layouts]
        for round_ in range(args.rounds):
            for name, run in runs:
                result = measure(name, run, files, work)
                print(f"... round {round_ + 1}: {result}", file=sys.stderr, flush=True)
                results.setdefault(name, []).append(result)
        rows = []
        for name, runs in results.items():
            steadies = [r["steady"] for r in runs if r["steady"]]
            rows.append({**runs[0], "wall_s": statistics.median(r["wall_s"] for r in runs),
                         "wall_half_s": statistics.median(r["wall_half_s"] for r in runs),
                         "steady": statistics.median(steadies) if steadies else None, "rounds": runs})
        cpu = f"{cpu_summary()}, {os.cpu_count()} logical CPUs"
        print(markdown(rows, len(files), cpu, args.bundle, args.precision))
        args.json_path.write_text(json.dumps({"cpu": cpu, "images": len(files), "bundle": args.bundle,
                                              "precision": args.precision, "results": rows}, indent=2))
        print(f"\nwrote {args.json_path}", file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
