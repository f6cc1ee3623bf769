"""A burst on ``altclip-onnx serve``: N concurrent clients each sending one 12 MP JPEG at the same moment.

Starts the service on BUNDLE (a subprocess on 127.0.0.1 only), warms it up (2 image and 2 text requests), then
opens ``--clients`` connections at once, each posting one image (a data URI in ``POST /v1/embeddings``, the
body sent in 64 KB pieces while the answer is read, so an early refusal is seen). Meanwhile a probe asks
``GET /health`` every 100 ms and embeds one text every 250 ms, each on its own connection. After the last
client has its answer, the server's memory is watched for ``--settle`` seconds. With ``--health-port``, the
service also serves ``/health`` on a port of its own (``serve --health-port``) and the probe asks there, as a
load balancer's health check would.

Goals (issue 17, point 3): server peak RSS <= 2.5 GB; every answer is a 200, a 429 with Retry-After, or a
deadline answer (503/504) in JSON: no reset connection, no 500, no request without an answer; every 200
within its deadline; /health p99 <= 100 ms and text p99 <= 500 ms during the burst; RSS <= pre-burst + 300 MB
within 30 s of the burst's end.

Usage::

    python benchmarks/serve_burst.py BUNDLE [--precision int8] [--clients 1000] [--image-size 4000x3000]
        [--deadline 60] [--settle 30] [--health-port] [--server-arg=--max-held-mb=256 ...] [--json results.json]

Prints a Markdown table with the CPU (and the goals), then the burst second by second (from its start: the
server's and this load generator's CPU in cores, the answers that came, the probes' worst latency); exit status 1
when a goal is missed. ``--json`` has every probe as (seconds after the burst began when sent, ms) and the CPU
seconds the server and the load generator (clients and probes) used during the burst. The clients run in
this process (asyncio, a minimal HTTP/1.1 client); they share the machine with the server. Bounded: every
client gives up after its deadline plus 60 s, and the whole burst after ``--limit`` seconds.
Needs the [serve] extra and httpx; scikit-image for the photo.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import multiprocessing
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import Server, cpu_seconds, free_port, goals_table, make_images, megabytes, memory_mb  # noqa: E402  (shared with the load benchmark)

from altclip_onnx.runtime.doctor import cpu_summary  # noqa: E402

CHUNK = 64 * 1024
PEAK_GOAL_MB = 2.5 * 1024
SETTLE_GOAL_MB = 300.0
HEALTH_P99_MS = 100.0
TEXT_P99_MS = 500.0


def own_cpu_seconds() -> float:
    """CPU time (user + system, all threads) this process has used so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def thread_cpu_seconds(pid: int, tid: int) -> float | None:
    """CPU time one thread of a process has used so far (Linux; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def machine_cpu_seconds() -> float | None:
    """CPU time every process on the machine has used so far (Linux: /proc/stat; None elsewhere)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    return (sum(fields[:3]) + sum(fields[5:8])) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait


