"""Bad input never gets a 500: each refusal has its status, OpenAI's error shape and a message saying what
was wrong, and the server still answers /health afterwards. The search server runs with --max-body-mb 1
and --max-pixels 1000000."""

from __future__ import annotations

import base64
import io
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from altclip_onnx.serve_options import MAX_IMAGES, MAX_K, MAX_TEXT_CHARS, MAX_TEXTS

from .conftest import API_KEY, Server, data_uri, jpeg_bytes, photo_array
from .test_media import png_header

COFFEE = jpeg_bytes(photo_array("coffee"))
BIG = np.tile(photo_array("coffee")[:100, :100], (13, 12, 1))  # 1300 x 1200: 1.56 megapixels, a small file


def png(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, "PNG")
    return out.getvalue()


JSON = "application/json"
# (name, method, path, content type, body or None, status, words in the message)
CASES = [
    ("malformed JSON", "POST", "/v1/embeddings", JSON, b'{"input": ["cat"', 400, "not valid JSON"),
    ("not UTF-8", "POST", "/v1/embeddings", JSON, b'{"input": "\xff\xfe"}', 400, "not valid JSON"),
    ("empty body", "POST", "/v1/embeddings", JSON, b"", 400, "body is empty"),
    ("JSON array", "POST", "/v1/embeddings", JSON, b'["cat"]', 400, "JSON object"),
    ("no input", "POST", "/v1/embeddings", JSON, {"model": "m"}, 400, "input is missing"),
    ("input a number", "POST", "/v1/embeddings", JSON, {"input": 5}, 400, "input must be a string or an array"),
    ("input an object", "POST", "/v1/embeddings", JSON, {"input": {"text": "cat"}}, 400, "input must be"),
    ("token ids", "POST", "/v1/embeddings", JSON, {"input": [101, 102]}, 400, "token arrays are not supported"),
    ("token arrays", "POST", "/v1/embeddings", JSON, {"input": [[101, 102]]}, 400, "token arrays are not supported"),
    ("a null text", "POST", "/v1/embeddings", JSON, {"input": ["cat", None]}, 400, "input[1] must be a string"),
    ("empty string", "POST", "/v1/embeddings", JSON, {"input": ""}, 400, "input[0] is empty"),
    ("blank text", "POST", "/v1/embeddings", JSON, {"input": ["cat", "  "]}, 400, "input[1] is empty"),
    ("empty list", "POST", "/v1/embeddings", JSON, {"input": []}, 400, "input is empty"),
    ("too many texts", "POST", "/v1/embeddings", JSON, {"input": ["a"] * (MAX_TEXTS + 1)}, 400, f"at most {MAX_TEXTS}"),
    ("text too long", "POST", "/v1/embeddings", JSON, {"input": "a" * (MAX_TEXT_CHARS + 1)}, 400, "characters"),
    ("bad modality", "POST", "/v1/embeddings", JSON, {"input": "cat", "modality": "audio"}, 400, "modality"),
    ("bad encoding", "POST", "/v1/embeddings", JSON, {"input": "cat", "encoding_format": "hex"}, 400, "encoding_format"),
    ("bad dimensions", "POST", "/v1/embeddings", JSON, {"input": "cat", "dimensions": 3}, 400, "dimensions"),
    ("too many images", "POST", "/v1/embeddings", JSON,
     {"input": ["x"] * (MAX_IMAGES + 1), "modality": "image"}, 400, f"at most {MAX_IMAGES}"),
    ("image not a string", "POST", "/v1/embeddings", JSON, {"input": [7], "modality": "image"}, 400, "input[0]"),
    ("non-image bytes", "POST", "/v1/embeddings", JSON,
     {"input": [data_uri(COFFEE), base64.b64encode(b"hello, world").decode()], "modality": "image"}, 400,
     "input[1]: not an image"),
    ("truncated image", "POST", "/v1/embeddings", JSON,
     {"input": [data_uri(COFFEE[: len(COFFEE) // 2])], "modality": "image"}, 400, "truncated or corrupt"),
    ("not base64", "POST", "/v1/embeddings", JSON, {"input": "data:image/jpeg;base64,@@@@", "modality": "image"}, 400,
     "not valid base64"),
    ("an image URL", "POST", "/v1/embeddings", JSON, {"input": "http://127.0.0.1/x.jpg", "modality": "image"}, 400,
     "not fetched"),
    ("text media", "POST", "/v1/embeddings", JSON,
     {"input": "data:text/plain;base64,aGVsbG8=", "modality": "image"}, 415, "not a supported image type"),
    ("SVG", "POST", "/v1/embeddings", JSON,
     {"input": data_uri(b"<svg xmlns='http://www.w3.org/2000/svg'/>", "image/svg+xml"), "modality": "image"}, 415,
     "image/svg+xml"),
    ("EPS bytes", "POST", "/v1/embeddings", JSON,
     {"input": base64.b64encode(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n").decode(), "modality": "image"},
     415, "EPS images are not supported"),
    ("form to the JSON API", "POST", "/v1/embeddings", "application/x-www-form-urlencoded", b"input=cat", 415,
     "send JSON"),
    ("text/plain body", "POST", "/v1/classify", "text/plain", b"cat", 415, "send JSON"),
    ("over --max-pixels", "POST", "/v1/embeddings", JSON, {"input": data_uri(png(BIG), "image/png"), "modality": "image"},
     413, "over the limit of 1,000,000"),
    ("over --max-pixels, header only", "POST", "/v1/embeddings", JSON,
     {"input": data_uri(png_header(1300, 1200), "image/png"), "modality": "image"}, 413, "1300x1200"),
    ("decompression bomb", "POST", "/v1/embeddings", JSON,
     {"input": data_uri(png_header(100_000, 100_000), "image/png"), "modality": "image"}, 413, "pixels"),
    ("classify without labels", "POST", "/v1/classify", JSON, {"input": data_uri(COFFEE)}, 400, "labels is missing"),
    ("classify, labels not a list", "POST", "/v1/classify", JSON, {"input": data_uri(COFFEE), "labels": "cat"}, 400,
     "labels must be an array"),
    ("classify, a label twice", "POST", "/v1/classify", JSON,
     {"input": data_uri(COFFEE), "labels": ["cat", "dog", "cat"]}, 400, "given twice"),
    ("classify, template without {}", "POST", "/v1/classify", JSON,
     {"input": data_uri(COFFEE), "labels": ["cat"], "templates": ["a photo"]}, 400, "has no {}"),
    ("classify, empty templates", "POST", "/v1/classify", JSON,
     {"input": data_uri(COFFEE), "labels": ["cat"], "templates": []}, 400, "templates is empty"),
    ("classify, no images", "POST", "/v1/classify", JSON, {"input": [], "labels": ["cat"]}, 400, "input is empty"),
    ("search, nothing", "POST", "/v1/search", JSON, {"k": 3}, 400, "exactly one of"),
    ("search, two things", "POST", "/v1/search", JSON, {"query": "cat", "id": 1}, 400, "exactly one of"),
    ("search, k zero", "POST", "/v1/search", JSON, {"query": "cat", "k": 0}, 400, f"k must be 1..{MAX_K}"),
    ("search, k huge", "GET", f"/v1/search?q=cat&k={MAX_K + 1}", None, None, 400, "k must be"),
    ("search, k text", "GET", "/v1/search?q=cat&k=ten", None, None, 400, "k must be an integer"),
    ("search, k a bool", "POST", "/v1/search", JSON, {"query": "cat", "k": True}, 400, "k must be an integer"),
    ("search, empty query", "GET", "/v1/search?q=%20", None, None, 400, "query text is empty"),
    ("search, no q", "GET", "/v1/search", None, None, 400, "?q="),
    ("search, query a list", "POST", "/v1/search", JSON, {"query": ["cat"]}, 400, "query must be a string"),
    ("search, unknown id", "POST", "/v1/search", JSON, {"id": 123456}, 404, "no photo with id"),
    ("search, negative id", "POST", "/v1/search", JSON, {"id": -3}, 400, "id must be"),
    ("unknown endpoint", "GET", "/v1/nothing", None, None, 404, "no such endpoint"),
    ("wrong method", "GET", "/v1/embeddings", None, None, 405, "not allowed"),
    ("unknown asset", "GET", "/static/secret.py", None, None, 404, "no such file"),
]


@pytest.mark.parametrize(("name", "method", "path", "kind", "body", "status", "words"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_its_status(search_server: Server, name: str, method: str, path: str, kind: str | None,
                                   body: object, status: int, words: str) -> None:
    import json as jsonlib

    content = body if isinstance(body, bytes) or body is None else jsonlib.dumps(body).encode()
    headers = dict(search_server.headers)
    if kind:
        headers["Content-Type"] = kind
    with search_server.client() as http:
        response = http.request(method, path, content=content, headers=headers)
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert words in error["message"], error["message"]
        assert error["type"] and set(error) == {"message", "type", "param", "code"}
        assert http.get("/health").json()["status"] == "ok"


def form_cases(library: list[Path]) -> list[tuple[str, dict, list, int, str]]:
    photo = library[0].read_bytes()
    return [
        ("a text file", {"label": ["cat"]}, [("image", ("notes.txt", b"hello", "text/plain"))], 415, "text/plain"),
        ("no image", {}, [("label", (None, b"cat"))], 400, "no image"),
        ("no labels", {}, [("image", ("a.jpg", photo, "image/jpeg"))], 400, "no labels"),
        ("an empty file", {"label": ["cat"]}, [("image", ("a.jpg", b"", "image/jpeg"))], 400, "empty"),
        ("a text label file", {}, [("image", ("a.jpg", photo, "image/jpeg")), ("label", ("l.txt", b"cat", "text/plain"))],
         400, "text field"),
    ]


def test_bad_forms(search_server: Server, library: list[Path]) -> None:
    with search_server.client() as http:
        for name, data, files, status, words in form_cases(library):
            response = http.post("/v1/classify", data=data, files=files)
            assert response.status_code == status, (name, response.text)
            assert words in response.json()["error"]["message"], name
        garbled = http.post("/v1/classify", content=b"--x\r\nnonsense", headers={"Content-Type": "multipart/form-data"})
        assert garbled.status_code == 400 and "error" in garbled.json()
        assert http.get("/health").json()["status"] == "ok"


def raw_request(server: Server, head: str, body: bytes = b"", *, timeout: float = 10.0) -> tuple[int, bytes]:
    """Send ``head`` (and ``body``) on a plain socket; return the status and the whole answer."""
    with socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1])), timeout=timeout) as sock:
        sock.sendall(head.encode() + body)
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < _length(answer):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    return int(answer.split(b" ", 2)[1]), answer


def _length(answer: bytes) -> int:
    for line in answer.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


def test_a_large_body_is_refused_before_it_is_sent(search_server: Server) -> None:
    """Content-Length over --max-body-mb: the 413 comes back though not one byte of the body was sent."""
    started = time.perf_counter()
    status, answer = raw_request(search_server, "POST /v1/embeddings HTTP/1.1\r\nHost: x\r\n"
                                 f"Authorization: Bearer {API_KEY}\r\nContent-Type: application/json\r\n"
                                 f"Content-Length: {50 * 1024 * 1024}\r\n\r\n")
    assert status == 413 and b"over the limit of 1 MB" in answer and b'"type"' in answer
    assert time.perf_counter() - started < 5
    assert search_server.healthy()


def test_a_large_chunked_body_is_cut_off(search_server: Server) -> None:
    """No Content-Length (chunked): refused as soon as the bytes received pass the limit."""
    chunk = b"x" * 65536
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(40)) + b"0\r\n\r\n"  # 2.5 MB
    status, answer = raw_request(search_server, "POST /v1/embeddings HTTP/1.1\r\nHost: x\r\n"
                                 f"Authorization: Bearer {API_KEY}\r\nContent-Type: application/json\r\n"
                                 "Transfer-Encoding: chunked\r\n\r\n", body)
    assert status == 413 and b"request_too_large" in answer
    assert search_server.healthy()


def test_a_body_under_the_limit_is_read(search_server: Server) -> None:
    texts = ["a photo of a cat " * 10] * 200  # about 700 KB of JSON: under 1 MB
    with search_server.client() as http:
        response = http.post("/v1/embeddings", json={"input": texts, "model": "m"})
    assert response.status_code == 200 and len(response.json()["data"]) == 200
