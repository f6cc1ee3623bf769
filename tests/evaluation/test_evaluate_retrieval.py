"""evaluation/retrieval.py and the ``evaluate retrieval`` command (and the ``evaluate`` group around it).

The captioned set is made of scikit-image photos written as JPEG and PNG, with captions in several
languages. The tiny bundle has random weights, so its recalls are arbitrary: the oracle is an
independent computation here (embed with the Encoder, rank with plain sorting), which the module's
numbers must equal exactly. Where the answer is known without a model (hand-made vectors, a set of
identical copies) it is asserted directly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import altclip_onnx
from altclip_onnx.cli import main
from altclip_onnx.cli.app import percent
from altclip_onnx.errors import InputError, VerificationError
from altclip_onnx.evaluation import IMAGE_TO_TEXT, TEXT_TO_IMAGE, count_hits, evaluate_retrieval, read_captions
from altclip_onnx.runtime import Encoder

from ..blocking import BLOCK_EXPORT_SIDE

skdata = pytest.importorskip("skimage.data")

KS = (1, 5, 10)
BATCH = 3  # images per model call, in the module and in the oracle alike
# image (relative path), then its captions as (language or None, text). Listed out of alphabetical order on
# purpose: ties fall back to the order of first appearance in the file, not to the names.
SET = {
    "photos/rocket.jpg": [("en", "A rocket lifting off from the launch pad."), ("zh", "火箭从发射台升空。"),
                          ("de", "Eine Rakete hebt von der Startrampe ab."), ("ja", "発射台から打ち上げられるロケット。")],
    "photos/chelsea.jpg": [("en", "A ginger cat looking to the side."), ("zh", "一只橘猫看向一边。"),
                           ("de", "Eine rote Katze schaut zur Seite."), ("fr", "Un chat roux regarde de côté.")],
    "photos/astronaut.png": [("en", "An astronaut in a spacesuit with a flag."), ("ja", "宇宙服を着た宇宙飛行士。"),
                             ("de", "Eine Astronautin im Raumanzug.")],
    "photos/coffee.jpg": [("en", "A cup of coffee on a saucer."), ("zh", "碟子上的一杯咖啡。"),
                          ("en", "Espresso in a white cup."), (None, "咖啡 coffee カフェ")],
    "scans/camera.png": [("en", "A black and white photo of a cameraman."), ("de", "Ein Mann mit einer Kamera."),
                         ("fr", "Un homme avec une caméra.")],
    "scans/moon.png": [("en", "The surface of the moon."), ("zh", "月球表面。"), ("ja", "月の表面。")],
    "photos/coins.jpg": [("en", "Old coins on a table."), ("de", "Alte Münzen."), ("zh", "旧硬币。")],
    "photos/hubble_deep_field.jpg": [("en", "Galaxies in deep space."), ("ja", "深宇宙の銀河。"),
                                     ("fr", "Des galaxies dans l'espace lointain.")],
    "scans/text.png": [("en", "Printed letters on a page."), ("de", "Gedruckte Buchstaben.")],
    "photos/immunohistochemistry.jpg": [("en", "Stained tissue under a microscope."), ("zh", "显微镜下的染色组织。")],
    "photos/clock.png": [("en", "A clock on the wall."), ("fr", "Une horloge murale."), ("ja", "壁の時計。")],
    "photos/brick.jpg": [("en", "A brick wall."), ("de", "Eine Ziegelmauer.")],
}


def captions_in_file_order() -> list[dict]:
    """Rounds over the images (first captions of every image, then the second ones, ...): each image's
    captions are spread over the file, and every image first appears in the first round."""
    rounds = max(len(captions) for captions in SET.values())
    lines = []
    for i in range(rounds):
        for image, captions in SET.items():
            if i < len(captions):
                language, text = captions[i]
                lines.append({"image": image, "caption": text, **({"language": language} if language else {})})
    return lines


def write_jsonl(path: Path, lines: list) -> Path:
    path.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def photo_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(image folder, captions file) of SET."""
    root = tmp_path_factory.mktemp("retrieval")
    images = root / "images"
    for relative in SET:
        path = images / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        options = {"quality": 90} if path.suffix == ".jpg" else {}
        Image.fromarray(getattr(skdata, path.stem)()).save(path, **options)
    return images, write_jsonl(root / "captions.jsonl", captions_in_file_order())


