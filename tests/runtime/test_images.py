"""runtime/images.py against transformers' PIL-backend CLIP image processor.

The reference is ``transformers.CLIPImageProcessorPil`` (transformers 5's PIL backend, chosen
explicitly: plain ``CLIPImageProcessor`` is the torchvision backend in transformers 5), built
from the same settings the bundle writes to ``preprocessor_config.json``, computed by the fixture
builder for every image of ``tests/cases.py`` ``reference_images()`` and looked up here (``ref``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from altclip_onnx.bundle import ImageSpec
from altclip_onnx.errors import InputError
from altclip_onnx.runtime import images
from altclip_onnx.runtime.images import load_image, preprocess, preprocess_batch, to_rgb

from ..blocking import BLOCK_EXPORT_SIDE, BLOCKED
from ..cases import (
    CASES,
    OTHER_SPEC_CASES,
    OTHER_SPECS,
    SPEC,
    encoded,
    extreme_aspect_images,
    rgba_gradient,
    sixteen_bit_images,
)
from ..reference import Reference

skdata = pytest.importorskip("skimage.data")

TOLERANCE = 1e-5


# ----------------------------------------------------------------------------- helpers


def max_diff(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


# ----------------------------------------------------------------------------- equality


@pytest.mark.parametrize("name", list(CASES))
def test_matches_transformers(name: str, ref: Reference) -> None:
    image = CASES[name]()
    ours = preprocess(image, SPEC)
    assert ours.dtype == np.float32 and ours.shape == (3, 224, 224)
    assert ours.flags.c_contiguous
    assert max_diff(ours, ref.pixels(image, SPEC)) <= TOLERANCE


@pytest.mark.parametrize("spec", OTHER_SPECS, ids=lambda s: f"crop{s.size}-edge{s.shortest_edge}-f{s.resample}")
@pytest.mark.parametrize("name", OTHER_SPEC_CASES)
def test_matches_transformers_other_specs(spec: ImageSpec, name: str, ref: Reference) -> None:
    image = CASES[name]()
    ours = preprocess(image, spec)
    assert ours.shape == (3, spec.size, spec.size)
    assert max_diff(ours, ref.pixels(image, spec)) <= TOLERANCE


def test_output_size_truncates_like_transformers(ref: Reference) -> None:
    sizes = ref.data["resize_sizes"]  # transformers' get_resize_output_image_size for each case
    assert len(sizes) > 600
    for width, height, edge, expected_w, expected_h in sizes:
        assert images._output_size(width, height, edge) == (expected_w, expected_h)


def test_arrays_are_read_like_pil_images(ref: Reference) -> None:
    rgba = np.asarray(rgba_gradient())
    gray = skdata.camera()
    for array in (skdata.astronaut(), rgba, gray, gray[..., None]):
        ours = preprocess(load_image(array), SPEC)
        assert max_diff(ours, ref.pixels(Image.fromarray(array.squeeze()), SPEC)) <= TOLERANCE


def test_batch_equals_single() -> None:
    items = [skdata.astronaut(), encoded(Image.fromarray(skdata.chelsea()), "PNG"), rgba_gradient()]
    batch = preprocess_batch(items, SPEC)
    assert batch.shape == (3, 3, 224, 224) and batch.dtype == np.float32
    for item, row in zip(items, batch):
        np.testing.assert_array_equal(row, preprocess(load_image(item), SPEC))
    assert preprocess_batch([], SPEC).shape == (0, 3, 224, 224)


def test_extreme_aspect_ratio_resizes_only_the_crop_window(monkeypatch: pytest.MonkeyPatch, ref: Reference) -> None:
    """Past the pixel budget only the crop window is resampled: a pixel may be a level or two off
    (Pillow keeps the box in float32; bicubic overshoot on noise can double a one-level error)."""
    monkeypatch.setattr(images, "_MAX_RESIZED_PIXELS", 224 * 224)
    one_level = 1 / 255 / min(SPEC.std)
    for image in extreme_aspect_images():
        assert max_diff(preprocess(image, SPEC), ref.pixels(image, SPEC)) <= 2 * one_level + TOLERANCE


# ----------------------------------------------------------------------------- 16-bit


def test_16bit_is_scaled_not_clipped(ref: Reference) -> None:
    """Deliberate difference: transformers (Pillow's convert) clips 16-bit values at 255."""
    eight_bit = preprocess(Image.fromarray(skdata.camera()), SPEC)
    for image in sixteen_bit_images():
        assert image.mode in ("I;16", "I;16B", "I")
        assert max_diff(preprocess(image, SPEC), eight_bit) <= TOLERANCE, image.mode
        # ... while transformers renders it almost white: every value >= 256 becomes 255.
        theirs = ref.pixels(image, SPEC)
        assert max_diff(theirs, eight_bit) > 1.0
        white = (1 - np.asarray(SPEC.mean, np.float32)) / np.asarray(SPEC.std, np.float32)
        assert np.mean(np.isclose(theirs, white[:, None, None], atol=1e-4)) > 0.9


def test_16bit_rounds_to_nearest_level() -> None:
    values = np.array([[0, 128, 129, 385, 386, 65535]], dtype=np.uint16)
    assert np.asarray(to_rgb(Image.fromarray(values)))[0, :, 0].tolist() == [0, 0, 1, 1, 2, 255]


def test_16bit_transparent_value_is_white() -> None:
    values = np.array([[0, 1000, 65535]], dtype=np.uint16)
    image = load_image(encoded(Image.fromarray(values), "PNG", transparency=1000))
    assert np.asarray(to_rgb(image))[0].tolist() == [[0, 0, 0], [255, 255, 255], [255, 255, 255]]


# ----------------------------------------------------------------------------- loading


def exif_jpeg(orientation: int) -> bytes:
    pixels = np.zeros((200, 300, 3), np.uint8)
    pixels[:, :150] = (255, 0, 0)  # stored: left half red, right half blue
    pixels[:, 150:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encoded(Image.fromarray(pixels), "JPEG", exif=exif.tobytes(), quality=95)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    data = exif_jpeg(6)  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "rotated.jpg"
    path.write_bytes(data)
    for item in (data, path, str(path)):
        upright = load_image(item)
        assert upright.size == (200, 300)
        top, bottom = upright.getpixel((100, 20)), upright.getpixel((100, 280))
        assert top[0] > 200 and top[2] < 50, top  # the stored left (red) is now on top
        assert bottom[2] > 200 and bottom[0] < 50, bottom
    assert load_image(data, draft=True, size=64).size == (100, 150)  # 1/2 scale, then upright
    assert load_image(exif_jpeg(1)).size == (300, 200)


def one_line_error(item, *, contains: tuple[str, ...]) -> str:
    with pytest.raises(InputError) as caught:
        load_image(item)
    message = str(caught.value)
    assert "\n" not in message and "Traceback" not in message
    for part in contains:
        assert part in message, message
    return message


def test_errors_are_one_line_and_name_the_input(tmp_path: Path) -> None:
    jpeg = encoded(Image.fromarray(skdata.astronaut()), "JPEG", quality=90)
    truncated = tmp_path / "half.jpg"
    truncated.write_bytes(jpeg[: len(jpeg) // 2])
    text = tmp_path / "notes.jpg"
    text.write_text("not a picture\n")
    missing = tmp_path / "missing.jpg"

    one_line_error(b"definitely not an image", contains=("<bytes>", "not an image file"))
    one_line_error(jpeg[: len(jpeg) // 2], contains=("<bytes>", "truncated or corrupt"))
    one_line_error(truncated, contains=(str(truncated), "truncated or corrupt"))
    one_line_error(str(text), contains=(str(text), "not an image file"))
    one_line_error(missing, contains=(str(missing), "no such file"))
    one_line_error(tmp_path, contains=(str(tmp_path), "directory"))
    one_line_error(np.zeros((4, 4), np.float32), contains=("<array>", "uint8"))
    one_line_error(42, contains=("<int>",))

    with pytest.raises(InputError, match="missing.jpg: no such file"):
        preprocess_batch([skdata.astronaut(), missing], SPEC)


def test_draft_is_close_to_exact() -> None:
    big = Image.fromarray(skdata.astronaut()).resize((2000, 1500), Image.Resampling.BICUBIC)
    data = encoded(big, "JPEG", quality=90)
    drafted = load_image(data, draft=True, size=224)
    assert drafted.size == (500, 375)  # decoded at 1/4: both edges stay >= 224
    fast = preprocess_batch([data], SPEC, draft=True)
    exact = preprocess_batch([data], SPEC)
    assert fast.shape == (1, 3, 224, 224) and np.isfinite(fast).all()
    a, b = fast.ravel().astype(np.float64), exact.ravel().astype(np.float64)
    assert a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) > 0.99
    png = encoded(big.resize((600, 450)), "PNG")  # draft only affects JPEGs
    np.testing.assert_array_equal(preprocess_batch([png], SPEC, draft=True), preprocess_batch([png], SPEC))


# ----------------------------------------------------------------------------- runtime half


def test_module_needs_neither_torch_nor_transformers() -> None:
    src = Path(images.__file__).resolve().parents[2]
    code = BLOCK_EXPORT_SIDE + (
        "import numpy as np\n"
        "from altclip_onnx.bundle import ImageSpec\n"
        "from altclip_onnx.runtime.images import preprocess_batch\n"
        "out = preprocess_batch([np.zeros((30, 40, 3), np.uint8)], ImageSpec())\n"
        "assert out.shape == (1, 3, 224, 224)\n"
        f"assert not [m for m, mod in sys.modules.items() if mod is not None and m.split('.')[0] in {BLOCKED!r}]\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(src), os.environ.get("PYTHONPATH")])))
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
