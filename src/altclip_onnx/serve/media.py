"""Images from requests: data URIs or bare base64 in JSON, files in multipart forms, checked before decoding.

Every check that can be made without decoding is made first: the declared media type (415 for anything
but the image formats below), the base64 text, then the image's header, which gives its format (415 for
formats outside :data:`FORMATS`) and its size in pixels (413 above ``--max-pixels``, so a decompression
bomb, a small file that claims a huge image, is refused without being decoded), and the pixels of all a
request's images together (413 above ``--max-request-pixels``). Only then is the image
decoded and preprocessed, by the same functions :class:`~altclip_onnx.Encoder` uses, so its embedding is
the one ``Encoder.encode_images`` gives for the same bytes. URLs are never fetched.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from collections.abc import Sequence

import numpy as np
import pybase64
from PIL import Image, UnidentifiedImageError

from ..bundle import ImageSpec
from ..errors import InputError
from ..runtime.images import load_image, preprocess
from .errors import bad_request, too_large, unsupported_media

# Pillow formats accepted (others, e.g. EPS, which Pillow decodes by running Ghostscript, are refused).
FORMATS = {"JPEG": "image/jpeg", "MPO": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif",
           "BMP": "image/bmp", "TIFF": "image/tiff"}
# Media types a data URI or a form file may declare. application/octet-stream: "look at the bytes".
MEDIA_TYPES = {"image/jpeg", "image/jpg", "image/pjpeg", "image/png", "image/apng", "image/webp", "image/gif",
               "image/bmp", "image/x-bmp", "image/x-ms-bmp", "image/tiff", "application/octet-stream"}
ACCEPTED = "JPEG, PNG, WebP, GIF, BMP or TIFF"
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_BASE64 = re.compile(rb"^[A-Za-z0-9+/_-]*={0,2}$")


def check_media_type(media_type: str | None, where: str) -> None:
    """415 unless ``media_type`` (a Content-Type or a data URI's type, parameters allowed) is an accepted
    image type; None (not declared) passes, the bytes decide."""
    if media_type is None:
        return
    main = media_type.split(";")[0].strip().lower()
    if main and main not in MEDIA_TYPES:
        raise unsupported_media(f"{where}: {main} is not a supported image type; send {ACCEPTED}", param=where)


def image_bytes(value: object, where: str) -> bytes:
    """The bytes of an image given in JSON: a data URI (``data:image/jpeg;base64,...``) or bare base64."""
    if not isinstance(value, str):
        raise bad_request(f"{where}: expected an image as a data URI or base64 text, got {_json_type(value)}", where)
    text = value.strip()
    if text[:5].lower() == "data:":
        header, comma, payload = text.partition(",")
        if not comma:
            raise bad_request(f"{where}: not a data URI (no comma before the data)", where)
        params = [p.strip().lower() for p in header[5:].split(";")]
        check_media_type(params[0] or "text/plain", where)  # RFC 2397: no type means text/plain
        if "base64" not in params[1:]:
            raise bad_request(f"{where}: the data URI is not base64-encoded; send data:image/jpeg;base64,...", where)
    elif _URL.match(text):
        raise bad_request(f"{where}: image URLs are not fetched; send the image itself as a data URI or base64", where)
    else:
        payload = text
    data = _b64decode(payload, where)
    if not data:
        raise bad_request(f"{where}: the image is empty", where)
    return data


def _b64decode(payload: str, where: str) -> bytes:
    try:  # the common case, plain padded base64, in one strict SIMD pass (the standard library's is 10x slower)
        return pybase64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        pass
    raw = "".join(payload.split()).encode("ascii", "replace")  # line breaks, URL-safe letters, missing padding
    if not _BASE64.match(raw):
        raise bad_request(f"{where}: not valid base64 (send a data URI or base64 text)", where)
    raw += b"=" * (-len(raw) % 4)
    try:
        if b"-" in raw or b"_" in raw:
            return base64.urlsafe_b64decode(raw)
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise bad_request(f"{where}: not valid base64 ({exc})", where) from exc


def image_pixels(data: bytes, spec: ImageSpec, max_pixels: int, where: str) -> np.ndarray:
    """float32 [3, S, S] for the image tower, or the ApiError that says why not (see the module docstring).
    Runs in a worker thread: decoding is the slow part."""
    check_header(data, max_pixels, where)
    try:
        return preprocess(load_image(data), spec)
    except InputError as exc:
        raise bad_request(str(exc).replace("<bytes>", where, 1), where) from exc


def check_request_pixels(images: Sequence[tuple[bytes, str]], max_pixels: int, max_request_pixels: int,
                         param: str) -> int:
    """Every image's header checked (as :func:`check_header`), and their pixels together at most
    ``max_request_pixels`` (413 naming ``param`` otherwise): what decoding a request costs, in time and memory,
    is bounded before any of it is decoded. Returns the total."""
    total = 0
    for data, where in images:
        _, width, height = check_header(data, max_pixels, where)
        total += width * height
    if total > max_request_pixels:
        raise too_large(f"{param}: the images have {total:,} pixels together, over the limit of {max_request_pixels:,} "
                        "per request (--max-request-pixels); send fewer or smaller images per request", param)
    return total


def check_header(data: bytes, max_pixels: int, where: str) -> tuple[str, int, int]:
    """The image's format, width and height, read from its header only (nothing is decoded)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            fmt, (width, height) = image.format or "?", image.size
    except Image.DecompressionBombError as exc:  # Pillow's own limit (2 x MAX_IMAGE_PIXELS), from the header
        raise too_large(f"{where}: the image claims more pixels than it is safe to decode "
                        f"(the limit is {max_pixels:,} pixels)", where) from exc
    except UnidentifiedImageError as exc:
        raise bad_request(f"{where}: not an image file (or not a format the service reads: {ACCEPTED})", where) from exc
    except Exception as exc:  # a header cut short, or one Pillow cannot parse
        raise bad_request(f"{where}: truncated or corrupt image data", where) from exc
    if fmt not in FORMATS:
        raise unsupported_media(f"{where}: {fmt} images are not supported; send {ACCEPTED}", where)
    if width * height > max_pixels:
        raise too_large(f"{where}: {width}x{height} is {width * height:,} pixels, over the limit of {max_pixels:,} "
                        "(--max-pixels); send a smaller image", where)
    return fmt, width, height


def _json_type(value: object) -> str:
    return {str: "a string", dict: "an object", list: "an array", bool: "a boolean", int: "a number", float: "a number",
            type(None): "null"}.get(type(value), type(value).__name__)
