"""runtime/images.py against transformers' PIL-backend CLIP image processor.

The reference is ``transformers.CLIPImageProcessorPil`` (transformers 5's PIL backend, chosen
explicitly: plain ``CLIPImageProcessor`` is the torchvision backend in transformers 5), built
from the same settings the bundle writes to ``preprocessor_config.json``.
"""

from __future__ import annotations

import io
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

skdata = pytest.importorskip("skimage.data")

SPEC = ImageSpec()  # AltCLIP: shortest edge 224, crop 224, bicubic, OpenAI CLIP mean/std
TOLERANCE = 1e-5


# ----------------------------------------------------------------------------- helpers


def reference_processor(spec: ImageSpec):
    transformers = pytest.importorskip("transformers")
    config = {k: v for k, v in spec.preprocessor_config().items() if k != "image_processor_type"}
    processor = transformers.CLIPImageProcessorPil(**config)
    assert processor.backend == "pil"
    return processor


_PROCESSORS: dict[ImageSpec, object] = {}


def reference(image: Image.Image, spec: ImageSpec = SPEC) -> np.ndarray:
    """transformers' pixel_values for one decoded image: float32 [3, S, S]."""
    if spec not in _PROCESSORS:
        _PROCESSORS[spec] = reference_processor(spec)
    out = _PROCESSORS[spec](images=image, return_tensors="np")["pixel_values"]
    return np.asarray(out)[0]


def max_diff(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def reload(image: Image.Image, fmt: str, **save_args) -> Image.Image:
    """Save and decode again, so the image is what a real file of that kind gives."""
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save_args)
    return load_image(buffer.getvalue())


def encoded(image: Image.Image, fmt: str, **save_args) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save_args)
    return buffer.getvalue()


def horizontal_ramp(width: int, height: int) -> np.ndarray:
    return np.broadcast_to(np.linspace(0, 255, width).round().astype(np.uint8), (height, width))


def rgba_gradient() -> Image.Image:
    rgb = skdata.chelsea()
    alpha = horizontal_ramp(rgb.shape[1], rgb.shape[0])
    return Image.fromarray(np.dstack([rgb, alpha]))  # RGBA


def la_gradient() -> Image.Image:
    gray = skdata.camera()
    alpha = horizontal_ramp(gray.shape[1], gray.shape[0]).T.copy()  # vertical ramp
    return Image.merge("LA", (Image.fromarray(gray), Image.fromarray(alpha)))


def p_with_transparent_index() -> Image.Image:
    palette = Image.fromarray(skdata.chelsea()).quantize(64)
    index = palette.getpixel((0, 0))
    return reload(palette, "PNG", transparency=index)


def p_with_palette_alpha() -> Image.Image:
    image = reload(rgba_gradient().quantize(32), "PNG")
    assert image.mode == "P" and "transparency" in image.info
    return image


def rgb_with_transparent_colour() -> Image.Image:
    rgb = Image.fromarray(skdata.coffee()).quantize(16).convert("RGB")
    return reload(rgb, "PNG", transparency=rgb.getpixel((0, 0)))


def cmyk_jpeg() -> Image.Image:
    image = reload(Image.fromarray(skdata.astronaut()).convert("CMYK"), "JPEG", quality=90)
    assert image.mode == "CMYK"
    return image


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def float_image() -> Image.Image:
    values = skdata.camera().astype(np.float32) * 1.3 - 20.5  # -20.5 .. 311: exercises the clip
    return Image.fromarray(values)  # mode F


CASES = {
    "astronaut RGB": lambda: Image.fromarray(skdata.astronaut()),
    "chelsea RGB 451x300": lambda: Image.fromarray(skdata.chelsea()),
    "coffee RGB 600x400": lambda: Image.fromarray(skdata.coffee()),
    "camera L": lambda: Image.fromarray(skdata.camera()),
    "RGBA alpha gradient": rgba_gradient,
    "LA alpha gradient": la_gradient,
    "P transparent index": p_with_transparent_index,
    "P palette alpha": p_with_palette_alpha,
    "RGB transparent colour": rgb_with_transparent_colour,
    "L 600x400": lambda: Image.fromarray(skdata.coffee()).convert("L"),
    "1-bit": lambda: Image.fromarray(skdata.camera()).convert("1"),
    "CMYK JPEG": cmyk_jpeg,
    "F (float)": float_image,
    "I within 0..255": lambda: Image.fromarray(skdata.camera().astype(np.int32)),
    "1x1": lambda: Image.new("RGB", (1, 1), (200, 30, 90)),
    "3000x20 noise": lambda: noise(3000, 20),
    "20x3000 noise": lambda: noise(20, 3000, seed=1),
    "100x50": lambda: Image.fromarray(skdata.astronaut()).resize((100, 50), Image.Resampling.BICUBIC),
    "225x301 odd": lambda: noise(225, 301, seed=2),
}


# ----------------------------------------------------------------------------- equality


