"""Replicas: several ``altclip-onnx serve`` processes on one PostgreSQL index, as behind a load balancer, answer
the same searches, also while ``altclip-onnx index`` writes to that index (docs/serve.md, "Replicas")."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from altclip_onnx import Encoder, Index

from ..serve.conftest import PHOTOS, SRC, Server, photo_array
from .server import PgServer

QUERIES = ("海边的日落", "a cat on a sofa", "一只猫")


def photos(folder: Path, names: tuple[str, ...]) -> Path:
    folder.mkdir(parents=True)
    for name in names:
        Image.fromarray(photo_array(name)).convert("RGB").save(folder / f"{name}.jpg", quality=90)
    return folder


def hits(server: Server, query: str, k: int = 20) -> list[tuple[int, str, float]]:
    answer = httpx.get(f"{server.url}/v1/search", params={"q": query, "k": k}, timeout=30)
    assert answer.status_code == 200, (answer.text, server.log())
    return [(hit["id"], hit["path"], hit["score"]) for hit in answer.json()["data"]]


def same(a: list[tuple[int, str, float]], b: list[tuple[int, str, float]]) -> None:
    assert [(i, p) for i, p, _ in a] == [(i, p) for i, p, _ in b]
    assert [s for *_, s in a] == pytest.approx([s for *_, s in b], abs=1e-6)


def test_two_replicas_on_one_index_answer_the_same_while_it_is_written(
        tiny_bundle: Path, pg_server: PgServer, pg_uri: str, tmp_path: Path) -> None:
    """Four photos indexed; two servers on the index (free loopback ports); then ``index`` adds four more in
    batches of one (each its own transaction) while both are queried. Every answer meanwhile is a 200 with 4..8
    hits, never fewer than the last; once the run has exited, both give the same ids, paths and scores for
    every query, by text and by id, the same as ``Index.search_text`` in this process, and both count 8. When the
    server ends their connections, both answer the next searches as before."""
    first = photos(tmp_path / "first", PHOTOS[:4])
    later = photos(tmp_path / "later", PHOTOS[4:])
    encoder = Encoder(tiny_bundle, provider="cpu", precision="fp32")
    with Index.open(pg_uri, create=True) as index:
        index.update(encoder, first, progress=False)
    replicas = [Server.start(str(tiny_bundle), "--db", pg_uri, log_path=tmp_path / f"replica-{i}.log")
                for i in range(2)]
    try:
        for query in QUERIES:
            a, b = (hits(server, query) for server in replicas)
            assert len(a) == 4
            same(a, b)
        writer = subprocess.Popen(
            [sys.executable, "-m", "altclip_onnx.cli", "index", str(tiny_bundle), str(later), "--db", pg_uri,
             "--precision", "fp32", "--batch-size", "1", "--workers", "0"],
            env=dict(os.environ, PYTHONPATH=str(SRC)),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        seen: dict[int, list[int]] = {0: [], 1: []}
        deadline = time.monotonic() + 120
        while writer.poll() is None and time.monotonic() < deadline:
            for i, server in enumerate(replicas):
                seen[i].append(len(hits(server, QUERIES[0])))
            time.sleep(0.05)
        output = writer.communicate(timeout=30)[0].decode(errors="replace")
        assert writer.returncode == 0, output
        assert seen[0] and seen[1], "no search answered while the index was written"
        for counts in seen.values():
            assert all(4 <= n <= 8 for n in counts) and counts == sorted(counts), seen
        with Index.open(pg_uri) as index:
            expected = {query: index.search_text(encoder, query, k=20) for query in QUERIES}
        for query in QUERIES:
            a, b = (hits(server, query) for server in replicas)
            assert len(a) == 8
            same(a, b)
            assert [(p, pytest.approx(s, abs=1e-5)) for _, p, s in a] == \
                [(hit.path, hit.score) for hit in expected[query]]
        row = a[-1][0]  # a photo of the later run, by id: its stored vector, read by each replica
        by_id = [httpx.get(f"{server.url}/v1/search", params={"id": row, "k": 5}, timeout=30).json()["data"]
                 for server in replicas]
        assert by_id[0] == by_id[1] and len(by_id[0]) == 5
        for server in replicas:
            assert httpx.get(f"{server.url}/health", timeout=10).json()["images"] == 8
            thumbnail = httpx.get(f"{server.url}/v1/thumbnails/{row}", timeout=30)
            assert thumbnail.status_code == 200 and thumbnail.headers["content-type"] == "image/jpeg"
        # The server ends every replica's connection (as a restart or a failover would): each connects again by
        # itself, and the request that found its connection gone is answered on the new one.
        database = pg_uri.rsplit("/", 1)[1]
        ended = pg_server.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = "
                              f"'{database}' AND application_name = 'altclip-onnx'")
        assert len(ended) == 2, ended
        time.sleep(0.2)
        for query in QUERIES:
            a, b = (hits(server, query) for server in replicas)
            same(a, b)
            assert [p for _, p, _ in a] == [hit.path for hit in expected[query]]
        for server in replicas:
            assert httpx.get(f"{server.url}/health", timeout=10).json()["images"] == 8
            assert "connecting again" in server.log()
    finally:
        codes = [server.stop() for server in replicas]
    assert codes == [0, 0], [server.log() for server in replicas]