class Sampler(threading.Thread):
    """The server's RSS every 50 ms, as (seconds since start, MB), and the CPU seconds used so far by the server
    and by this process, as (seconds since start, server, this process)."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.samples: list[tuple[float, float]] = []
        self.cpu: list[tuple[float, float, float]] = []
        self.started = time.monotonic()
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            memory, cpu = memory_mb(self.pid), cpu_seconds(self.pid)
            at = time.monotonic() - self.started
            if memory is not None:
                self.samples.append((at, memory[0]))
            if cpu is not None:
                self.cpu.append((at, cpu, own_cpu_seconds()))
            self.done.wait(0.05)


async def exchange(port: int, head: bytes, body: bytes | memoryview, timeout: float) -> dict[str, Any]:
    """One request on a new connection: the body sent in pieces while the answer is read. What happened:
    ``status`` (None without a complete answer), ``headers``, ``body``, ``error``, ``seconds``, and
    ``connect_seconds`` (the TCP handshake, which the kernel completes before the server accepts)."""
    started = time.perf_counter()
    result: dict[str, Any] = {"status": None, "headers": {}, "body": b"", "error": None}
    writer = None
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
        result["connect_seconds"] = time.perf_counter() - started

        async def send() -> None:
            writer.write(head)
            view = memoryview(body)
            for i in range(0, len(view), CHUNK):
                writer.write(view[i : i + CHUNK])
                await writer.drain()

        async def receive() -> None:
            line = await reader.readline()
            if not line:
                raise ConnectionResetError("closed before an answer")
            result["status"] = int(line.split(b" ", 2)[1])
            headers = {}
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            result["headers"] = headers
            result["body"] = await reader.readexactly(int(headers.get("content-length", "0")))

        sender = asyncio.ensure_future(send())
        try:
            await asyncio.wait_for(receive(), timeout)
        finally:
            if not sender.done():
                sender.cancel()  # answered before the body was all sent (a refusal): stop sending
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await sender  # a write failing after the answer came is not an error
    except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError, IndexError) as exc:
        if result["status"] is not None and not result["body"] and "content-length" in result["headers"]:
            result["status"] = None  # the head came, the body did not
        result["error"] = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await writer.wait_closed()
    result["seconds"] = time.perf_counter() - started
    result["ended"] = time.time()
    return result


def request_head(path: str, length: int, deadline: float) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\nX-Request-Timeout: {deadline:g}\r\nConnection: close\r\n\r\n").encode()


def verdict(result: dict[str, Any], deadline: float) -> str:
    """What kind of answer a burst request got: ok, late (a 200 past its deadline), refused (429 with Retry-After),
    deadline (503/504 in JSON), or what was wrong with it."""
    status, error = result["status"], result["error"]
    if status is None:
        return f"no answer ({(error or '?').split(':')[0]})"
    json_body = result["headers"].get("content-type", "").startswith("application/json")
    if status == 200:
        return "ok" if result["seconds"] <= deadline else "late"
    if status == 429:
        return "refused" if json_body and result["headers"].get("retry-after", "").isdigit() else "429 without Retry-After"
    if status in (503, 504):
        return "deadline" if json_body else f"{status} not JSON"
    return f"{status}"


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(np.ceil(q * len(ordered))) - 1)]


async def probe(port: int, stop: asyncio.Event, path: str, body: bytes | None, every: float,
                times: list[float], failures: list[str]) -> None:
    """``path`` every ``every`` seconds until ``stop``: latencies in ms (and what failed)."""
    while not stop.is_set():
        started, sent = time.perf_counter(), time.time()
        if body is None:
            head = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
            result = await exchange(port, head, b"", 30)
        else:
            result = await exchange(port, request_head(path, len(body), 30), body, 30)
        if result["status"] == 200:
            # (when sent, when answered, ms, ms of it connecting)
            times.append((sent, time.time(), 1000 * result["seconds"], 1000 * result["connect_seconds"]))
        else:
            failures.append(f"{result['status']} {result['error'] or result['body'][:120]!r}")
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), max(0.0, every - (time.perf_counter() - started)))


def probes(port: int, health_port: int, stop: Any, out: Any) -> None:
    """The probes, in a process of their own (the clients' event loop would delay them): until ``stop`` is set,
    then (health, text, failures, the CPU seconds this process used probing) into ``out``."""

    async def run() -> None:
        cpu = own_cpu_seconds()
        done = asyncio.Event()
        health: list[float] = []
        texts: list[float] = []
        failures: list[str] = []
        text_body = json.dumps({"input": "a photo of a cat sleeping on a sofa", "model": "m"}).encode()
        tasks = [asyncio.ensure_future(probe(health_port, done, "/health", None, 0.1, health, failures)),
                 asyncio.ensure_future(probe(port, done, "/v1/embeddings", text_body, 0.25, texts, failures))]
        while not stop.is_set():
            await asyncio.sleep(0.05)
        done.set()
        await asyncio.gather(*tasks)
        out.put((health, texts, failures, own_cpu_seconds() - cpu))

    asyncio.run(run())


async def burst(port: int, health_port: int, bodies: list[bytes], clients: int, deadline: float, limit: float,
                server_pid: int) -> dict[str, Any]:
    """``clients`` image requests at once, with the probes running until the last one is answered."""
    context = multiprocessing.get_context("spawn")
    stop, out = context.Event(), context.Queue()
    prober = context.Process(target=probes, args=(port, health_port, stop, out), daemon=True)
    prober.start()
    await asyncio.sleep(1.0)  # (the probe process starting)
    heads = {len(b): request_head("/v1/embeddings", len(b), deadline) for b in bodies}
    server_cpu, own_cpu, machine_cpu = cpu_seconds(server_pid), own_cpu_seconds(), machine_cpu_seconds()
    loop_cpu = thread_cpu_seconds(server_pid, server_pid)  # the server's main thread: its event loop
    started, began = time.perf_counter(), time.time()
    tasks = [asyncio.ensure_future(exchange(port, heads[len(bodies[i % len(bodies)])], bodies[i % len(bodies)],
                                            deadline + 60)) for i in range(clients)]
    done, pending = await asyncio.wait(tasks, timeout=limit)
    for task in pending:
        task.cancel()
    wall = time.perf_counter() - started
    server_cpu = (cpu_seconds(server_pid) or 0.0) - (server_cpu or 0.0)
    own_cpu = own_cpu_seconds() - own_cpu
    loop_cpu = (thread_cpu_seconds(server_pid, server_pid) or 0.0) - (loop_cpu or 0.0)
    machine_cpu = None if machine_cpu is None else (machine_cpu_seconds() or 0.0) - machine_cpu
    stop.set()
    health, texts, probe_failures, probe_cpu = out.get(timeout=120)
    prober.join(30)
    results = [task.result() for task in done]
    results += [{"status": None, "error": "CancelledError: the burst's --limit", "headers": {}, "body": b"",
                 "seconds": wall} for _ in pending]
    # (seconds after the burst began when answered, ms, of which connecting)
    slow = {name: [(round(at - began, 2), round(ms), round(connect, 1)) for _, at, ms, connect in series if ms > limit_ms]
            for name, series, limit_ms in (("health", health, HEALTH_P99_MS), ("text", texts, TEXT_P99_MS))}
    # every probe answered during the burst: (seconds after the burst began when it was sent, ms)
    series = {name: [(round(sent - began, 3), round(ms, 1)) for sent, at, ms, _ in values if at >= began]
              for name, values in (("health", health), ("text", texts))}
    for result in results:
        result["ended"] = result.get("ended", began + wall) - began
    return {"results": results, "seconds": wall, "health_ms": [ms for _, ms in series["health"]],
            "text_ms": [ms for _, ms in series["text"]], "slow_probes": slow, "probe_series": series,
            "probe_failures": probe_failures,
            "cpu": {"server_s": server_cpu, "clients_s": own_cpu, "probes_s": probe_cpu, "wall_s": wall, "server_loop_s": loop_cpu,
                    "machine_s": machine_cpu}}


def warm_up(port: int, image_body: bytes) -> None:
    async def run() -> None:
        text = json.dumps({"input": "warm-up", "model": "m"}).encode()
        answers = await asyncio.gather(*(exchange(port, request_head("/v1/embeddings", len(b), 300), b, 300)
                                         for b in (image_body, image_body, text, text)))
        bad = [a for a in answers if a["status"] != 200]
        if bad:
            raise SystemExit(f"warm-up failed: {bad[0]['status']} {bad[0]['error'] or bad[0]['body'][:300]!r}")

    asyncio.run(run())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "int8", "fp16"])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--image-size", default="4000x3000", help="WIDTHxHEIGHT of the JPEGs (12 MP)")
    parser.add_argument("--images", type=int, default=4, help="different JPEGs the clients take turns sending")
    parser.add_argument("--deadline", type=float, default=60.0, help="X-Request-Timeout of each image request")
    parser.add_argument("--settle", type=float, default=30.0, help="seconds to watch RSS after the burst")
    parser.add_argument("--limit", type=float, default=600.0, help="most seconds for the whole burst")
    parser.add_argument("--health-port", action="store_true",
                        help="probe /health on a port of its own (serve --health-port), not on the main port")
    parser.add_argument("--server-arg", action="append", default=[], help="one more serve option (repeatable)")
    parser.add_argument("--json", type=Path, help="also write every number here")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.deadline <= 0 or args.settle < 0 or args.limit <= 0:
        parser.error("--clients, --deadline and --limit must be positive, --settle 0 or more")
    width, height = (int(v) for v in args.image_size.lower().split("x"))
    print(f"making {args.images} JPEGs of {width}x{height} ...", file=sys.stderr)
    jpegs = make_images(args.images, width, height)
    bodies = [json.dumps({"input": "data:image/jpeg;base64," + base64.b64encode(j).decode(), "modality": "image",
                          "model": "m", "encoding_format": "base64"}).encode() for j in jpegs]
    server_args = ["--precision", args.precision, *[a for arg in args.server_arg for a in arg.split("=", 1)]]
    health_port = free_port() if args.health_port else None
    if health_port is not None:
        server_args += ["--health-port", str(health_port)]
    print(f"starting the server on {args.bundle} ...", file=sys.stderr)
    server = Server(args.bundle, server_args, log=Path(tempfile.mkstemp(prefix="serve-burst-", suffix=".log")[1]),
                    grace=90)
    sampler = Sampler(server.process.pid)
    try:
        warm_up(server.port, bodies[0])
        time.sleep(2.0)  # the trim after the warm-up's images
        before = server.memory()
        assert before is not None
        sampler.start()
        burst_started = time.monotonic() - sampler.started
        print(f"burst: {args.clients} clients ...", file=sys.stderr)
        outcome = asyncio.run(burst(server.port, health_port or server.port, bodies, args.clients, args.deadline,
                                    args.limit, server.process.pid))
        burst_ended = time.monotonic() - sampler.started
        print(f"burst over in {outcome['seconds']:.1f} s; watching memory for {args.settle:g} s ...", file=sys.stderr)
        time.sleep(args.settle)
        sampler.done.set()
        sampler.join()
        after = server.memory()
        assert after is not None
        alive = server.process.poll() is None and httpx.get(f"{server.url}/health", timeout=10).status_code == 200
        metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    finally:
        sampler.done.set()
        code = server.stop()
    results = outcome["results"]
    kinds = Counter(verdict(r, args.deadline) for r in results)
    ok_seconds = [r["seconds"] for r in results if r["status"] == 200]
    settled = next((t - burst_ended for t, mb in sampler.samples if t >= burst_ended and mb <= before[0] + SETTLE_GOAL_MB),
                   None)
    during = [mb for t, mb in sampler.samples if burst_started <= t <= burst_ended]
    report = {
        "setup": {"cpu": cpu_summary(), "cores": os.cpu_count(), "bundle": args.bundle,
                  "model": server.health["model"],
                  "precision": ", ".join(f"{t} {p}" for t, p in server.health["precision"].items()),
                  "clients": args.clients, "image_size": args.image_size, "jpeg_mb": [len(j) / 2**20 for j in jpegs],
                  "body_mb": [len(b) / 2**20 for b in bodies], "deadline": args.deadline, "server_args": server_args,
                  "date": time.strftime("%Y-%m-%d"), "python": sys.version.split()[0]},
        "burst_seconds": outcome["seconds"], "answers": dict(kinds), "answered": len(results),
        "ok_p50_s": statistics.median(ok_seconds) if ok_seconds else None, "ok_max_s": max(ok_seconds, default=None),
        "health_p50_ms": percentile(outcome["health_ms"], 0.5), "health_p99_ms": percentile(outcome["health_ms"], 0.99),
        "health_probes": len(outcome["health_ms"]), "text_p50_ms": percentile(outcome["text_ms"], 0.5),
        "text_p99_ms": percentile(outcome["text_ms"], 0.99), "text_probes": len(outcome["text_ms"]),
        "slow_probes": outcome["slow_probes"], "probe_series": outcome["probe_series"], "cpu": outcome["cpu"],
        "seconds": by_second(outcome, sampler, burst_started, args.deadline), "probe_failures": outcome["probe_failures"][:10], "probe_failure_count": len(outcome["probe_failures"]),
        "rss_before_mb": before[0], "rss_peak_mb": max([after[1], *during]) if during else after[1],
        "rss_burst_end_mb": next((mb for t, mb in sampler.samples if t >= burst_ended), None),
        "rss_after_settle_mb": after[0], "settled_after_s": settled, "server_alive": alive, "server_exit_code": code,
        "requests_total": [line for line in metrics.splitlines() if line.startswith("altclip_requests_total{")],
        "examples": {kind: next((r["error"] or r["body"][:200].decode(errors="replace")) for r in results
                                if verdict(r, args.deadline) == kind) for kind in kinds},
    }
    report["goals"] = goals(report, args)
    print(format_table(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str))
    return 0 if all(goal["met"] for goal in report["goals"]) else 1


def by_second(outcome: dict[str, Any], sampler: Sampler, burst_started: float, deadline: float) -> list[dict[str, Any]]:
    """The burst second by second from its start: CPU cores used by the server and by the clients' process
    (from the sampler), answers that came (by kind), and the probes sent in that second (count, worst ms)."""
    rows = []
    for second in range(int(np.ceil(outcome["seconds"])) + 1):
        low, high = burst_started + second, burst_started + second + 1
        inside = [c for c in sampler.cpu if low <= c[0] <= high]
        row: dict[str, Any] = {"second": second}
        if len(inside) >= 2:
            span = inside[-1][0] - inside[0][0]
            row["server_cores"] = round((inside[-1][1] - inside[0][1]) / span, 2) if span else None
            row["clients_cores"] = round((inside[-1][2] - inside[0][2]) / span, 2) if span else None
        row["answers"] = dict(Counter(verdict(r, deadline) for r in outcome["results"]
                                      if second <= r["ended"] < second + 1))
        for name, values in outcome["probe_series"].items():
            ms = [v for at, v in values if second <= at < second + 1]
            row[name] = {"probes": len(ms), "max_ms": max(ms, default=None)}
        rows.append(row)
    return rows


def goals(report: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:
    kinds = report["answers"]
    allowed = {"ok", "refused", "deadline"}
    wrong = {kind: n for kind, n in kinds.items() if kind not in allowed}
    settled = report["settled_after_s"]
    out = [
        {"goal": "server peak RSS <= 2.5 GB", "measured": f"{report['rss_peak_mb']:.0f} MB",
         "met": report["rss_peak_mb"] <= PEAK_GOAL_MB},
        {"goal": "every answer a 200, a 429 with Retry-After or a 503/504 in JSON; none lost",
         "measured": ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items(), key=lambda kv: -kv[1])),
         "met": not wrong and report["answered"] == args.clients},
        {"goal": f"every 200 within its deadline ({args.deadline:g} s)",
         "measured": "-" if report["ok_max_s"] is None else f"slowest {report['ok_max_s']:.1f} s",
         "met": kinds.get("late", 0) == 0},
        {"goal": f"/health p99 <= {HEALTH_P99_MS:g} ms during the burst",
         "measured": _ms(report["health_p99_ms"]) + f" ({report['health_probes']} probes)",
         "met": report["health_p99_ms"] is not None and report["health_p99_ms"] <= HEALTH_P99_MS
         and not report["probe_failure_count"]},
        {"goal": f"text embedding p99 <= {TEXT_P99_MS:g} ms during the burst",
         "measured": _ms(report["text_p99_ms"]) + f" ({report['text_probes']} probes)",
         "met": report["text_p99_ms"] is not None and report["text_p99_ms"] <= TEXT_P99_MS
         and not report["probe_failure_count"]},
        {"goal": f"RSS <= pre-burst + {SETTLE_GOAL_MB:g} MB within 30 s of the burst's end",
         "measured": "not within the watch" if settled is None else f"after {settled:.1f} s",
         "met": settled is not None and settled <= 30},
    ]
    return out


def format_table(report: dict[str, Any]) -> str:
    head = report["setup"]
    jpeg = ", ".join(f"{mb:.1f}" for mb in head["jpeg_mb"])
    lines = [
        f"CPU: {head['cpu']} ({head['cores']} cores); {head['date']}; bundle {head['bundle']} ({head['model']}, "
        f"{head['precision']}); {head['clients']} clients at once, each one {head['image_size']} JPEG ({jpeg} MB; "
        f"X-Request-Timeout {head['deadline']:g} s); serve {' '.join(head['server_args'])}",
        "",
        "| clients | burst | 200 | 429 | 503/504 | other | 200 latency p50 / max | /health p50 / p99 | text p50 / p99 "
        "| RSS before → peak → burst end → 30 s later |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    kinds = report["answers"]
    other = sum(n for kind, n in kinds.items() if kind not in ("ok", "refused", "deadline"))
    lines.append(
        f"| {head['clients']} | {report['burst_seconds']:.1f} s | {kinds.get('ok', 0)} | {kinds.get('refused', 0)} | "
        f"{kinds.get('deadline', 0)} | {other} | {_s(report['ok_p50_s'])} / {_s(report['ok_max_s'])} | "
        f"{_ms(report['health_p50_ms'])} / {_ms(report['health_p99_ms'])} | {_ms(report['text_p50_ms'])} / "
        f"{_ms(report['text_p99_ms'])} | {megabytes(report['rss_before_mb'])} → {megabytes(report['rss_peak_mb'])} → "
        f"{megabytes(report['rss_burst_end_mb'])} → {megabytes(report['rss_after_settle_mb'])} |")
    lines += ["", *goals_table(report["goals"])]
    cpu = report["cpu"]
    lines += ["", f"CPU during the burst ({cpu['wall_s']:.1f} s): server {cpu['server_s']:.1f} s "
              f"({cpu['server_s'] / cpu['wall_s']:.2f} cores; its event loop's thread {cpu['server_loop_s']:.2f} s), clients {cpu['clients_s']:.1f} s "
              f"({cpu['clients_s'] / cpu['wall_s']:.2f} cores), probes {cpu['probes_s']:.1f} s (their process, "
              f"from 1 s before the burst); the whole machine {cpu['machine_s'] or 0:.1f} s "
              f"({(cpu['machine_s'] or 0) / cpu['wall_s']:.2f} cores, other processes included)", "",
              "| second | server cores | clients cores | answers | /health probes, worst | text probes, worst |",
              "|---:|---:|---:|---|---:|---:|"]
    for row in report["seconds"]:
        answers = ", ".join(f"{n} {kind}" for kind, n in sorted(row["answers"].items())) or "-"
        probes = [f"{row[name]['probes']}, {_ms(row[name]['max_ms'])}" for name in ("health", "text")]
        lines.append(f"| {row['second']} | {row.get('server_cores', '-')} | {row.get('clients_cores', '-')} | "
                     f"{answers} | {probes[0]} | {probes[1]} |")
    slow = {name: series for name, series in report["slow_probes"].items() if series}
    if slow:
        lines += ["", "probes over their goal (seconds after the burst began, ms): " + "; ".join(
            f"{name} {series[:12]}" for name, series in slow.items())]
    if report["probe_failure_count"]:
        lines += ["", f"probe failures: {report['probe_failure_count']}, e.g. {report['probe_failures'][:3]}"]
    if other:
        lines += ["", f"other answers: {report['examples']}"]
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


if __name__ == "__main__":
    sys.exit(main())
