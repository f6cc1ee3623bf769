"""Inputs shared by the fixture builder (tests/fixture.py, with torch) and the tests (without it).

Everything a runtime test compares with transformers or PyTorch is listed here, so the fixture builder
can compute the reference for exactly those inputs once, and runtime tests look it up (see
tests/reference.py). Nothing here imports torch, transformers or sentencepiece.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from altclip_onnx.bundle import ImageSpec
from altclip_onnx.export.verification_set import SENTENCES as VERIFICATION_SENTENCES
from altclip_onnx.runtime.images import load_image

try:
    import skimage.data as skdata
except ImportError:  # the test extra brings it; a clear error comes from the tests that need it
    skdata = None  # type: ignore[assignment]

# One sentence in each of the 18 languages: the first 18 of the bundle's verification sentences.
SENTENCES = dict(VERIFICATION_SENTENCES[:18])
assert len(SENTENCES) == 18

SPEC = ImageSpec()  # AltCLIP: shortest edge 224, crop 224, bicubic, OpenAI CLIP mean/std

CORPUS_EXTRA = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "A dog runs on the beach at sunset, and children play in the waves.",
    "我们在海边看日落，天空是橙色的。猫和狗在花园里玩耍。",
    "東京の街は夜になると明るく輝きます。桜の花が咲いています。",
    "서울의 밤거리는 아름답습니다. 강아지가 공원에서 뛰어놉니다.",
    "Le chat dort sur le canapé pendant que le chien joue dehors.",
    "Der Hund spielt im Garten, und die Katze schläft auf dem Sofa.",
    "El perro corre por la playa y el gato duerme en casa.",
    "Кошка спит на диване, а собака играет во дворе.",
    "القطة نائمة على الأريكة والكلب يلعب في الحديقة",
    "कुत्ता बगीचे में खेल रहा है और बिल्ली सो रही है",
    "แมวกำลังนอนหลับอยู่บนโซฟาและสุนัขกำลังเล่นอยู่ในสวน",
    "Con mèo đang ngủ trên ghế sofa và con chó đang chơi trong vườn.",
    "Kedi kanepede uyuyor ve köpek bahçede oynuyor.",
    "Kot śpi na kanapie, a pies bawi się w ogrodzie.",
    "De kat slaapt op de bank en de hond speelt in de tuin.",
    "O gato dorme no sofá e o cachorro brinca no jardim.",
    "Il gatto dorme sul divano e il cane gioca in giardino.",
    "Кіт спить на дивані, а собака грається у дворі.",
    "Emoji 😀🐱🚀 and full-width ＡＢＣ１２３ text, tabs\tand\nnewlines.",
]



def corpus() -> list[str]:
    """What the test sentencepiece model is trained on (so NEW_SENTENCES are unseen text)."""
    return list(SENTENCES.values()) * 3 + CORPUS_EXTRA * 3


# One natural sentence per AltCLIP-m18 language, none of them in the tokenizer's training corpus.
NEW_SENTENCES = {
    "en": "Two children are flying a red kite over a green hill.",
    "zh": "厨房的桌子上放着一碗热腾腾的面条。",
    "ja": "駅の前で友達を待っています。",
    "th": "ฝนตกหนักตลอดทั้งคืนในกรุงเทพ",
    "ko": "아이들이 운동장에서 축구를 하고 있어요.",
    "hi": "पहाड़ों पर बर्फ गिर रही है और नदी जम गई है।",
    "uk": "Діти будують сніговика біля школи.",
    "ar": "يقرأ الرجل الجريدة في المقهى صباحا.",
    "tr": "Çocuklar parkta uçurtma uçuruyor.",
    "vi": "Những đứa trẻ đang thả diều trên đồi xanh.",
    "pl": "Dzieci puszczają latawca na zielonym wzgórzu.",
    "nl": "De trein naar Amsterdam vertrekt om negen uur.",
    "pt": "As crianças brincam com uma pipa vermelha no morro.",
    "it": "La pizza appena sfornata profuma di basilico.",
    "es": "Los niños vuelan una cometa roja sobre la colina.",
    "de": "Die Kinder lassen einen roten Drachen über dem Hügel steigen.",
    "fr": "Les enfants font voler un cerf-volant rouge sur la colline.",
    "ru": "Дети запускают красного воздушного змея над холмом.",
}
assert set(NEW_SENTENCES) == set(SENTENCES)
assert not set(NEW_SENTENCES.values()) & set(corpus())

# Emoji, full-width and half-width forms, tabs, newlines, empty and whitespace-only strings.
ODD_TEXTS = [
    "Emoji 😀🐱🚀 and a family 👨‍👩‍👧 with a flag 🇯🇵",
    "ＡＢＣ１２３ full-width ｆｏｒｍｓ！",
    "ｶﾀｶﾅ half-width katakana",
    "Ⅻ ① ﬁ ㎏ compatibility characters",
    "combining e\u0301 and precomposed é",
    "tab\tseparated\tvalues",
    "line one\nline two\r\nline three\n",
    "trailing newline\n",
    "\ttab first",
    "a \t\n b",
    "multiple     spaces   inside",
    "  leading and trailing  ",
    "\u3000ideographic\u3000space\u3000",
    "no\u00a0break and zero\u200bwidth",
    "",
    " ",
    "   ",
    "\t",
    "\n",
    "\r\n",
    " \t\n\u3000 ",
]
TOKEN_TEXTS = list(NEW_SENTENCES.values()) + list(SENTENCES.values()) + ODD_TEXTS
PARITY_TEXTS = list(NEW_SENTENCES.values()) + list(SENTENCES.values())  # 36: batches 1, 3 and 32 all split it
LONG_TEXT = " ".join(NEW_SENTENCES.values()) + " " + " ".join(SENTENCES.values())
# Where transformers 5 (what AltCLIPModel users run) and raw sentencepiece differ; the bundle follows transformers.
DIFFERING_TEXTS = ("a\x85b", "<mask> and <s> and </s>", "a <pad> b")
ODD_PARITY_TEXTS = ODD_TEXTS[:6] + ["", "   ", LONG_TEXT]
PADDING_TEXTS = ["a", NEW_SENTENCES["de"], "", NEW_SENTENCES["th"], LONG_TEXT]


def prefixes(text: str, count: int) -> list[str]:
    """The first 1..count-1 words of ``text``: lengths around a truncation limit."""
    words = text.split(" ")
    return [" ".join(words[:n]) for n in range(1, count)]


def sentencepiece_texts() -> list[str]:
    """Every text whose sentencepiece ids (with the fairseq offset) a test compares with."""
    return list(dict.fromkeys([*TOKEN_TEXTS, *DIFFERING_TEXTS, *PADDING_TEXTS, LONG_TEXT, "b c",
                               *prefixes(LONG_TEXT, 16)]))


def transformers_texts() -> list[str]:
    """Every text whose transformers ids a test compares with."""
    return list(dict.fromkeys([*TOKEN_TEXTS, *DIFFERING_TEXTS]))


# Zero-shot cases compared with a hand computation in PyTorch: (labels, templates or None for the defaults).
CLASSIFY_CASES = {
    "en": (["cat", "astronaut", "rocket", "cup of coffee", "man with a camera"],
           ["a photo of a {}.", "a picture of a {}."]),
    "zh": (["猫", "宇航员", "火箭", "咖啡"], ["一张{}的照片", "{}"]),
    "ar": (["قطة", "رائد فضاء", "صاروخ", "قهوة"], ["صورة {}", "a photo of a {}."]),
    "default-templates": (["cat", "dog", "rocket"], None),
}


PHOTOS = {  # file name -> (skimage.data function, format)
    "astronaut.jpg": ("astronaut", "JPEG"),
    "chelsea.png": ("chelsea", "PNG"),
    "coffee.jpg": ("coffee", "JPEG"),
    "rocket.png": ("rocket", "PNG"),
    "camera.jpg": ("camera", "JPEG"),  # grayscale: a mode "L" file
}




def write_photos(folder: Path) -> list[Path]:
    """The PHOTOS as files in ``folder`` (JPEG quality 90), in PHOTOS' order."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, (function, fmt) in PHOTOS.items():
        path = folder / name
        Image.fromarray(getattr(skdata, function)()).save(path, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
        paths.append(path)
    return paths


# --- images for preprocessing parity --------------------------------------------------------------

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


OTHER_SPECS = [
    ImageSpec(size=224, shortest_edge=180, resample=2),
    ImageSpec(size=225, shortest_edge=230, resample=1),
    ImageSpec(size=64, shortest_edge=40, resample=0, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
]




def reference_images() -> list[tuple[Image.Image, ImageSpec]]:
    """Every (image, settings) whose transformers pixel_values a test compares with (tests/test_images.py)."""
    pairs = [(make(), SPEC) for make in CASES.values()]
    pairs += [(CASES[name](), spec) for spec in OTHER_SPECS for name in OTHER_SPEC_CASES]
    rgba = np.asarray(rgba_gradient())
    gray = skdata.camera()
    pairs += [(Image.fromarray(a.squeeze()), SPEC) for a in (skdata.astronaut(), rgba, gray, gray[..., None])]
    pairs += [(image, SPEC) for image in extreme_aspect_images()]
    pairs += [(image, SPEC) for image in sixteen_bit_images()]
    return pairs


OTHER_SPEC_CASES = ["chelsea RGB 451x300", "100x50", "1x1", "3000x20 noise", "RGBA alpha gradient"]


def extreme_aspect_images() -> list[Image.Image]:
    return [CASES["3000x20 noise"](), CASES["20x3000 noise"](), noise(7001, 33), noise(29, 9001)]


def sixteen_bit_images() -> list[Image.Image]:
    sixteen = skdata.camera().astype(np.uint16) * 257
    return [
        Image.fromarray(sixteen),  # I;16
        Image.fromarray(sixteen.astype(">u2")),  # I;16B
        load_image(encoded(Image.fromarray(sixteen), "PNG")),  # a real 16-bit PNG
        Image.fromarray(sixteen.astype(np.int32)),  # I with values above 255: stretched 0..max
    ]


def resize_size_cases() -> list[tuple[int, int, int]]:
    """(width, height, shortest edge) whose resized size is compared with transformers'."""
    rng = np.random.default_rng(3)
    sizes = [(1, 1), (3000, 20), (20, 3000), (451, 300), (7, 3)] + [tuple(s) for s in rng.integers(1, 5000, (300, 2))]
    return [(int(w), int(h), edge) for w, h in sizes for edge in (224, 37)]
