"""Images in, ``pixel_values`` out: CLIPImageProcessor's PIL path without torch or transformers.

``preprocess`` equals transformers 5's ``CLIPImageProcessorPil`` (the PIL backend, configured
from the bundle's :class:`~altclip_onnx.bundle.ImageSpec`) bit for bit on the same decoded
image, for every PIL mode except 16- and 32-bit integer images (see :func:`to_rgb`) and aspect
ratios beyond about 670:1 (see ``_resize``).

This module is part of the runtime half: it imports only numpy, Pillow and the standard library.
"""

from __future__ import annotations

import functools
import io
import os
from collections.abc import Iterable
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..bundle import ImageSpec
from ..errors import InputError

ImageInput = Union[str, os.PathLike, bytes, Image.Image, np.ndarray]

IMAGE_BATCH_SIZE = 8  # images per model call unless told otherwise (every layer's default; the first-use check runs it)
# Above this many pixels the full shortest-edge resize is not computed; only the crop window is
# (see _resize). It is reached only by absurd aspect ratios (about 670:1 at 224), where the full
# resize would need gigabytes: a 1 x 100000 PNG would become 224 x 22400000.
_MAX_RESIZED_PIXELS = 1 << 25


def load_image(item: ImageInput, *, draft: bool = False, size: int | None = None) -> Image.Image:
    """Decode ``item`` into a fully loaded PIL image.

    ``item`` is a path (``str`` or ``os.PathLike``), the bytes of an image file, a PIL image
    (returned as is, after forcing it to decode), or a uint8 numpy array of shape HW, HW1, HW2,
    HW3 or HW4 (L, L, LA, RGB, RGBA). Files and bytes are turned upright by their EXIF
    orientation, as an image viewer shows them. Any failure raises :class:`InputError` with one
    line naming the path (``<bytes>``, ``<array>`` or ``<PIL image>`` otherwise) and the reason.

    ``draft=True`` lets Pillow decode JPEGs at a reduced scale (1/2, 1/4 or 1/8) that keeps both
    edges at least ``size`` (default: ``ImageSpec().shortest_edge``). It is much faster for big
    photos but no longer pixel-identical to a full decode; other formats ignore it.
    """
    if isinstance(item, Image.Image):
        return _force_load(item)
    if isinstance(item, np.ndarray):
        return _from_array(item)
    if isinstance(item, (bytes, bytearray, memoryview)):
        name, source = "<bytes>", io.BytesIO(item)
    elif isinstance(item, (str, os.PathLike)):
        name = os.fsdecode(item)
        source = name
    else:
        raise InputError(
            f"<{type(item).__name__}>: not an image; pass a path, the bytes of an image file, "
            "a PIL image or a uint8 numpy array"
        )
    decoding = False
    try:
        with Image.open(source) as image:
            decoding = True
            if draft:
                target = size if size is not None else ImageSpec().shortest_edge
                image.draft("RGB", (target, target))
            image.load()
            return _upright(image)
    except Exception as exc:
        raise InputError(f"{name}: {_reason(exc, decoding)}") from exc


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to "RGB" as transformers' ``convert_to_rgb`` does.

    Transparency (an alpha band, or ``info["transparency"]`` as in P, L and RGB PNGs) is
    composited onto white; every other mode goes through Pillow's ``convert("RGB")`` (so "1"
    becomes 0/255, CMYK uses Pillow's conversion, "F" is clipped to 0..255 and truncated).

    One deliberate difference: Pillow, and so transformers, clip integer images at 255, so
    16-bit photos come out nearly white. Here "I;16", "I;16B" and "I;16L" are scaled to 8 bits
    as ``round(value / 257)`` (65535 -> 255, and exactly ``v`` for ``v * 257``), and "I" (32-bit)
    is used as is when all its values lie in 0..255 (identical to transformers) but otherwise
    stretched linearly from ``min(0, minimum)`` .. maximum onto 0..255.
    """
    if image.mode == "I" or image.mode.startswith("I;16"):
        image = _deep_to_8bit(image)
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        # transformers 5 composites onto white: a transparent background should read as
        # "nothing there", and Pillow's plain convert("RGB") would expose whatever colour the
        # transparent pixels happen to store (often black).
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def preprocess(image: ImageInput, spec: ImageSpec) -> np.ndarray:
    """One image as the tower's input: float32 [3, spec.size, spec.size].

    RGB conversion (:func:`to_rgb`), resize so the shortest edge is ``spec.shortest_edge``
    (PIL filter ``spec.resample``), center crop ``spec.size`` square (zero-padded if smaller),
    rescale, normalize with ``spec.mean``/``spec.std``, channels first. Anything that is not a
    PIL image goes through :func:`load_image` first.
    """
    if not isinstance(image, Image.Image):
        image = load_image(image)
    if image.width < 1 or image.height < 1:
        name = getattr(image, "filename", "") or "<PIL image>"
        raise InputError(f"{name}: empty image ({image.width}x{image.height} pixels)")
    return normalize(crop(image, spec), spec)


def crop(image: Image.Image, spec: ImageSpec) -> np.ndarray:
    """The 8-bit square the tower sees: uint8 [spec.size, spec.size, 3] after RGB conversion, resize and
    center crop (the first half of :func:`preprocess`; bundles store their verification images this way)."""
    return _center_crop(np.asarray(_resize(to_rgb(image), spec)), spec.size)


def normalize(pixels: np.ndarray, spec: ImageSpec) -> np.ndarray:
    """uint8 [..., H, W, 3] crops as the tower's input: rescaled, normalized, channels first (float32)."""
    table = _level_table(float(spec.rescale_factor), tuple(spec.mean), tuple(spec.std))
    return np.stack([table[c][pixels[..., c]] for c in range(3)], axis=-3)


