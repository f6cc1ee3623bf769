"""Dynamic batching seen from outside: 64 concurrent requests each get their own inputs' embeddings back,
equal to the Encoder's, and /metrics shows model calls that served several of them at once."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import httpx
import numpy as np

from altclip_onnx import Encoder

from .conftest import Server, cosine, data_uri, jpeg_bytes

WORDS = ["cat", "猫", "rocket", "ロケット", "coffee", "咖啡", "sunset", "日落", "beach", "plage", "Katze", "кот"]


def batch_counts(server: Server) -> dict[str, tuple[float, float]]:
    """Per tower: (model calls so far, calls with exactly one input)."""
    text = httpx.get(f"{server.url}/metrics").text
    counts = {}
    for tower in ("textual", "visual"):
        total = re.search(rf'altclip_batch_size_count{{tower="{tower}"}} ([0-9.e+]+)', text)
        ones = re.search(rf'altclip_batch_size_bucket{{le="1.0",tower="{tower}"}} ([0-9.e+]+)', text)
        counts[tower] = (float(total.group(1)) if total else 0.0, float(ones.group(1)) if ones else 0.0)
    return counts


def distinct_texts(encoder: Encoder, count: int) -> list[str]:
    """``count`` texts whose embeddings differ (cosine < 0.999 pairwise), so a row handed to the wrong request
    would show: the tiny test model embeds some different texts alike (unknown pieces)."""
    pool = [f"{a} {b}" for a in WORDS for b in WORDS if a != b] + [f"{a} {b} {c}" for a, b, c in
                                                                     zip(WORDS, WORDS[3:] + WORDS[:3], WORDS[7:] + WORDS[:7])]
    vectors = encoder.encode_texts(pool)
    chosen: list[int] = []
    for i in range(len(pool)):
        if all(float(vectors[i] @ vectors[j]) < 0.999 for j in chosen):
            chosen.append(i)
    assert len(chosen) >= count
    return [pool[i] for i in chosen[:count]]


def image_variants(library: list[Path]) -> list[bytes]:
    """16 different images: the photos, and each flipped."""
    from PIL import Image

    out = []
    for path in library:
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"))
        out += [path.read_bytes(), jpeg_bytes(array[:, ::-1].copy())]
    return out[:16]


def test_64_concurrent_requests_get_their_own_embeddings(search_server: Server, fp32_encoder: Encoder,
                                                         library: list[Path]) -> None:
    pool = iter(distinct_texts(fp32_encoder, 72))
    texts = [[next(pool) for _ in range(1 + i % 2)] for i in range(48)]
    images = image_variants(library)
    image_jobs = [[images[i]] if i % 3 else [images[i], images[(i + 7) % 16]] for i in range(16)]
    expected_texts = {t: v for t, v in zip(sum(texts, []), fp32_encoder.encode_texts(sum(texts, [])))}
    expected_images = fp32_encoder.encode_images(images)
    similar = expected_images @ expected_images.T - 2 * np.eye(len(images))
    assert similar.max() < 0.9999  # a row handed to the wrong request would show
    before = batch_counts(search_server)

    async def main() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        async with httpx.AsyncClient(base_url=search_server.url, headers=search_server.headers, timeout=60,
                                     limits=limits) as http:
            requests = [http.post("/v1/embeddings", json={"input": job, "model": "m", "encoding_format": "float"})
                        for job in texts]
            requests += [http.post("/v1/embeddings", json={"input": [data_uri(b) for b in job], "modality": "image",
                                                           "model": "m"}) for job in image_jobs]
            return list(await asyncio.gather(*requests))

    responses = asyncio.run(main())
    assert [r.status_code for r in responses] == [200] * 64
    all_texts = np.stack(list(expected_texts.values()))
    for job, response in zip(texts, responses[:48]):
        got = np.array([row["embedding"] for row in response.json()["data"]])
        assert len(got) == len(job)
        for text, vector in zip(job, got):
            assert cosine(vector, expected_texts[text])[0] >= 0.99999, text
            assert int(np.argmax(all_texts @ vector)) == list(expected_texts).index(text)  # its own, no other's
    for job, response in zip(image_jobs, responses[48:]):
        got = np.array([row["embedding"] for row in response.json()["data"]])
        want = np.stack([expected_images[images.index(b)] for b in job])
        assert got.shape == want.shape and cosine(got, want).min() >= 0.99999
    after = batch_counts(search_server)
    for tower in ("textual", "visual"):
        calls = after[tower][0] - before[tower][0]
        single = after[tower][1] - before[tower][1]
        assert calls - single >= 1, f"{tower}: no model call took more than one input"  # batches larger than 1
        assert calls < {"textual": 48, "visual": 16}[tower]  # fewer calls than requests: they were coalesced


def test_a_bad_image_fails_only_its_own_request(search_server: Server, fp32_encoder: Encoder,
                                                library: list[Path]) -> None:
    good = [p.read_bytes() for p in library[:6]]
    bad = good[0][: len(good[0]) // 3]

    async def main() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=search_server.url, headers=search_server.headers, timeout=60) as http:
            jobs = [[data_uri(b)] for b in good] + [[data_uri(good[1]), data_uri(bad)]]
            return list(await asyncio.gather(*(http.post("/v1/embeddings", json={"input": job, "modality": "image"})
                                               for job in jobs)))

    responses = asyncio.run(main())
    assert [r.status_code for r in responses] == [200] * 6 + [400]
    assert "input[1]: truncated or corrupt image data" in responses[-1].json()["error"]["message"]
    got = np.array([r.json()["data"][0]["embedding"] for r in responses[:6]])
    assert cosine(got, fp32_encoder.encode_images(good)).min() >= 0.99999
    assert search_server.healthy()


def test_int8_vectors_do_not_depend_on_who_shares_the_model_call(tiny_bundle: Path, fp32_encoder: Encoder,
                                                                 library: list[Path], tmp_path: Path) -> None:
    """int8 (what auto serves on a CPU) quantizes each row with its own scale: a text or image answered
    inside a coalesced call equals the same input embedded alone."""
    int8 = Encoder(tiny_bundle, provider="cpu", precision="int8")
    texts = distinct_texts(fp32_encoder, 32)
    images = image_variants(library)[:8]
    alone_texts = np.concatenate([int8.encode_texts([t]) for t in texts])
    alone_images = np.concatenate([int8.encode_images([b]) for b in images])  # bytes, as the service gets them
    server = Server.start(str(tiny_bundle), "--precision", "int8", "--max-wait-ms", "50",
                          log_path=tmp_path / "int8.log")
    try:
        before = batch_counts(server)

        async def main() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
                requests = [http.post("/v1/embeddings", json={"input": t, "model": "m", "encoding_format": "float"})
                            for t in texts]
                requests += [http.post("/v1/embeddings", json={"input": data_uri(b), "modality": "image", "model": "m",
                                                               "encoding_format": "float"}) for b in images]
                return list(await asyncio.gather(*requests))

        responses = asyncio.run(main())
        assert [r.status_code for r in responses] == [200] * 40
        after = batch_counts(server)
    finally:
        assert server.stop() == 0, server.log()
    got = np.array([r.json()["data"][0]["embedding"] for r in responses], dtype=np.float32)
    np.testing.assert_allclose(got[:32], alone_texts, atol=2e-6)
    np.testing.assert_allclose(got[32:], alone_images, atol=2e-6)
    for tower in ("textual", "visual"):
        assert after[tower][0] - after[tower][1] > before[tower][0] - before[tower][1], f"{tower}: never batched"

