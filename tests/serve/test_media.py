"""serve/media.py alone: images from data URIs and base64, refused by their declared type or their header
before any decoding, and otherwise exactly the Encoder's pixels."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from altclip_onnx import Encoder
from altclip_onnx.serve.errors import ApiError
from altclip_onnx.serve.media import check_header, image_bytes, image_pixels

from .conftest import data_uri, jpeg_bytes, photo_array


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, followed by a tiny (wrong) image stream: a decompression bomb
    as far as any header check can tell."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def status_of(call) -> int:  # type: ignore[no-untyped-def]
    with pytest.raises(ApiError) as caught:
        call()
    error = caught.value
    assert error.body()["error"]["message"] == error.message and error.message
    return error.status


def test_data_uris_and_bare_base64_give_the_bytes() -> None:
    data = jpeg_bytes(photo_array("coffee"))
    b64 = base64.b64encode(data).decode()
    assert image_bytes(data_uri(data), "input") == data
    assert image_bytes(f"data:image/jpeg;charset=x;base64,{b64}", "input") == data
    assert image_bytes(b64, "input") == data
    assert image_bytes(b64.rstrip("="), "input") == data  # padding is optional
    assert image_bytes("\n".join(b64[i : i + 76] for i in range(0, len(b64), 76)), "input") == data  # MIME lines
    assert image_bytes(base64.urlsafe_b64encode(data).decode(), "input") == data
    assert image_bytes(data_uri(data, "application/octet-stream"), "input") == data


@pytest.mark.parametrize(("value", "status", "words"), [
    (5, 400, "expected an image"),
    ("data:image/png,rawbytes", 400, "not base64-encoded"),
    ("data:image/jpeg;base64", 400, "no comma"),
    ("data:text/plain;base64,aGVsbG8=", 415, "text/plain is not a supported image type"),
    ("data:image/svg+xml;base64,PHN2Zy8+", 415, "image/svg+xml"),
    ("data:;base64,aGVsbG8=", 415, "text/plain"),
    ("https://example.org/cat.jpg", 400, "URLs are not fetched"),
    ("not base64 at all!", 400, "not valid base64"),
    ("", 400, "empty"),
])
def test_bad_image_values(value: object, status: int, words: str) -> None:
    with pytest.raises(ApiError) as caught:
        image_bytes(value, "input[3]")
    assert caught.value.status == status
    assert words in caught.value.message and caught.value.message.startswith("input[3]")


def test_header_checks_refuse_without_decoding() -> None:
    # Over --max-pixels by the header: 413, though the data would not even decode (so nothing was decoded).
    assert status_of(lambda: check_header(png_header(1200, 1000), 1_000_000, "input")) == 413
    # A bomb beyond Pillow's own limit: still 413, not Pillow's exception.
    assert status_of(lambda: check_header(png_header(100_000, 100_000), 50_000_000, "input")) == 413
    assert check_header(png_header(1000, 1000), 1_000_000, "input") == ("PNG", 1000, 1000)
    assert status_of(lambda: check_header(b"hello, world", 10**6, "input")) == 400
    assert status_of(lambda: check_header(png_header(10, 10)[:20], 10**6, "input")) == 400  # header cut short
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n%%EndComments\n"
    assert status_of(lambda: check_header(eps, 10**6, "input")) == 415  # Pillow would run Ghostscript


def test_pixels_equal_the_encoders(tiny_bundle: Path) -> None:
    encoder = Encoder(tiny_bundle, precision="fp32")
    for data in (jpeg_bytes(photo_array("astronaut")), _png(photo_array("camera"))):
        np.testing.assert_array_equal(image_pixels(data, encoder.manifest.image, 10**7, "x"), encoder.preprocess(data)[0])
    truncated = jpeg_bytes(photo_array("chelsea"))
    with pytest.raises(ApiError) as caught:
        image_pixels(truncated[: len(truncated) // 2], encoder.manifest.image, 10**7, "input[1]")
    assert caught.value.status == 400 and caught.value.message == "input[1]: truncated or corrupt image data"


def _png(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, "PNG")
    return out.getvalue()
