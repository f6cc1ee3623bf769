"""The browser site (``convert --to web``) against native onnxruntime, side by side on one machine.

    python benchmarks/web_speed.py BUNDLE [--precision int8] [--images 4] [--texts 32] [--threads 2]
        [--work-dir build/web-speed] [--json results.json]

Builds the site from BUNDLE (kept in ``--work-dir`` and reused), serves it with ``altclip-onnx serve-static``
on a free loopback port and opens it in Debian's headless chromium (Playwright's Python API). Measures: the
first load (every file downloaded, the towers compiled), a reload (the files from Cache Storage), then
``altclip.embedTexts`` on ``--texts`` short sentences and ``altclip.embedImages`` on ``--images`` photos of
scikit-image (decoding and preprocessing included, in the page's Web Worker; onnxruntime-web's WebAssembly
with threads: the site is cross-origin isolated), and the browser's memory (its processes' RSS). Then the same
texts and photos through ``Encoder(BUNDLE, precision=..., threads=--threads)`` in this process. Prints a
Markdown table with the CPU. Goal (issue 19): the browser at >= 50% of native.
Needs the [convert] and [test-services] extras, node and npm, chromium.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
SENTENCES = ["a photo of a cat", "一只猫的照片", "ein Foto eines Hundes", "una foto de un caballo",
             "une photo d'un astronaute", "кофе на столе", "日本の寺の写真", "사진 속의 로켓"]
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "cat", "horse")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--precision", default="int8", choices=("int8", "fp32"))
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--texts", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="native onnxruntime threads (the browser: one per core, at most 4)")
    parser.add_argument("--work-dir", type=Path, default=Path("build/web-speed"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    say = lambda message: print(f"... {message}", file=sys.stderr, flush=True)  # noqa: E731
    site = args.work_dir / f"site-{args.precision}"
    if not (site / "site.json").is_file():
        say(f"building the site at {args.precision} in {site}")
        subprocess.run([sys.executable, "-m", "altclip_onnx.cli", "convert", str(args.bundle), "--to", "web",
                        "--precision", args.precision, "-o", str(site), "--overwrite"], check=True)
    photos = photo_files(args.work_dir / "photos", args.images)
    texts = [SENTENCES[i % len(SENTENCES)] + f" {i}" for i in range(args.texts)]
    report = {"browser": browser_run(site, photos, texts, say), "native": native_run(args, photos, texts, say)}
    from altclip_onnx.runtime.bench import machine_facts, machine_line

    report["machine"] = machine_facts(args.threads)
    print(format_report(report, args, machine_line(report["machine"])))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


def photo_files(folder: Path, count: int) -> list[Path]:
    from PIL import Image
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in (PHOTOS * count)[:count]:
        path = folder / f"{name}-{len(paths)}.jpg"
        if not path.is_file():
            Image.fromarray(getattr(data, name)()).convert("RGB").save(path, quality=90)
        paths.append(path)
    return paths


def wait_for(url: str, server: subprocess.Popen, seconds: float = 60.0) -> None:
    """Until ``url`` answers (serve-static has started), or exit saying why."""
    import urllib.request

    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"serve-static did not answer {url} within {seconds:g} s")
            time.sleep(0.2)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def browser_run(site: Path, photos: list[Path], texts: list[str], say) -> dict:  # type: ignore[no-untyped-def]
    import base64

    import psutil
    from playwright import sync_api

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "altclip_onnx.cli", "serve-static", str(site), "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    result: dict = {}
    try:
        wait_for(f"http://127.0.0.1:{port}/site.json", server)
        with tempfile.TemporaryDirectory() as profile, sync_api.sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(profile, executable_path=chromium, headless=True,
                                                                    args=FLAGS)
            context.set_default_timeout(1_800_000)
            page = context.new_page()
            for label in ("first_load_s", "reload_s"):
                say(f"browser: {label.removesuffix('_s').replace('_', ' ')}")
                started = time.perf_counter()
                page.goto(f"http://127.0.0.1:{port}/") if label == "first_load_s" else page.reload()
                result["info"] = page.evaluate("async () => await altclip.ready")
                page.evaluate("async () => await altclip.embedTexts(['warm up'])")  # both towers compiled and run
                result[label] = time.perf_counter() - started
            items = [[p.name, base64.b64encode(p.read_bytes()).decode()] for p in photos]
            page.evaluate("""(items) => { window.__files = items.map(([name, b64]) =>
                new File([Uint8Array.from(atob(b64), c => c.charCodeAt(0))], name, {type: 'image/jpeg'})); }""", items)
            page.evaluate("async () => await altclip.embedImages(window.__files.slice(0, 1))")  # warm-up
            say(f"browser: {len(texts)} texts, {len(photos)} photos")
            result["texts_s"] = page.evaluate("""async (texts) => { const t = performance.now();
                await altclip.embedTexts(texts); return (performance.now() - t) / 1000; }""", texts)
            result["images_s"] = page.evaluate("""async () => { const t = performance.now();
                await altclip.embedImages(window.__files); return (performance.now() - t) / 1000; }""")
            result["rss_mb"] = chromium_rss_mb(psutil, profile)
            context.close()
    finally:
        server.terminate()
        server.wait(10)
    return result


def chromium_rss_mb(psutil, profile: str) -> float | None:  # type: ignore[no-untyped-def]
    """The RSS of this run's chromium processes (those started with its profile folder and their children), MB."""
    roots = [p for p in psutil.process_iter(["cmdline"]) if any(profile in arg for arg in p.info["cmdline"] or ())]
    processes = {p.pid: p for root in roots for p in (root, *root.children(recursive=True))}
    return sum(p.memory_info().rss for p in processes.values()) / 1e6 if processes else None


def native_run(args: argparse.Namespace, photos: list[Path], texts: list[str], say) -> dict:  # type: ignore[no-untyped-def]
    from altclip_onnx import Encoder

    encoder = Encoder(args.bundle, precision=args.precision, threads=args.threads)
    encoder.encode_texts(["warm up"])
    encoder.encode_images(photos[:1])
    say(f"native: {len(texts)} texts, {len(photos)} photos")
    started = time.perf_counter()
    encoder.encode_texts(texts)
    texts_s = time.perf_counter() - started
    started = time.perf_counter()
    encoder.encode_images(photos)
    return {"texts_s": texts_s, "images_s": time.perf_counter() - started}


def format_report(report: dict, args: argparse.Namespace, machine: str) -> str:
    web, native = report["browser"], report["native"]
    lines = [f"Machine: {machine}; {args.bundle}, {args.precision}", "",
             "| | browser (WebAssembly, threads) | native onnxruntime | browser / native |", "|---|---:|---:|---:|"]
    for what, count, unit in (("texts", args.texts, "texts/s"), ("images", args.images, "images/s")):
        b, n = count / web[f"{what}_s"], count / native[f"{what}_s"]
        lines.append(f"| {what} ({unit}) | {b:.2f} | {n:.2f} | {b / n:.0%} |")
    lines += ["", f"- first load (download, compile, one text): {web['first_load_s']:.1f} s; reload from the "
              f"browser's cache: {web['reload_s']:.1f} s; chromium's memory after: "
              + (f"{web['rss_mb']:.0f} MB" if web.get("rss_mb") else "unknown")]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
