"""The HTTP API of a real server (uvicorn in a subprocess): the official openai client, classify and search
against the command line, thumbnails, health, metrics, the API key."""

from __future__ import annotations

import base64
import importlib.util
import io
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from altclip_onnx import Encoder
from altclip_onnx.cli import main

from .conftest import API_KEY, Server, cosine, data_uri, missing

if importlib.util.find_spec("openai") is None:
    missing("openai", "pip install -e '.[test-services]'")
import openai  # noqa: E402

TEXTS = ["a photo of a cat", "海边的日落", "Ein Foto einer Rakete.", "صورة لقطة", "東京の夜景", "x" * 3000]


def client(server: Server, key: str | None = API_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key or "none", max_retries=0, timeout=30)


def test_openai_client_text_embeddings_equal_the_encoders(search_server: Server, fp32_encoder: Encoder) -> None:
    expected = fp32_encoder.encode_texts(TEXTS)
    for fmt in ("base64", "float", None):  # None: the client's default, which asks for base64
        kwargs = {"encoding_format": fmt} if fmt else {}
        response = client(search_server).embeddings.create(model="AltCLIP-m18", input=TEXTS, **kwargs)
        if fmt == "base64":  # asked for explicitly, the client hands it over undecoded
            got = np.stack([np.frombuffer(base64.b64decode(row.embedding), dtype="<f4") for row in response.data])
        else:
            got = np.array([row.embedding for row in response.data], dtype=np.float32)
        assert [row.index for row in response.data] == list(range(len(TEXTS)))
        assert got.shape == expected.shape
        assert cosine(got, expected).min() >= 0.99999
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)  # L2-normalized
        assert response.model == fp32_encoder.manifest.variant
        tokens = sum(int(m.sum()) for m in fp32_encoder.tokenize(TEXTS)["attention_mask"])
        assert response.usage.prompt_tokens == response.usage.total_tokens == tokens
    one = client(search_server).embeddings.create(model="m", input="海边的日落", encoding_format="float")
    assert cosine(np.array(one.data[0].embedding), expected[1])[0] >= 0.99999


def test_openai_client_image_embeddings_equal_the_encoders(search_server: Server, fp32_encoder: Encoder,
                                                           library: list[Path]) -> None:
    photos = [p.read_bytes() for p in library[:4]]
    inputs = [data_uri(photos[0]), base64.b64encode(photos[1]).decode(), data_uri(photos[2]), data_uri(photos[3])]
    response = client(search_server).embeddings.create(model="AltCLIP-m18", input=inputs,
                                                       extra_body={"modality": "image"})
    got = np.array([row.embedding for row in response.data], dtype=np.float32)
    assert cosine(got, fp32_encoder.encode_images(photos)).min() >= 0.99999
    assert response.usage.prompt_tokens == 0


def test_the_key_is_needed_under_v1_only(search_server: Server) -> None:
    with pytest.raises(openai.AuthenticationError):
        client(search_server, key="wrong").embeddings.create(model="m", input="cat")
    assert client(search_server).embeddings.create(model="m", input="cat").data
    for path in ("/v1/models", "/v1/search?q=cat", "/v1/thumbnails/1"):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {API_KEY}"},
                        {"Authorization": API_KEY}):
            response = httpx.get(search_server.url + path, headers=headers)
            assert response.status_code == 401, (path, headers)
            assert response.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(search_server.url + path, headers=search_server.headers).status_code == 200, path
    for path in ("/health", "/metrics", "/", "/static/app.js"):  # open without the key
        assert httpx.get(search_server.url + path).status_code == 200, path


def test_models_and_health(search_server: Server, fp32_encoder: Encoder, library: list[Path]) -> None:
    models = client(search_server).models.list()
    assert [m.id for m in models.data] == [fp32_encoder.manifest.variant]
    health = httpx.get(f"{search_server.url}/health").json()
    assert health["status"] == "ok" and health["search"] is True and health["images"] == len(library)
    assert health["embedding_dim"] == fp32_encoder.embedding_dim
    assert health["precision"] == {"visual": "fp32", "textual": "fp32"}
    assert health["variant"] == fp32_encoder.manifest.variant


def cli_json(*args: object) -> object:
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_classify_equals_the_cli(search_server: Server, tiny_bundle: Path, library: list[Path]) -> None:
    labels = ["猫", "a rocket", "一杯咖啡", "ciel étoilé"]
    photos = library[:3]
    expected = cli_json("classify", tiny_bundle, *photos, "--json", "--precision", "fp32",
                        *(x for label in labels for x in ("--label", label)))
    with search_server.client() as http:
        body = http.post("/v1/classify", json={"input": [data_uri(p.read_bytes()) for p in photos],
                                               "labels": labels}).json()
        # The same as a multipart form (as the page sends it).
        form = http.post("/v1/classify", data={"label": labels},
                         files=[("image", (p.name, p.read_bytes(), "image/jpeg")) for p in photos]).json()
        templated = http.post("/v1/classify", json={"input": data_uri(photos[0].read_bytes()), "labels": labels,
                                                    "templates": ["一张{}的照片"]}).json()
    expected_templated = cli_json("classify", tiny_bundle, photos[0], "--json", "--precision", "fp32",
                                  "--template", "一张{}的照片", "--labels", ",".join(labels))
    assert body["labels"] == labels
    for got in (body, form):
        assert [row["index"] for row in got["data"]] == [0, 1, 2]
        for row, want in zip(got["data"], expected):  # type: ignore[arg-type]
            assert list(row["probabilities"]) == labels
            np.testing.assert_allclose([row["probabilities"][l] for l in labels],
                                       [want["probabilities"][l] for l in labels], atol=2e-6)
    np.testing.assert_allclose(list(templated["data"][0]["probabilities"].values()),
                               list(expected_templated[0]["probabilities"].values()), atol=2e-6)  # type: ignore[index]


