"""Load on ``altclip-onnx serve``: throughput and latency at 1, 4, 16 and 64 concurrent clients.

Starts the service on BUNDLE (a subprocess listening on 127.0.0.1 only), then, for texts and for images, runs
each concurrency level as a closed loop: every client sends one request at a time (one text, or one image as
a data URI, through ``POST /v1/embeddings``), the next as soon as the last is answered, until the level has
sent ``--requests`` requests or ``--seconds`` have passed. Per level: requests/s, p50 and p99 latency, errors
(must be 0), the model calls' mean batch size (from /metrics), the CPU the server used (in cores: a level
where it stays well under the machine's cores is limited elsewhere, e.g. by this load generator), and the
server's resident memory before and after. Then, with the server stopped, ``Encoder.encode_images`` alone on the same images at the batch size
of the highest image level below 64 clients (16), and ``Encoder.encode_texts`` alone at ``--max-batch``, for
the goals below.

Goals (issues 9 and 17, for the full-size bundle at int8): text throughput at 16 clients >= 3x one client's,
at p99 <= 4x one client's p50; text throughput at 64 clients >= 80% of encode_texts' own at --max-batch (32);
image throughput at 16 clients >= 90% of encode_images' own at batch 16.

Usage::

    python benchmarks/serve_load.py BUNDLE [--precision int8] [--clients 1,4,16,64] [--requests 256]
        [--seconds 60] [--kinds texts,images] [--max-batch 32] [--max-wait-ms 5] [--threads N]
        [--image-size 640x480] [--json results.json]

Prints a Markdown table (and the goals); ``--json`` also writes every number. The load generator runs in
this process (asyncio and a minimal HTTP/1.1 client), on the same machine: on a small machine it takes some
CPU from the server, most visibly with a tiny model. Needs the [serve] extra and httpx; scikit-image for the photos.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from altclip_onnx.runtime import Encoder
from altclip_onnx.runtime.doctor import cpu_summary

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "camera", "horse")
# Short captions in several languages (about 10-20 tokens each with the real tokenizer).
TEXTS = [
    "a photo of a cat sleeping on a sofa", "海边的日落，天空是橙色的", "ein Hund spielt im Garten mit einem Ball",
    "東京の夜景と桜の花", "una taza de café sobre la mesa", "кошка спит на диване", "a rocket launching at night",
    "서울의 밤거리는 아름답습니다", "le chat dort sur le canapé", "القطة نائمة على الأريكة", "two children flying a kite",
    "una città italiana al tramonto", "kot śpi na kanapie", "a bowl of hot noodles on the table", "nhà hàng bên bờ sông",
    "bir kedi pencerede oturuyor",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def memory_mb(pid: int) -> tuple[float, float] | None:
    """(VmRSS, VmHWM: the peak so far) of a process in MB; None once it is gone or off Linux."""
    try:
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
        return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024
    except (OSError, KeyError, ValueError):
        return None


def rss_mb(pid: int) -> float | None:
    """Resident memory of a process in MB (Linux; None elsewhere)."""
    memory = memory_mb(pid)
    return None if memory is None else memory[0]


def cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) a process has used so far, in seconds (Linux; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def make_images(count: int, width: int, height: int) -> list[bytes]:
    """``count`` different JPEGs of width x height from scikit-image's photos (flipped and shifted)."""
    from skimage import data

    out = []
    for i in range(count):
        pixels = getattr(data, PHOTOS[i % len(PHOTOS)])()
        if pixels.dtype == bool:
            pixels = pixels.astype(np.uint8) * 255
        image = Image.fromarray(pixels).convert("RGB").resize((width, height), Image.BICUBIC)
        if (i // len(PHOTOS)) % 2:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=90 - i % 7)
        out.append(buffer.getvalue())
    return out


class Server:
    """``altclip-onnx serve`` in a subprocess on a free loopback port; its output in ``log`` when given (a long
    run's log would fill a pipe nobody reads), else its errors are shown if it fails to start."""

    def __init__(self, bundle: str, args: list[str], *, log: Path | None = None, grace: float = 60) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.grace = grace
        env = dict(os.environ)
        env.pop("ALTCLIP_API_KEY", None)
        command = [sys.executable, "-m", "altclip_onnx.cli", "serve", bundle, "--host", "127.0.0.1", "--port",
                   str(self.port), *args]
        if log is None:
            self.process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        else:
            with log.open("wb") as out:
                self.process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                output = log.read_bytes() if log is not None else self.process.stderr.read()  # type: ignore[union-attr]
                raise SystemExit(f"the server exited: {output.decode(errors='replace')}")
            try:
                self.health = httpx.get(f"{self.url}/health", timeout=2).json()
                return
            except httpx.TransportError:
                time.sleep(0.2)
        self.stop()
        raise SystemExit("the server did not start within 300 s")

    def rss(self) -> float | None:
        return rss_mb(self.process.pid)

    def memory(self) -> tuple[float, float] | None:
        return memory_mb(self.process.pid)

    def cpu(self) -> float | None:
        return cpu_seconds(self.process.pid)

    def batches(self) -> dict[str, tuple[float, float]]:
        """Per tower: (sum of batch sizes, model calls) so far."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        out = {}
        for tower in ("textual", "visual"):
            total = re.search(rf'altclip_batch_size_sum{{tower="{tower}"}} ([0-9.e+]+)', text)
            calls = re.search(rf'altclip_batch_size_count{{tower="{tower}"}} ([0-9.e+]+)', text)
            out[tower] = (float(total.group(1)) if total else 0.0, float(calls.group(1)) if calls else 0.0)
        return out

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(self.grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


class Connection:
    """A minimal HTTP/1.1 keep-alive client over asyncio streams: it costs the load generator far less CPU than
    a full client library, which matters when it shares a small machine with the server."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        self.writer.write(b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                          b"Content-Length: %d\r\n\r\n%s" % (path.encode(), len(body), body))
        await self.writer.drain()
        status = int((await self.reader.readline()).split(b" ", 2)[1])
        length, close = 0, False
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
            elif name.lower() == b"connection" and value.strip().lower() == b"close":
                close = True
        answer = await self.reader.readexactly(length)
        if close:
            await self.close()
        return status, answer

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
        self.reader = self.writer = None


async def level(port: int, bodies: list[bytes], clients: int, requests: int, seconds: float) -> dict[str, Any]:
    """One closed-loop run: ``clients`` concurrent clients, at most ``requests`` requests and ``seconds`` in all."""
    latencies: list[float] = []
    errors: list[str] = []
    sent = 0
    deadline = time.monotonic() + seconds

    async def client(offset: int) -> None:
        nonlocal sent
        connection = Connection(port)
        i = offset
        try:
            while sent < requests and time.monotonic() < deadline:
                sent += 1
                body = bodies[i % len(bodies)]
                i += clients
                started = time.perf_counter()
                try:
                    status, answer = await connection.post("/v1/embeddings", body)
                except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                    await connection.close()
                    continue
                if status != 200:
                    errors.append(f"{status} {answer[:200]!r}")
                    continue
                latencies.append(time.perf_counter() - started)
        finally:
            await connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(client(c) for c in range(clients)))
    wall = time.perf_counter() - started
    ms = sorted(1000 * x for x in latencies)
    return {
        "clients": clients, "requests": len(latencies) + len(errors), "ok": len(latencies), "errors": len(errors),
        "error_examples": errors[:3], "seconds": wall, "requests_per_s": len(latencies) / wall if wall else 0.0,
        "p50_ms": statistics.median(ms) if ms else None,
        "p99_ms": ms[min(len(ms) - 1, int(np.ceil(0.99 * len(ms))) - 1)] if ms else None,
    }