@pytest.fixture(scope="module")
def encoders(tiny_bundle: Path) -> dict[str, Encoder]:
    return {p: Encoder(tiny_bundle, provider="cpu", precision=p) for p in ("fp32", "int8", "fp16")}


# ---------------------------------------------------------------------------------------------- oracle


def oracle(encoder: Encoder, images_dir: Path, lines: list[dict], batch_size: int = BATCH) -> dict:
    """{(direction, language or None, k): Fraction(hits, queries)}, computed without the module.

    Scores: one float32 product of caption rows by image columns. Ranking: Python's sort on (-score,
    index), i.e. by score and then by file order (images by first appearance).
    """
    images = list(dict.fromkeys(line["image"] for line in lines))
    owner = [images.index(line["image"]) for line in lines]
    language = [line.get("language") or "und" for line in lines]
    image_rows = encoder.encode_images([images_dir / name for name in images], batch_size=batch_size)
    text_rows = encoder.encode_texts([line["caption"] for line in lines])
    scores = text_rows @ image_rows.T
    result = {}
    for group in [None, *sorted(set(language))]:
        members = [c for c in range(len(lines)) if group is None or language[c] == group]
        text_ranks = []
        for c in members:
            ranking = sorted(range(len(images)), key=lambda j: (-scores[c, j], j))
            text_ranks.append(ranking.index(owner[c]))
        image_ranks = []
        for i in range(len(images)):
            own = [c for c in members if owner[c] == i]
            if own:
                ranking = sorted(members, key=lambda c: (-scores[c, i], c))
                image_ranks.append(min(ranking.index(c) for c in own))
        for k in KS:
            result[TEXT_TO_IMAGE, group, k] = Fraction(sum(r < k for r in text_ranks), len(text_ranks))
            result[IMAGE_TO_TEXT, group, k] = Fraction(sum(r < k for r in image_ranks), len(image_ranks))
    return result


def report_values(report, precision: str) -> dict:  # type: ignore[no-untyped-def]
    values = {}
    for direction in (TEXT_TO_IMAGE, IMAGE_TO_TEXT):
        for group in [None, *report.languages]:
            for k in KS:
                hits = report.hits[precision][direction][group][k]
                values[direction, group, k] = Fraction(hits, report.queries[direction][group])
    return values


# ------------------------------------------------------------------------------------------------ API


def test_recall_equals_an_independent_computation_for_every_precision(photo_set, encoders, tiny_bundle) -> None:
    images_dir, captions = photo_set
    lines = captions_in_file_order()
    report = evaluate_retrieval(tiny_bundle, images_dir, captions, provider="cpu", batch_size=BATCH, progress=False)
    assert report.precisions == ("fp32", "int8", "fp16")  # default: every precision the bundle has
    assert report.images == len(SET) and report.captions == len(lines) and report.ks == KS
    assert report.languages == ("de", "en", "fr", "ja", "und", "zh")
    for precision, encoder in encoders.items():
        expected = oracle(encoder, images_dir, lines)
        assert report_values(report, precision) == expected, precision
        for (direction, group, k), value in expected.items():
            assert report.recall(precision, direction, group, k) == value.numerator / value.denominator
    # Query counts: captions for text->image, images with a caption in the language for image->text.
    captions_of = Counter(language or "und" for captions in SET.values() for language, _ in captions)
    images_of = Counter(language for captions in SET.values() for language in {lang or "und" for lang, _ in captions})
    assert report.queries[TEXT_TO_IMAGE] == {None: len(lines), **captions_of}
    assert report.queries[IMAGE_TO_TEXT] == {None: len(SET), **images_of}
    assert images_of["en"] == 12 and captions_of["en"] == 13  # coffee has two English captions
    assert report.providers == dict.fromkeys(("fp32", "int8", "fp16"), "CPUExecutionProvider")
    # The random model must not make the check trivial: some recalls are neither 0 nor 1.
    assert any(0 < v < 1 for v in report_values(report, "fp32").values())


def test_an_encoder_runs_as_it_is_or_gives_its_settings(photo_set, encoders) -> None:
    images_dir, captions = photo_set
    lines = captions_in_file_order()
    alone = evaluate_retrieval(encoders["int8"], images_dir, captions, batch_size=BATCH, progress=False)
    assert alone.precisions == ("int8",)
    assert report_values(alone, "int8") == oracle(encoders["int8"], images_dir, lines)
    both = evaluate_retrieval(encoders["int8"], images_dir, captions, precisions=["int8", "fp32"],
                              batch_size=BATCH, workers=0, progress=False)
    assert both.precisions == ("fp32", "int8")  # the canonical order
    assert report_values(both, "fp32") == oracle(encoders["fp32"], images_dir, lines)
    assert report_values(both, "int8") == report_values(alone, "int8")