def test_search_equals_the_cli(search_server: Server, index_db: Path, library: list[Path]) -> None:
    query = "海边的日落"
    expected = cli_json("search", "--db", index_db, query, "--json", "-k", 5, "--precision", "fp32")
    by_image = cli_json("search", "--db", index_db, "--image", library[2], "--json", "-k", 3, "--precision", "fp32")
    with search_server.client() as http:
        posted = http.post("/v1/search", json={"query": query, "k": 5}).json()["data"]
        got = http.get("/v1/search", params={"q": query, "k": 5}).json()["data"]
        image = http.post("/v1/search", json={"image": data_uri(library[2].read_bytes()), "k": 3}).json()["data"]
        form = http.post("/v1/search", data={"k": "3"},
                         files={"image": (library[2].name, library[2].read_bytes(), "image/jpeg")}).json()["data"]
        similar = http.post("/v1/search", json={"id": image[0]["id"], "k": 3}).json()["data"]
    for hits, want in ((posted, expected), (got, expected), (image, by_image), (form, by_image)):
        assert [(h["id"], h["path"]) for h in hits] == [(w["id"], w["path"]) for w in want]  # type: ignore[index]
        np.testing.assert_allclose([h["score"] for h in hits], [w["score"] for w in want], atol=2e-6)  # type: ignore[index]
        assert all(h["thumbnail"] == f"/v1/thumbnails/{h['id']}" for h in hits)
    assert image[0]["path"] == str(library[2]) and image[0]["score"] > 0.9999  # a photo finds itself first
    assert similar[0]["id"] == image[0]["id"] and similar[0]["score"] > 0.9999


def test_thumbnails_by_id_only(search_server: Server, library: list[Path]) -> None:
    with search_server.client() as http:
        hits = http.get("/v1/search", params={"q": "cat", "k": len(library)}).json()["data"]
        assert sorted(h["path"] for h in hits) == sorted(map(str, library))
        for hit in hits[:3]:
            response = http.get(hit["thumbnail"])
            assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
            thumb = Image.open(io.BytesIO(response.content))
            assert thumb.format == "JPEG" and max(thumb.size) <= 256
            with Image.open(hit["path"]) as original:  # the same photo, scaled down
                assert abs(thumb.width / thumb.height - original.width / original.height) < 0.02
        for path in ("/v1/thumbnails/999999", "/v1/thumbnails/99999999999999999999999", "/v1/thumbnails/-1",
                     "/v1/thumbnails/..%2F..%2Fetc%2Fpasswd", "/v1/thumbnails/%2Fetc%2Fpasswd",
                     f"/v1/thumbnails/{library[0]}", "/v1/thumbnails/1.jpg", "/static/..%2Fapp.py",
                     "/static/../serve/app.py"):
            response = http.get(path)
            assert response.status_code == 404, path
            assert "error" in response.json()
            assert not response.content.startswith(b"root:")


def test_metrics_are_prometheus_text(search_server: Server) -> None:
    with search_server.client() as http:
        http.post("/v1/embeddings", json={"input": ["one", "two"], "model": "m"})
        text = http.get("/metrics").text
    assert "# TYPE altclip_requests_total counter" in text
    assert 'altclip_requests_total{method="POST",route="/v1/embeddings",status="200"}' in text
    for name in ("altclip_request_seconds_bucket", "altclip_batch_size_bucket", "altclip_batch_seconds_bucket",
                 "altclip_queue_depth", "altclip_requests_in_flight", "altclip_inputs_total", "altclip_model_info"):
        assert name in text, name


def test_cors_is_off_unless_asked(search_server: Server, zeroshot_server: Server) -> None:
    preflight = {"Origin": "https://elsewhere.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}
    for server in (search_server, zeroshot_server):
        response = httpx.options(f"{server.url}/v1/embeddings", headers=preflight)
        assert "access-control-allow-origin" not in response.headers
        response = httpx.get(f"{server.url}/health", headers={"Origin": "https://elsewhere.example"})
        assert "access-control-allow-origin" not in response.headers


def test_search_needs_an_index(zeroshot_server: Server) -> None:
    for method, path in (("GET", "/v1/search?q=cat"), ("POST", "/v1/search"), ("GET", "/v1/thumbnails/1")):
        response = httpx.request(method, zeroshot_server.url + path, json={"query": "cat"} if method == "POST" else None)
        assert response.status_code == 404
        assert "--db" in response.json()["error"]["message"]
    assert httpx.get(f"{zeroshot_server.url}/health").json()["search"] is False