def preprocess_batch(images: Iterable[ImageInput], spec: ImageSpec, *, draft: bool = False) -> np.ndarray:
    """Load and preprocess each image: float32 [N, 3, spec.size, spec.size]."""
    items = list(images)
    batch = np.empty((len(items), 3, spec.size, spec.size), dtype=np.float32)
    for i, item in enumerate(items):
        batch[i] = preprocess(load_image(item, draft=draft, size=spec.shortest_edge), spec)
    return batch


def _output_size(width: int, height: int, shortest_edge: int) -> tuple[int, int]:
    """(width, height) after the resize, as transformers' ``get_resize_output_image_size``
    with ``default_to_square=False``: the long edge is truncated, not rounded
    (``int(224 * 451 / 300)`` is 336 though 336.75 is nearer 337)."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(shortest_edge * long / short)
    return (shortest_edge, new_long) if width <= height else (new_long, shortest_edge)


def _resize(rgb: Image.Image, spec: ImageSpec) -> Image.Image:
    """The shortest-edge resize (``reducing_gap`` off, as in transformers)."""
    new_width, new_height = _output_size(rgb.width, rgb.height, spec.shortest_edge)
    if new_width * new_height <= _MAX_RESIZED_PIXELS:
        return rgb.resize((new_width, new_height), resample=spec.resample)

    # Extreme aspect ratio: resample only the part of each axis the crop keeps. Two single-axis
    # passes, horizontal first, as Pillow's own two-pass resize runs (one call with a box on
    # both axes comes out differently). Pillow stores the box as float32, so a pixel may still
    # differ by a level or two from the full resize: exactness traded for not running out of memory.
    def window(source: int, resized: int) -> tuple[float, float, int]:
        if resized <= spec.size:
            return 0.0, float(source), resized
        start = (resized - spec.size) // 2
        return start * source / resized, (start + spec.size) * source / resized, spec.size

    x0, x1, out_width = window(rgb.width, new_width)
    y0, y1, out_height = window(rgb.height, new_height)
    wide = rgb.resize((out_width, rgb.height), resample=spec.resample, box=(x0, 0, x1, rgb.height))
    return wide.resize((out_width, out_height), resample=spec.resample, box=(0, y0, out_width, y1))


def _center_crop(pixels: np.ndarray, size: int) -> np.ndarray:
    """HWC center crop to size x size, as transformers' ``center_crop``.

    Offsets round down (``(dim - size) // 2``); an axis shorter than ``size`` is zero-padded
    (black, before normalization) with the larger half of the padding before the image.
    """
    height, width = pixels.shape[:2]
    if height >= size and width >= size:
        top, left = (height - size) // 2, (width - size) // 2
        return pixels[top : top + size, left : left + size]
    out = np.zeros((size, size) + pixels.shape[2:], dtype=pixels.dtype)
    src, dst = [], []
    for dim in (height, width):
        if dim >= size:
            start = (dim - size) // 2
            src.append(slice(start, start + size))
            dst.append(slice(0, size))
        else:
            pad = (size - dim + 1) // 2  # ceil
            src.append(slice(0, dim))
            dst.append(slice(pad, pad + dim))
    out[dst[0], dst[1]] = pixels[src[0], src[1]]
    return out


@functools.lru_cache(maxsize=8)
def _level_table(rescale_factor: float, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """[3, 256] float32: the normalized value of each 8-bit level in each channel.

    Pixels are uint8, so rescale + normalize is a lookup. The table is computed with the same
    operations transformers applies per pixel (rescale in float64, cast to float32, then
    ``(x - mean) / std`` in float32), so the lookup is bit-identical to it and cheaper.
    """
    levels = (np.arange(256, dtype=np.float64) * rescale_factor).astype(np.float32)
    mean32 = np.asarray(mean, dtype=np.float32)[:, None]
    std32 = np.asarray(std, dtype=np.float32)[:, None]
    table = (levels[None, :] - mean32) / std32
    table.setflags(write=False)
    return table


def _deep_to_8bit(image: Image.Image) -> Image.Image:
    """An "I;16*" or "I" image as "L" (or "LA" when it has a transparent value); see to_rgb."""
    raw = np.asarray(image).astype(np.int64)
    if image.mode.startswith("I;16"):
        levels = (np.clip(raw, 0, 65535) + 128) // 257  # round(v / 257); no ties since 257 is odd
    elif raw.max(initial=0) <= 255:
        levels = np.clip(raw, 0, 255)  # what Pillow itself does with such an image
    else:
        low, high = min(int(raw.min()), 0), int(raw.max())
        levels = np.rint((raw - low) * (255.0 / (high - low)))
    gray = Image.fromarray(levels.astype(np.uint8))
    transparent = image.info.get("transparency")
    if isinstance(transparent, int):
        alpha = Image.fromarray(np.where(raw == transparent, 0, 255).astype(np.uint8))
        return Image.merge("LA", (gray, alpha))
    return gray


def _upright(image: Image.Image) -> Image.Image:
    """A detached copy of a loaded image, rotated/flipped by its EXIF orientation."""
    try:
        upright = ImageOps.exif_transpose(image)
    except Exception:
        # Unreadable EXIF says nothing reliable about orientation; viewers show such files
        # as stored, so do the same rather than reject a decodable image.
        upright = None
    return upright if upright is not None else image.copy()


def _force_load(image: Image.Image) -> Image.Image:
    try:
        image.load()
    except Exception as exc:
        name = getattr(image, "filename", "") or "<PIL image>"
        raise InputError(f"{name}: {_reason(exc, True)}") from exc
    return image


def _from_array(array: np.ndarray) -> Image.Image:
    channels = array.shape[2] if array.ndim == 3 else 1
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or channels not in (1, 2, 3, 4):
        raise InputError(
            f"<array>: expected a uint8 array of shape HW or HWC with 1-4 channels, "
            f"got {array.dtype} {array.shape}"
        )
    if array.size == 0:
        raise InputError(f"<array>: empty image (shape {array.shape})")
    if array.ndim == 3 and channels == 1:
        array = array[..., 0]
    return Image.fromarray(np.ascontiguousarray(array))


def _reason(exc: Exception, decoding: bool) -> str:
    """A one-line reason for a failed open/decode (no Pillow internals)."""
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, IsADirectoryError):
        return "is a directory, not an image file"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, Image.DecompressionBombError):
        return "too many pixels to decode safely (Pillow's decompression-bomb limit)"
    if isinstance(exc, UnidentifiedImageError):
        return "not an image file (or not a format Pillow can read)"
    if decoding:
        return "truncated or corrupt image data"
    detail = " ".join(str(getattr(exc, "strerror", None) or exc).split())
    return f"cannot be read ({detail})" if detail else "cannot be read"