def test_to_json_has_the_documented_shape(photo_set, tiny_bundle) -> None:
    images_dir, captions = photo_set
    report = evaluate_retrieval(tiny_bundle, images_dir, captions, precisions="fp32", provider="cpu",
                                batch_size=BATCH, progress=False)
    data = json.loads(json.dumps(report.to_json()))
    assert set(data) == {"images_dir", "captions", "images", "caption_count", "ks", "languages", "queries",
                         "providers", "recall"}
    assert data["ks"] == [1, 5, 10] and data["images"] == len(SET) and data["caption_count"] == report.captions
    assert data["queries"]["image_to_text"] == {
        "overall": 12, "by_language": {name: report.queries[IMAGE_TO_TEXT][name] for name in report.languages}}
    assert data["providers"] == {"fp32": "CPUExecutionProvider"}
    fp32 = data["recall"]["fp32"]
    assert set(fp32) == {"text_to_image", "image_to_text"}
    for direction in (TEXT_TO_IMAGE, IMAGE_TO_TEXT):
        assert fp32[direction]["overall"] == {str(k): report.recall("fp32", direction, None, k) for k in KS}
        assert list(fp32[direction]["by_language"]) == list(report.languages)
        assert fp32[direction]["by_language"]["ja"]["5"] == report.recall("fp32", direction, "ja", 5)


def test_identical_copies_rank_by_file_order(tmp_path: Path, encoders) -> None:
    """12 copies of one photo, one English caption each, and two more captions (de, ja) for the first copy,
    at the end of the file. Every image scores the same for a caption, so text->image ranks the images by
    file order: copy i is at rank i. Each image ranks the English captions the same way, so the top k of
    them belong to exactly k images."""
    copies = 12
    photo = Image.fromarray(skdata.coffee())
    lines = []
    for i in range(copies):
        photo.save(tmp_path / f"copy-{i:02d}.png")
        lines.append({"image": f"copy-{i:02d}.png", "caption": f"photo number {i} of a cup", "language": "en"})
    lines += [{"image": "copy-00.png", "caption": "Foto einer Tasse", "language": "de"},
              {"image": "copy-00.png", "caption": "カップの写真", "language": "ja"}]
    captions = write_jsonl(tmp_path / "captions.jsonl", lines)
    encoder = encoders["fp32"]
    rows = encoder.encode_images(sorted(tmp_path.glob("*.png")), batch_size=1)
    assert all(np.array_equal(rows[0], row) for row in rows)  # the premise: identical vectors
    report = evaluate_retrieval(encoder, tmp_path, captions, batch_size=1, progress=False)

    def recalls(direction: str, group: str | None) -> list[float | None]:
        return [report.recall("fp32", direction, group, k) for k in KS]

    # text->image: ranks 0 (three captions of copy 0), then 1..11 (one caption each).
    assert recalls(TEXT_TO_IMAGE, None) == [3 / 14, 7 / 14, 12 / 14]
    assert recalls(TEXT_TO_IMAGE, "en") == recalls(IMAGE_TO_TEXT, "en") == [1 / 12, 5 / 12, 10 / 12]
    for language in ("de", "ja"):  # one caption, whose image (copy 0) comes first among equals
        assert recalls(TEXT_TO_IMAGE, language) == recalls(IMAGE_TO_TEXT, language) == [1.0, 1.0, 1.0]
    assert report_values(report, "fp32") == oracle(encoder, tmp_path, lines, batch_size=1)


