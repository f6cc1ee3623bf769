"""The verification set export stores in every bundle: 64 images and 64 sentences in 18 languages.

Images: the four shipped photos, each as it is and under 15 deterministic changes (flips, rotation, crops,
scale, colour, contrast, blur, JPEG artefacts), plus 4 synthetic patterns. Sentences: three or four in each
of AltCLIP-m18's 18 languages (and so m9's and AltCLIP's), plus two long texts past 300 tokens. The batching
mixes sizes 1 to 8, padded and unpadded; :mod:`altclip_onnx.verification.reference` stores all of it.
"""

from __future__ import annotations

import io
from importlib import resources
from typing import Any

import numpy as np

from ..bundle import TEXTUAL, TOWER_INPUTS, VISUAL, Manifest
from ..verification.reference import Case

SAMPLE_PHOTOS = ("astronaut.jpg", "chelsea.jpg", "coffee.jpg", "rocket.jpg")

SENTENCES: tuple[tuple[str, str], ...] = (
    ("en", "A photo of an astronaut in an orange suit."),
    ("zh", "一只猫躺在沙发上睡觉。"),
    ("ja", "海辺に沈む夕日の写真です。"),
    ("th", "ภาพถ่ายของจรวดที่กำลังขึ้นสู่ท้องฟ้า"),
    ("ko", "테이블 위에 놓인 커피 한 잔"),
    ("hi", "समुद्र तट पर सूर्यास्त की एक तस्वीर"),
    ("uk", "Чашка кави на дерев'яному столі."),
    ("ar", "صورة لقطة نائمة على الأريكة"),
    ("tr", "Gökyüzüne yükselen bir roketin fotoğrafı."),
    ("vi", "Một tách cà phê trên bàn gỗ."),
    ("pl", "Zdjęcie kota śpiącego na kanapie."),
    ("nl", "Een foto van een astronaut in een oranje pak."),
    ("pt", "Uma xícara de café sobre a mesa."),
    ("it", "Un gatto che dorme sul divano."),
    ("es", "Una foto de un cohete despegando."),
    ("de", "Ein Foto eines Sonnenuntergangs am Strand."),
    ("fr", "Une tasse de café sur une table en bois."),
    ("ru", "Фотография ракеты, взлетающей в небо."),
    ("en", "A tabby cat with green eyes looking at the camera."),
    ("zh", "宇航员穿着白色宇航服站在美国国旗前。"),
    ("ja", "木のテーブルの上にある白いコーヒーカップ。"),
    ("th", "แมวลายสีส้มนอนอยู่บนพรม"),
    ("ko", "발사대에서 하늘로 솟아오르는 로켓"),
    ("hi", "लकड़ी की मेज़ पर रखा कॉफ़ी का कप"),
    ("uk", "Космонавт у скафандрі позує для фотографії."),
    ("ar", "فنجان قهوة ساخنة مع رغوة الحليب"),
    ("tr", "Pencerenin önünde oturan gri bir kedi."),
    ("vi", "Một phi hành gia đang mỉm cười trước lá cờ."),
    ("pl", "Rakieta kosmiczna na stanowisku startowym."),
    ("nl", "Een kopje koffie met melkschuim op een schotel."),
    ("pt", "Um gato listrado olhando para a câmera."),
    ("it", "Un razzo che si alza nel cielo azzurro."),
    ("es", "Una taza de café con arte latte en forma de corazón."),
    ("de", "Eine getigerte Katze mit grünen Augen."),
    ("fr", "Un astronaute souriant dans sa combinaison spatiale."),
    ("ru", "Полосатый кот смотрит прямо в камеру."),
    ("en", "Black and white stripes on a pattern."),
    ("zh", "一杯加了奶泡的热咖啡放在碟子上。"),
    ("ja", "発射台から打ち上げられるロケット。"),
    ("th", "นักบินอวกาศในชุดอวกาศสีขาว"),
    ("ko", "소파 위에서 자고 있는 고양이 한 마리"),
    ("hi", "अंतरिक्ष यात्री अपने स्पेस सूट में मुस्कुरा रहा है"),
    ("uk", "Ракета злітає з космодрому вночі."),
    ("ar", "رائد فضاء يبتسم أمام العلم"),
    ("tr", "Tabağın üzerinde köpüklü bir fincan kahve."),
    ("vi", "Con mèo vằn đang nhìn thẳng vào máy ảnh."),
    ("pl", "Kubek gorącej kawy z mlekiem na stole."),
    ("nl", "Een raket stijgt op van het lanceerplatform."),
    ("pt", "Um astronauta sorridente com o traje espacial."),
    ("it", "Una tazza di cappuccino con la schiuma."),
    ("es", "Un gato atigrado mirando a la cámara."),
    ("de", "Eine Rakete auf der Startrampe vor dem Start."),
    ("fr", "Un chat tigré qui regarde l'objectif."),
    ("ru", "Чашка капучино с молочной пеной на блюдце."),
    ("en", "A colourful gradient from red to blue."),
    ("zh", "火箭在蓝天下升空，尾部喷出火焰。"),
    ("ja", "緑色の目をした縞模様の猫。"),
    ("ko", "흰색 우주복을 입은 우주비행사의 사진"),
    ("hi", "नीले आसमान में उड़ता हुआ एक रॉकेट"),
    ("ar", "قطة مخططة تنظر إلى الكاميرا"),
    ("de", "Eine Tasse Kaffee mit Milchschaum auf einer Untertasse."),
    ("fr", "Une fusée qui décolle dans un ciel bleu."),
    ("es", "Un astronauta con su traje espacial blanco."),
    ("ru", "Узор из чёрных и белых полос."),
)


