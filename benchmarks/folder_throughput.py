"""Folder throughput: does decoding keep up with the model when embedding a folder of photos?

Measures, for one bundle, precision, batch size and thread setting:

(a) the model's own throughput: ``Encoder.encode_pixels`` on pre-made pixel arrays (no decoding),
    median of ``--repeats`` timed batches after ``--warmup`` untimed ones;
(b) end-to-end throughput of ``runtime.pipeline.embed_images`` over a folder of JPEG photos, with
    ``--workers`` decoding threads overlapping inference, exact and with ``--draft`` decoding;
(c) decode-only throughput (the same threads, no model): the ceiling decoding puts on (b);

and reports (b)/(a) per photo size (target: at least 85%), plus the cosine between draft and exact
embeddings. Photos are made from scikit-image's sample photos (random crop, flip, colour jitter,
bicubic upscale, JPEG quality 85-95; seeded) at 1024x768 and 12 megapixels (4000x3000), unless
``--folder`` gives real ones. Prints a Markdown table and writes JSON.

Usage::

    python benchmarks/folder_throughput.py BUNDLE [--images 32] [--batch-size 8] [--workers 2]
        [--threads 2] [--precision auto] [--provider cpu] [--sizes 1024x768,4000x3000]
        [--folder PHOTOS] [--work-dir DIR] [--json results.json]

Runtime side only (onnxruntime, numpy, Pillow; scikit-image to make photos). On a tiny test bundle
the model is far faster than JPEG decoding, so the ratio there measures decoding, not overlap: it
is only meaningful for a full-size model.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from altclip_onnx.runtime import Encoder
from altclip_onnx.runtime.doctor import cpu_summary
from altclip_onnx.runtime.images import load_image, preprocess
from altclip_onnx.runtime.pipeline import embed_images, iter_image_files

TARGET = 0.85
SOURCES = ("astronaut", "chelsea", "coffee", "rocket")


def make_photos(folder: Path, count: int, width: int, height: int, seed: int = 0) -> list[Path]:
    """``count`` JPEGs of ``width`` x ``height`` upscaled from varied crops of real photos (cached)."""
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sources = [getattr(data, name)() for name in SOURCES]
    paths = []
    for i in range(count):
        path = folder / f"photo-{i:04d}.jpg"
        paths.append(path)
        if path.exists():
            continue
        pixels = sources[i % len(sources)]
        h, w = pixels.shape[:2]
        # a crop with the target's aspect ratio, 60-100% of what fits
        scale = rng.uniform(0.6, 1.0)
        crop_w = int(min(w, h * width / height) * scale)
        crop_h = int(crop_w * height / width)
        x, y = rng.integers(0, w - crop_w + 1), rng.integers(0, h - crop_h + 1)
        crop = pixels[y : y + crop_h, x : x + crop_w].astype(np.float32)
        crop = crop * rng.uniform(0.8, 1.2, size=3) + rng.uniform(-15, 15)  # colour and brightness jitter
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        image = Image.fromarray(np.clip(crop, 0, 255).astype(np.uint8)).resize((width, height), Image.BICUBIC)
        image.save(path, quality=int(rng.integers(85, 96)))
    return paths


def model_throughput(encoder: Encoder, files: list[Path], batch_size: int, warmup: int, repeats: int) -> dict:
    pixels = encoder.preprocess([files[i % len(files)] for i in range(batch_size)])
    for _ in range(warmup):
        encoder.encode_pixels(pixels)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        encoder.encode_pixels(pixels)
        times.append(time.perf_counter() - started)
    median = statistics.median(times)
    return {"images_per_s": batch_size / median, "batch_seconds_median": median, "batch_seconds": times}


def end_to_end(
    encoder: Encoder, files: list[Path], batch_size: int, workers: int, draft: bool
) -> tuple[dict, np.ndarray]:
    rows = []
    started = time.perf_counter()
    for batch in embed_images(encoder, files, batch_size=batch_size, workers=workers, draft=draft, progress=False):
        if batch.failures:
            raise SystemExit(f"unexpected failures: {batch.failures}")
        rows.append(batch.embeddings)
    seconds = time.perf_counter() - started
    return {"images_per_s": len(files) / seconds, "seconds": seconds}, np.concatenate(rows)


def decode_only(encoder: Encoder, files: list[Path], workers: int, draft: bool) -> float:
    spec = encoder.manifest.image

    def load(path: Path) -> None:
        preprocess(load_image(path, draft=draft, size=spec.shortest_edge), spec)

    started = time.perf_counter()
    if workers:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(load, files))
    else:
        for path in files:
            load(path)
    return len(files) / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--folder", type=Path, help="Real photos to use instead of generated ones.")
    parser.add_argument("--images", type=int, default=32, help="Photos per size (default 32).")
    parser.add_argument("--sizes", default="1024x768,4000x3000", help="Generated photo sizes, WxH, comma-separated.")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2, help="Decoding threads (default 2).")
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="onnxruntime intra-op threads (default: os.cpu_count()).")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--provider", default="cpu")
    parser.add_argument("--warmup", type=int, default=2, help="Untimed model batches first (default 2).")
    parser.add_argument("--repeats", type=int, default=4,
                        help="Timed model batches, before and again after the end-to-end runs (default 4).")
    parser.add_argument("--no-draft", dest="draft", action="store_false", help="Skip the --draft runs.")
    parser.add_argument("--work-dir", type=Path, help="Where generated photos are kept (default: a temp folder).")
    parser.add_argument("--json", type=Path, default=Path("folder_throughput.json"))
    args = parser.parse_args(argv)

    encoder = Encoder(args.bundle, provider=args.provider, precision=args.precision, threads=args.threads)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="altclip-bench-"))
    if args.folder:
        sets = {args.folder.name: list(iter_image_files([args.folder]))[: args.images]}
    else:
        sets = {}
        for size in args.sizes.split(","):
            width, height = (int(v) for v in size.lower().split("x"))
            print(f"making {args.images} photos of {width}x{height} in {work / size}", file=sys.stderr)
            sets[size] = make_photos(work / size, args.images, width, height)

    first = next(iter(sets.values()))
    print("measuring the model on pre-made pixels", file=sys.stderr)
    before = model_throughput(encoder, first, args.batch_size, args.warmup, args.repeats)
    results = []
    for name, files in sets.items():
        for draft in (False, True) if args.draft else (False,):
            print(f"{name}: end to end, draft={draft}", file=sys.stderr)
            decode = decode_only(encoder, files, args.workers, draft)
            e2e, rows = end_to_end(encoder, files, args.batch_size, args.workers, draft)
            entry = {"photos": name, "count": len(files), "draft": draft, "decode_images_per_s": decode,
                     "end_to_end": e2e}
            if draft:
                exact_rows = results[-1]["_rows"]
                cosines = np.sum(exact_rows * rows, axis=1)  # both L2-normalized
                entry["draft_cosine"] = {"min": float(cosines.min()), "mean": float(cosines.mean())}
            entry["_rows"] = rows
            results.append(entry)

    print("measuring the model again (drift check)", file=sys.stderr)
    after = model_throughput(encoder, first, args.batch_size, 0, args.repeats)
    times = before["batch_seconds"] + after["batch_seconds"]
    median = statistics.median(times)
    model = {"images_per_s": args.batch_size / median, "batch_seconds_median": median,
             "before_images_per_s": before["images_per_s"], "after_images_per_s": after["images_per_s"],
             "batch_seconds": times}
    for entry in results:
        del entry["_rows"]
        entry["ratio"] = entry["end_to_end"]["images_per_s"] / model["images_per_s"]
        decode = entry["decode_images_per_s"]
        entry["no_overlap_ratio"] = decode / (decode + model["images_per_s"])  # 1 / (1/model + 1/decode), / model
    setting = {
        "bundle": str(args.bundle), "variant": encoder.manifest.variant, "precision": encoder.precisions["visual"],
        "provider": encoder.providers[0], "batch_size": args.batch_size, "workers": args.workers,
        "threads": args.threads, "cpus": os.cpu_count(), "machine": cpu_summary(),
    }  # fmt: skip
    report = {"setting": setting, "model": model, "results": results, "target_ratio": TARGET}
    args.json.write_text(json.dumps(report, indent=2))
    print(format_table(report))
    print(f"\nJSON written to {args.json}")
    return 0


def format_table(report: dict) -> str:
    s, model = report["setting"], report["model"]
    lines = [
        f"{s['variant']} {s['precision']} on {s['provider']}, batch {s['batch_size']}, {s['threads']} onnxruntime "
        f"threads, {s['workers']} decoding workers, {s['cpus']} CPUs",
        f"model alone (pre-made pixels): {model['images_per_s']:.2f} images/s "
        f"(median batch {model['batch_seconds_median']:.3f}s; {model['before_images_per_s']:.2f} before and "
        f"{model['after_images_per_s']:.2f} after the end-to-end runs)",
        "",
        "| photos | n | decoding | decode-only img/s | end-to-end img/s | end-to-end / model | no-overlap bound "
        "| draft cosine (min) |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        ratio = r["ratio"]
        mark = "" if ratio >= report["target_ratio"] else " (below 85%)"
        cosine = f"{r['draft_cosine']['min']:.5f}" if "draft_cosine" in r else "-"
        lines.append(
            f"| {r['photos']} | {r['count']} | {'draft' if r['draft'] else 'exact'} | {r['decode_images_per_s']:.1f} "
            f"| {r['end_to_end']['images_per_s']:.2f} | {100 * ratio:.0f}%{mark} | {100 * r['no_overlap_ratio']:.0f}% "
            f"| {cosine} |"
        )
    drift = model["after_images_per_s"] / model["before_images_per_s"]
    if not 0.9 <= drift <= 1.1:
        lines.append(f"\nWARNING: the model ran {drift:.2f}x as fast after the end-to-end runs as before: "
                     "something else used the CPU; rerun on a quiet machine.")
    lines.append("\nno-overlap bound: the ratio if decoding and inference simply took turns on the same cores "
                 "(1 / (1/model + 1/decode)); overlap can only beat it where the model leaves cores idle.")
    if any(r["decode_images_per_s"] < model["images_per_s"] for r in report["results"]):
        lines.append("\nnote: where decoding alone is slower than the model, the ratio is bounded by decoding, "
                     "not by the overlap (expected for tiny test bundles).")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