def test_count_hits_on_hand_made_vectors() -> None:
    """Three images on the axes; captions placed so every rank is known, including ties and blocks."""
    images = np.eye(3, dtype=np.float32)
    texts = np.array([
        [1, 0, 0],      # 0: image 0, rank 0
        [1, 0, 0],      # 1: image 1 (scores 1, 0, 0): image 0 first, then 1 -> rank 1
        [0, 0, 0],      # 2: image 2, all scores tie at 0 -> rank 2 (file order of the images)
        [0, 0.6, 0.8],  # 3: image 1 (0, .6, .8) -> rank 1
        [0, 0, 1],      # 4: image 2 -> rank 0
    ], dtype=np.float32)
    image_of = [0, 1, 2, 1, 2]
    languages = ["en", "en", "de", "de", "en"]
    hits = count_hits(texts, images, image_of, languages, ks=(1, 2))
    assert hits[TEXT_TO_IMAGE] == {None: {1: 2, 2: 4}, "en": {1: 2, 2: 3}, "de": {1: 0, 2: 1}}
    # image->text, all captions. Image 0: scores 1,1,0,0,0; its caption 0 is first -> rank 0.
    # Image 1: scores 0,0,0,.6,0; its best caption 3 is first -> rank 0.
    # Image 2: scores 0,0,0,.8,1; its best caption 4 is first -> rank 0.
    # "en" (captions 0, 1, 4): image 0 rank 0; image 1: scores 0,0,0 -> its caption 1 is second -> rank 1;
    # image 2: caption 4 first -> rank 0. "de" (captions 2, 3): image 1: caption 3 (.6) first -> rank 0;
    # image 2: scores 0 (caption 2) and .8 (caption 3, not its own) -> caption 2 second -> rank 1.
    assert hits[IMAGE_TO_TEXT] == {None: {1: 3, 2: 3}, "en": {1: 2, 2: 3}, "de": {1: 1, 2: 2}}
    for block_rows in (1, 2, 4):  # blocks of captions give the same counts
        assert count_hits(texts, images, image_of, languages, ks=(1, 2), block_rows=block_rows) == hits
    # An image with two equally scored captions is ranked by the first of them: caption 1 is first for
    # image 0 (caption 2 ties with it but comes later), and caption 0 is first for image 1 (all tie at 0).
    twice = count_hits(np.array([[0, 0], [1, 0], [1, 0]], dtype=np.float32), np.eye(2, dtype=np.float32),
                       [1, 0, 0], ["en"] * 3, ks=(1,))
    assert twice == {TEXT_TO_IMAGE: {None: {1: 2}, "en": {1: 2}}, IMAGE_TO_TEXT: {None: {1: 2}, "en": {1: 2}}}


# ------------------------------------------------------------------------------------------------ CLI


def run(*args: object):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def message_lines(stderr: str) -> list[str]:
    """stderr without log records (a warning such as the self-check's may precede the message)."""
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith(("WARNING ", "INFO "))]


def test_cli_json_and_table_equal_the_oracle(photo_set, encoders, tiny_bundle) -> None:
    images_dir, captions = photo_set
    lines = captions_in_file_order()
    result = run("evaluate", "retrieval", tiny_bundle, "--images", images_dir, "--captions", captions,
                 "--precision", "int8", "--precision", "fp32", "--json", "--provider", "cpu", "--batch-size", BATCH)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert list(data["recall"]) == ["fp32", "int8"]
    for precision in ("fp32", "int8"):
        expected = oracle(encoders[precision], images_dir, lines)
        for (direction, group, k), value in expected.items():
            part = data["recall"][precision][direction]
            got = part["overall"] if group is None else part["by_language"][group]
            assert got[str(k)] == value.numerator / value.denominator, (precision, direction, group, k)

    table = run("evaluate", "retrieval", tiny_bundle, "--images", images_dir, "--captions", captions,
                "--precision", "fp16,fp32", "--provider", "cpu", "--batch-size", BATCH, "--workers", 0)
    assert table.exit_code == 0, table.output
    rows = table.stdout.splitlines()
    assert rows[0].split() == ["direction", "language", "queries", "fp32", "R@1", "fp32", "R@5", "fp32", "R@10",
                               "fp16", "R@1", "fp16", "R@5", "fp16", "R@10"]
    assert rows[-1] == f"12 images, {len(lines)} captions in 6 languages"
    languages = ["all", "de", "en", "fr", "ja", "und", "zh"]
    assert [row.split()[:2] for row in rows[1:-1]] == [["text->image", g] for g in languages] + \
        [["image->text", g] for g in languages]
    expected = {p: oracle(encoders[p], images_dir, lines) for p in ("fp32", "fp16")}
    for row in rows[1:-1]:
        cells = row.split()
        direction = TEXT_TO_IMAGE if cells[0] == "text->image" else IMAGE_TO_TEXT
        group = None if cells[1] == "all" else cells[1]
        want = [percent(float(expected[p][direction, group, k])) for p in ("fp32", "fp16") for k in KS]
        assert cells[3:] == want, row