def _transforms() -> list[tuple[str, Any]]:
    """(name, function of a PIL RGB image): the deterministic changes applied to each shipped photo."""
    from PIL import Image, ImageEnhance, ImageFilter, ImageOps

    def jpeg(image: Any, quality: int) -> Any:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=quality)
        return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")

    def part(image: Any, box: tuple[float, float, float, float]) -> Any:
        w, h = image.size
        return image.crop((int(box[0] * w), int(box[1] * h), int(box[2] * w), int(box[3] * h)))

    return [
        ("as shipped", lambda im: im),
        ("mirrored", ImageOps.mirror),
        ("upside down", ImageOps.flip),
        ("rotated 90 degrees", lambda im: im.transpose(Image.Transpose.ROTATE_90)),
        ("left half", lambda im: part(im, (0, 0, 0.5, 1))),
        ("centre 60%", lambda im: part(im, (0.2, 0.2, 0.8, 0.8))),
        ("top-left quarter", lambda im: part(im, (0, 0, 0.5, 0.5))),
        ("scaled to 64 pixels and back", lambda im: im.resize((64, 64)).resize(im.size)),
        ("grey", lambda im: ImageOps.grayscale(im).convert("RGB")),
        ("high contrast", lambda im: ImageEnhance.Contrast(im).enhance(2.0)),
        ("darker", lambda im: ImageEnhance.Brightness(im).enhance(0.4)),
        ("brighter", lambda im: ImageEnhance.Brightness(im).enhance(1.6)),
        ("channels swapped", lambda im: Image.merge("RGB", im.split()[::-1])),
        ("blurred", lambda im: im.filter(ImageFilter.GaussianBlur(4))),
        ("JPEG quality 10", lambda im: jpeg(im, 10)),
    ]