@pytest.mark.parametrize("name", list(CASES))
def test_matches_transformers(name: str) -> None:
    image = CASES[name]()
    ours = preprocess(image, SPEC)
    assert ours.dtype == np.float32 and ours.shape == (3, 224, 224)
    assert ours.flags.c_contiguous
    assert max_diff(ours, reference(image)) <= TOLERANCE


# Other settings reach the code paths AltCLIP's never does: a crop larger than the resized image
# (zero padding), an odd crop (offset rounding) and other filters.
OTHER_SPECS = [
    ImageSpec(size=224, shortest_edge=180, resample=2),
    ImageSpec(size=225, shortest_edge=230, resample=1),
    ImageSpec(size=64, shortest_edge=40, resample=0, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
]


@pytest.mark.parametrize("spec", OTHER_SPECS, ids=lambda s: f"crop{s.size}-edge{s.shortest_edge}-f{s.resample}")
@pytest.mark.parametrize("name", ["chelsea RGB 451x300", "100x50", "1x1", "3000x20 noise", "RGBA alpha gradient"])
def test_matches_transformers_other_specs(spec: ImageSpec, name: str) -> None:
    image = CASES[name]()
    ours = preprocess(image, spec)
    assert ours.shape == (3, spec.size, spec.size)
    assert max_diff(ours, reference(image, spec)) <= TOLERANCE


def test_output_size_truncates_like_transformers() -> None:
    transformers = pytest.importorskip("transformers")
    get_size = transformers.image_transforms.get_resize_output_image_size
    rng = np.random.default_rng(3)
    sizes = [(1, 1), (3000, 20), (20, 3000), (451, 300), (7, 3)] + [tuple(s) for s in rng.integers(1, 5000, (300, 2))]
    for width, height in sizes:
        for edge in (224, 37):
            chw = np.zeros((3, height, width), np.uint8)
            expected_h, expected_w = get_size(chw, size=edge, default_to_square=False, input_data_format="channels_first")
            assert images._output_size(width, height, edge) == (expected_w, expected_h)


def test_arrays_are_read_like_pil_images() -> None:
    rgba = np.asarray(rgba_gradient())
    gray = skdata.camera()
    for array in (skdata.astronaut(), rgba, gray, gray[..., None]):
        ours = preprocess(load_image(array), SPEC)
        assert max_diff(ours, reference(Image.fromarray(array.squeeze()))) <= TOLERANCE


def test_batch_equals_single() -> None:
    items = [skdata.astronaut(), encoded(Image.fromarray(skdata.chelsea()), "PNG"), rgba_gradient()]
    batch = preprocess_batch(items, SPEC)
    assert batch.shape == (3, 3, 224, 224) and batch.dtype == np.float32
    for item, row in zip(items, batch):
        np.testing.assert_array_equal(row, preprocess(load_image(item), SPEC))
    assert preprocess_batch([], SPEC).shape == (0, 3, 224, 224)


def test_extreme_aspect_ratio_resizes_only_the_crop_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the pixel budget only the crop window is resampled: a pixel may be a level or two off
    (Pillow keeps the box in float32; bicubic overshoot on noise can double a one-level error)."""
    monkeypatch.setattr(images, "_MAX_RESIZED_PIXELS", 224 * 224)
    one_level = 1 / 255 / min(SPEC.std)
    for image in (CASES["3000x20 noise"](), CASES["20x3000 noise"](), noise(7001, 33), noise(29, 9001)):
        assert max_diff(preprocess(image, SPEC), reference(image)) <= 2 * one_level + TOLERANCE


# ----------------------------------------------------------------------------- 16-bit


def test_16bit_is_scaled_not_clipped() -> None:
    """Deliberate difference: transformers (Pillow's convert) clips 16-bit values at 255."""
    gray = skdata.camera()
    eight_bit = preprocess(Image.fromarray(gray), SPEC)
    sixteen = gray.astype(np.uint16) * 257
    for image in (
        Image.fromarray(sixteen),  # I;16
        Image.fromarray(sixteen.astype(">u2")),  # I;16B
        load_image(encoded(Image.fromarray(sixteen), "PNG")),  # a real 16-bit PNG
        Image.fromarray(sixteen.astype(np.int32)),  # I with values above 255: stretched 0..max
    ):
        assert image.mode in ("I;16", "I;16B", "I")
        assert max_diff(preprocess(image, SPEC), eight_bit) <= TOLERANCE, image.mode
        # ... while transformers renders it almost white: every value >= 256 becomes 255.
        theirs = reference(image)
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
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'transformers', 'torchvision'):\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import numpy as np\n"
        "from altclip_onnx.bundle import ImageSpec\n"
        "from altclip_onnx.runtime.images import preprocess_batch\n"
        "out = preprocess_batch([np.zeros((30, 40, 3), np.uint8)], ImageSpec())\n"
        "assert out.shape == (1, 3, 224, 224)\n"
        "assert not [m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')]\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(src), os.environ.get("PYTHONPATH")])))
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