@pytest.mark.parametrize(("case", "needle"), [
    ("no-captions-file", "missing.jsonl: cannot read the captions (No such file or directory)"),
    ("captions-is-a-folder", "cannot read the captions"),
    ("bad-json", "captions.jsonl:3: not valid JSON ("),
    ("not-an-object", 'captions.jsonl:2: a JSON list, not an object; each line is one object such as {"image"'),
    ("no-caption", 'captions.jsonl:1: "caption" must be non-empty text, not None'),
    ("blank-caption", 'captions.jsonl:2: "caption" must be non-empty text'),
    ("bad-language", 'captions.jsonl:1: "language" must be text such as "en", not 7'),
    ("missing-image", "captions.jsonl:4: image 'photos/zebra.jpg' does not exist in"),
    ("image-is-a-folder", "captions.jsonl:1: image 'photos' is a folder, not an image file in"),
    ("absolute-image", "is an absolute path; write it relative to"),
    ("outside-image", "captions.jsonl:1: image '../escape.jpg' is outside"),
    ("unreadable-image", "broken.jpg: "),
    ("empty-set", "captions.jsonl: no captions; write one JSON object per line"),
    ("no-images-folder", "nowhere: no such folder"),
    ("not-utf8", "captions.jsonl:2: not UTF-8 text"),
])
def test_bad_input_is_one_line_and_exit_1(case: str, needle: str, photo_set, tiny_bundle, tmp_path: Path) -> None:
    images_dir, _ = photo_set
    good = {"image": "photos/rocket.jpg", "caption": "a rocket", "language": "en"}
    captions = tmp_path / "captions.jsonl"
    folder = images_dir
    content: list = [good, good, good]
    if case == "no-captions-file":
        captions = tmp_path / "missing.jsonl"
        content = []
    elif case == "captions-is-a-folder":
        captions = tmp_path
        content = []
    elif case == "bad-json":
        captions.write_text(json.dumps(good) + "\n\n{\"image\": \"photos/rocket.jpg\", \"caption\": \n")
        content = []
    elif case == "not-an-object":
        content = [good, ["photos/rocket.jpg", "a rocket"]]
    elif case == "no-caption":
        content = [{"image": "photos/rocket.jpg"}]
    elif case == "blank-caption":
        content = [good, {**good, "caption": "  "}]
    elif case == "bad-language":
        content = [{**good, "language": 7}]
    elif case == "missing-image":
        content = [good, good, good, {**good, "image": "photos/zebra.jpg"}]
    elif case == "image-is-a-folder":
        content = [{**good, "image": "photos"}]
    elif case == "absolute-image":
        content = [{**good, "image": str(images_dir / "photos" / "rocket.jpg")}]
    elif case == "outside-image":
        content = [{**good, "image": "../escape.jpg"}]
    elif case == "unreadable-image":
        folder = tmp_path / "images"
        folder.mkdir()
        Image.fromarray(skdata.rocket()).save(folder / "fine.jpg")
        (folder / "broken.jpg").write_bytes(b"not a jpeg at all")
        content = [{**good, "image": "fine.jpg"}, {**good, "image": "broken.jpg"}]
    elif case == "empty-set":
        captions.write_text("\n   \n\n")
        content = []
    elif case == "no-images-folder":
        folder = tmp_path / "nowhere"
    elif case == "not-utf8":
        captions.write_bytes(json.dumps(good).encode() + b"\n" + '{"image": "photos/rocket.jpg", "caption": "café"}'
                             .encode("latin-1") + b"\n")
        content = []
    if content:
        write_jsonl(captions, content)
    result = run("evaluate", "retrieval", tiny_bundle, "--images", folder, "--captions", captions,
                 "--provider", "cpu")
    assert result.exit_code == 1, result.output
    assert result.stdout == "" and "Traceback" not in result.stderr
    lines = message_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert needle in lines[0]
    if case == "unreadable-image":
        assert str(folder / "broken.jpg") in lines[0] and "fine.jpg" not in lines[0]