def encoder_throughput(bundle: str, precision: str, threads: int | None, kind: str, inputs: list[Any], batch: int,
                       seconds: float) -> float:
    """Inputs/s of ``Encoder.encode_images`` (decoding included) or ``Encoder.encode_texts`` (tokenizing
    included) itself at ``batch``, after one warm-up batch: what the service's batching can reach at most."""
    encoder = Encoder(bundle, precision=precision, threads=threads)
    encode = encoder.encode_images if kind == "images" else encoder.encode_texts
    work = [inputs[i % len(inputs)] for i in range(batch)]
    encode(work, batch_size=batch)
    done, started = 0, time.perf_counter()
    while done < 4 * batch or (time.perf_counter() - started < seconds and done < 16 * batch):
        encode(work, batch_size=batch)
        done += batch
    return done / (time.perf_counter() - started)


def format_table(report: dict[str, Any]) -> str:
    head = report["setup"]
    lines = [
        f"CPU: {head['cpu']}; bundle {head['bundle']} ({head['model']}, {head['embedding_dim']}-d, "
        f"{head['precision']}); --max-batch {head['max_batch']}, --max-wait-ms {head['max_wait_ms']}, "
        f"threads {head['threads'] or 'default'}; images {head['image_size']} JPEG; server RSS at start "
        f"{megabytes(report['rss_start_mb'])}, after everything {megabytes(report['rss_end_mb'])}",
        "",
        "| input | clients | requests | errors | requests/s | p50 | p99 | mean batch | server CPU | server RSS before → after |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["rows"]:
        lines.append(
            f"| {row['kind']} | {row['clients']} | {row['requests']} | {row['errors']} | {row['requests_per_s']:.1f} | "
            f"{_ms(row['p50_ms'])} | {_ms(row['p99_ms'])} | {row['mean_batch']:.1f} | {_cores(row['server_cores'])} | "
            f"{megabytes(row['rss_before_mb'])} → {megabytes(row['rss_after_mb'])} |")
    if report["goals"]:
        lines += ["", *goals_table(report["goals"])]
    return "\n".join(lines)


def goals_table(goals: list[dict[str, Any]]) -> list[str]:
    """The goals as Markdown table lines: goal, measured, met or missed."""
    return ["| goal | measured | |", "|---|---|---|",
            *(f"| {g['goal']} | {g['measured']} | {'met' if g['met'] else 'missed'} |" for g in goals)]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def _cores(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} cores"


def megabytes(value: float | None) -> str:
    """A size in MB for a table, "-" when unknown."""
    return "-" if value is None else f"{value:.0f} MB"


def goals(rows: list[dict[str, Any]], encoder_rate: float | None, batch: int, text_rate: float | None,
          text_batch: int) -> list[dict[str, Any]]:
    found = {(r["kind"], r["clients"]): r for r in rows}
    out = []
    texts = found.get(("texts", 64))
    if texts and text_rate:
        share = texts["requests_per_s"] / text_rate
        out.append({"goal": f"texts: 64 clients >= 80% of Encoder.encode_texts at batch {text_batch}",
                    "measured": f"{100 * share:.0f}% ({texts['requests_per_s']:.1f} / {text_rate:.1f} texts/s)",
                    "met": share >= 0.8})
    one, many = found.get(("texts", 1)), found.get(("texts", 16))
    if one and many and one["p50_ms"] and many["p99_ms"]:
        ratio = many["requests_per_s"] / one["requests_per_s"]
        tail = many["p99_ms"] / one["p50_ms"]
        out.append({"goal": "texts: 16 clients >= 3x one client's throughput, at p99 <= 4x one client's latency",
                    "measured": f"{ratio:.2f}x at p99 {tail:.2f}x ({many['p99_ms']:.1f} / {one['p50_ms']:.1f} ms)",
                    "met": ratio >= 3 and tail <= 4})
    images = found.get(("images", batch))
    if images and encoder_rate:
        share = images["requests_per_s"] / encoder_rate
        out.append({"goal": f"images: {batch} clients >= 90% of Encoder.encode_images at batch {batch}",
                    "measured": f"{100 * share:.0f}% ({images['requests_per_s']:.1f} / {encoder_rate:.1f} images/s)",
                    "met": share >= 0.9})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "int8", "fp16"])
    parser.add_argument("--clients", default="1,4,16,64", help="concurrency levels, comma-separated")
    parser.add_argument("--requests", type=int, default=256, help="most requests per level")
    parser.add_argument("--seconds", type=float, default=60.0, help="most seconds per level")
    parser.add_argument("--kinds", default="texts,images")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime threads of the server")
    parser.add_argument("--image-size", default="640x480")
    parser.add_argument("--json", type=Path, help="also write every number here")
    args = parser.parse_args(argv)
    if args.requests < 1 or args.seconds <= 0:
        parser.error("--requests and --seconds must be positive")
    clients = [int(c) for c in args.clients.split(",")]
    kinds = [k for k in args.kinds.split(",") if k]
    width, height = (int(v) for v in args.image_size.lower().split("x"))
    images = make_images(16, width, height)
    bodies = {
        "texts": [json.dumps({"input": text, "model": "m", "encoding_format": "base64"}).encode() for text in TEXTS],
        "images": [json.dumps({"input": "data:image/jpeg;base64," + base64.b64encode(b).decode(), "modality": "image",
                               "model": "m", "encoding_format": "base64"}).encode() for b in images],
    }
    # Closed-loop levels measure throughput, not admission (benchmarks/serve_burst.py does): 64 image clients
    # are more seconds of work than the default --max-queue-seconds admits.
    server_args = ["--precision", args.precision, "--max-batch", str(args.max_batch), "--max-wait-ms",
                   str(args.max_wait_ms), "--max-queue-seconds", "3600"]
    if args.threads is not None:
        server_args += ["--threads", str(args.threads)]
    print(f"starting the server on {args.bundle} ...", file=sys.stderr)
    server = Server(args.bundle, server_args)
    rows = []
    try:
        rss_start = server.rss()
        for kind in kinds:  # warm-up: the first calls of each session are slow
            asyncio.run(level(server.port, bodies[kind], 2, 8, 120))
        for kind in kinds:
            tower = "textual" if kind == "texts" else "visual"
            for count in clients:
                before, rss_before, cpu_before = server.batches(), server.rss(), server.cpu()
                row = asyncio.run(level(server.port, bodies[kind], count, args.requests, args.seconds))
                after, cpu_after = server.batches(), server.cpu()
                calls = after[tower][1] - before[tower][1]
                busy = (cpu_after - cpu_before) / row["seconds"] if cpu_before is not None and cpu_after is not None \
                    else None
                row.update(kind=kind, rss_before_mb=rss_before, rss_after_mb=server.rss(), server_cores=busy,
                           mean_batch=(after[tower][0] - before[tower][0]) / calls if calls else 0.0)
                rows.append(row)
                print(f"{kind} x{count}: {row['requests_per_s']:.1f} requests/s, p50 {_ms(row['p50_ms'])}, "
                      f"p99 {_ms(row['p99_ms'])}, {row['errors']} errors", file=sys.stderr)
        rss_end = server.rss()
        health = server.health
    finally:
        code = server.stop()
    batch = 16 if 16 in clients else max((c for c in clients if c <= args.max_batch), default=1)
    encoder_rate = text_rate = None
    if "images" in kinds:
        print(f"Encoder.encode_images alone at batch {batch} ...", file=sys.stderr)
        encoder_rate = encoder_throughput(args.bundle, health["precision"]["visual"], args.threads, "images", images,
                                          batch, args.seconds / 2)
    if "texts" in kinds:
        print(f"Encoder.encode_texts alone at batch {args.max_batch} ...", file=sys.stderr)
        text_rate = encoder_throughput(args.bundle, health["precision"]["textual"], args.threads, "texts", TEXTS,
                                       args.max_batch, args.seconds / 2)
    report = {
        "setup": {"cpu": cpu_summary(), "bundle": args.bundle, "model": health["model"],
                  "embedding_dim": health["embedding_dim"],
                  "precision": ", ".join(f"{t} {p}" for t, p in health["precision"].items()),
                  "max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms, "threads": args.threads,
                  "image_size": args.image_size, "requests_per_level": args.requests, "seconds_per_level": args.seconds,
                  "python": sys.version.split()[0]},
        "rows": rows, "rss_start_mb": rss_start, "rss_end_mb": rss_end, "server_exit_code": code,
        "encoder_images_per_s": encoder_rate, "encoder_batch": batch, "encoder_texts_per_s": text_rate,
        "goals": goals(rows, encoder_rate, batch, text_rate, args.max_batch),
    }
    print(format_table(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    errors = sum(row["errors"] for row in rows)
    if errors:
        print(f"{errors} requests failed, e.g. {[r['error_examples'] for r in rows if r['errors']][0]}", file=sys.stderr)
    return 1 if errors or code != 0 else 0


if __name__ == "__main__":
    sys.exit(main())