def _patterns() -> list[tuple[str, np.ndarray]]:
    """Synthetic images with nothing of the photos in them."""
    y, x = np.mgrid[0:240, 0:320].astype(np.float64)
    noise = np.random.default_rng(20261205).integers(0, 256, (240, 320, 3))
    return [
        ("pattern: diagonal bands", np.stack([(x * 0.8) % 256, (y * 1.1) % 256, ((x + y) * 0.5) % 256], -1)),
        ("pattern: checkerboard", np.repeat(((x // 20 + y // 20) % 2 * 255)[..., None], 3, -1)),
        ("pattern: red-blue gradient", np.stack([255 * x / 319, 64 + 0 * x, 255 * (1 - x / 319)], -1)),
        ("pattern: noise", noise),
    ]


def verification_images(manifest: Manifest) -> tuple[np.ndarray, list[str], tuple[int, ...]]:
    """uint8 [64, S, S, 3] crops as the image tower sees them, how each was made, and which are distinct."""
    from PIL import Image

    from ..runtime.images import crop

    folder = resources.files("altclip_onnx.export") / "samples"
    images, notes, distinct = [], [], []
    for name in SAMPLE_PHOTOS:
        with (folder / name).open("rb") as handle:
            photo = Image.open(handle).convert("RGB")
        for change, transform in _transforms():
            if change == "as shipped":
                distinct.append(len(images))
            images.append(crop(transform(photo), manifest.image))
            notes.append(f"{name} {change}")
    for note, pattern in _patterns():
        distinct.append(len(images))
        images.append(crop(Image.fromarray(pattern.astype(np.uint8)), manifest.image))
        notes.append(note)
    return np.stack(images), notes, tuple(distinct)


def _batches(count: int, first: tuple[int, ...]) -> list[range]:
    """Consecutive batches: the sizes in ``first``, then eights (the last one what is left)."""
    batches, start = [], 0
    for size in (*first, *[8] * count):
        if start >= count:
            break
        batches.append(range(start, min(start + size, count)))
        start += size
    return batches


def verification_cases(tokenizer_json: str, manifest: Manifest, images: np.ndarray) -> list[Case]:
    """Image batches of 1, 2, 4, 8s; text batches of 1, 8s padded, and long texts (300+ tokens) alone and padded.

    The batch of 2 images and the first batch of 8 sentences are the quick cases of the first-use check (two
    images: a full-size image tower at fp32 is the slowest part of that check); the image batches of 2, 4 and
    the first 8, and the first two text batches of 8, run their rows alone too (batch invariance). Those 16
    sentences (16 languages) are
    also the zero-shot labels of all 64 images: more labels flatten a model's probabilities until few images
    are confident enough to count.
    """
    from ..runtime.images import normalize
    from ..runtime.text import load_tokenizer, tokenize

    cases = []
    for number, rows in enumerate(_batches(len(images), first=(1, 2, 4))):
        name = f"image {rows[0] + 1} b1" if len(rows) == 1 else f"images {rows[0] + 1}-{rows[-1] + 1} b{len(rows)}"
        cases.append(Case(VISUAL, name, {TOWER_INPUTS[VISUAL][0]: normalize(images[list(rows)], manifest.image)},
                          quick=number == 1, alone=number in (1, 2, 3), rows=tuple(rows)))

    def encode(texts: list[str], max_length: int) -> dict[str, np.ndarray]:
        return tokenize(load_tokenizer(tokenizer_json, manifest.text, max_length), texts)

    languages, sentences = zip(*SENTENCES)
    short, longest = manifest.text.max_length, manifest.text.model_max_length
    for number, rows in enumerate(_batches(len(sentences), first=(1,))):
        texts = [sentences[i] for i in rows]
        name = (f"sentence {rows[0] + 1} b1 unpadded" if len(rows) == 1
                else f"sentences {rows[0] + 1}-{rows[-1] + 1} b{len(rows)} padded")
        cases.append(Case(TEXTUAL, name, encode(texts, short), quick=number == 1, alone=number in (1, 2),
                          zero_shot=number in (1, 2), texts=tuple(texts), languages=tuple(languages[i] for i in rows), max_length=short))
    long_text = " ".join(sentences[:18] * 4)
    for name, texts in (("long b1 unpadded", [long_text]), ("long+short b2 padded", [long_text, sentences[17]])):
        cases.append(Case(TEXTUAL, name, encode(texts, longest), alone=len(texts) > 1, zero_shot=False,
                          texts=tuple(texts), languages=("mixed",) * len(texts), max_length=longest))
    return cases