def test_unknown_precisions(photo_set, tiny_bundle) -> None:
    images_dir, captions = photo_set
    usage = run("evaluate", "retrieval", tiny_bundle, "--images", images_dir, "--captions", captions,
                "--precision", "fp32,bf16")
    assert usage.exit_code == 2 and "Traceback" not in usage.stderr  # a wrong option value: a usage error
    errors = [line for line in usage.stderr.splitlines() if line.startswith("Error:")]
    assert errors == ["Error: Invalid value for '--precision': unknown bf16; choose from fp32, int8, fp16"]
    with pytest.raises(InputError, match="unknown bf16; choose from fp32, int8, fp16"):
        evaluate_retrieval(tiny_bundle, images_dir, captions, precisions="bf16", progress=False)
    with pytest.raises(InputError, match="ks must be whole numbers of 1 or more"):
        evaluate_retrieval(tiny_bundle, images_dir, captions, ks=(0, 5), progress=False)


def test_a_variant_with_nan_embeddings_is_refused(photo_set, encoders, monkeypatch: pytest.MonkeyPatch) -> None:
    """A NaN score compares false with everything, so it would rank first: such a variant fails instead."""
    from altclip_onnx.evaluation import retrieval

    images_dir, captions = photo_set
    real = retrieval.embed_texts

    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        for batch in real(*args, **kwargs):
            batch.embeddings[1] = np.nan
            yield batch

    monkeypatch.setattr(retrieval, "embed_texts", broken)
    with pytest.raises(VerificationError, match=r"^int8 on CPUExecutionProvider: 0 image and 1 caption embeddings "
                                                r"are not finite"):
        evaluate_retrieval(encoders["int8"], images_dir, captions, progress=False)


def test_read_captions_normalizes_paths_and_languages(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    Image.fromarray(skdata.camera()).save(tmp_path / "a" / "x.png")
    captions = tmp_path / "c.jsonl"
    captions.write_bytes(b"\xef\xbb\xbf" + "\n".join(json.dumps(line) for line in [
        {"image": "a/x.png", "caption": "one", "language": " en "},
        {"image": "./a/../a/x.png", "caption": "two", "language": ""},
        {"image": "a/x.png", "caption": "three", "extra": 1},
    ]).encode() + b"\r\n")
    caption_set = read_captions(tmp_path, captions)
    assert caption_set.images == ("a/x.png",) and caption_set.image_of == (0, 0, 0)
    assert caption_set.languages == ("en", "und", "und") and caption_set.texts == ("one", "two", "three")


def test_the_evaluate_group_keeps_the_old_spelling(tiny_bundle: Path, tmp_path: Path) -> None:
    assert set(main.commands["evaluate"].commands) == {"classification", "retrieval"}  # type: ignore[attr-defined]
    listing = run("evaluate", "--help")
    assert listing.exit_code == 0 and "classification" in listing.stdout and "retrieval" in listing.stdout
    test_dir = tmp_path / "test"
    for name in ("rocket", "coffee"):
        (test_dir / name).mkdir(parents=True)
        Image.fromarray(getattr(skdata, name)()).save(test_dir / name / f"{name}.jpg")
    new = run("evaluate", "classification", tiny_bundle, test_dir, "--json", "--provider", "cpu")
    assert new.exit_code == 0, new.output
    old = run("evaluate", tiny_bundle, test_dir, "--json", "--provider", "cpu")
    options_first = run("evaluate", "--json", "--provider", "cpu", tiny_bundle, test_dir)
    assert old.stdout == options_first.stdout == new.stdout and json.loads(new.stdout)["images"] == 2


# ------------------------------------------------------------------------------------------- boundary


def test_a_whole_evaluation_runs_without_the_export_side(photo_set, tiny_bundle) -> None:
    """In a process where torch & co. cannot be imported (tests/blocking.py); the import statements of
    altclip_onnx.evaluation and cli/evaluate.py are read by tests/core/test_seams.py."""
    images_dir, captions = photo_set
    script = BLOCK_EXPORT_SIDE + (
        "import sys\nfrom altclip_onnx.evaluation import evaluate_retrieval\n"
        "report = evaluate_retrieval(sys.argv[1], sys.argv[2], sys.argv[3], precisions='int8', provider='cpu',\n"
        "                            progress=False)\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(('altclip_onnx.export', 'altclip_onnx.convert')))\n"
        "print(report.captions, loaded)\n")
    src = Path(altclip_onnx.__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(src), os.environ.get("PYTHONPATH")])))
    result = subprocess.run([sys.executable, "-c", script, str(tiny_bundle), str(images_dir), str(captions)],
                            env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == f"{len(captions_in_file_order())} []", result.stdout[-500:]
