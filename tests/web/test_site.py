"""The site of ``convert --to web`` in headless Chromium against the Python runtime, per precision (fp32, int8):
token ids, text and image vectors, indexing photos through the page's file input, search ranking, and that
every request the page (and its workers) made went to the site's own origin.

The measured minima are written to ``build/web-parity.json`` (docs/web.md quotes them).
"""

from __future__ import annotations

import base64
import json
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
from PIL import Image

from altclip_onnx import Encoder, Index

from ..cases import LONG_TEXT, ODD_TEXTS, PARITY_TEXTS
from .conftest import PRECISIONS, OpenPage, StaticServer, open_site

# Texts whose ids must equal the runtime's: the 36 sentences (18 languages), the odd texts but the family emoji
# (transformers.js' tokenizer turns its zero-width joiners into spaces: docs/clients.md), one past max_length.
TOKEN_TEXTS = PARITY_TEXTS + [t for t in ODD_TEXTS if "\u200d" not in t] + [LONG_TEXT]
TEXT_MIN_COSINE = {"fp32": 0.99999, "int8": 0.9999}
IMAGE_MIN_COSINE = {"fp32": 0.99999, "int8": 0.9999}
LIBRARY = ("astronaut", "chelsea", "coffee", "rocket", "camera", "horse", "hubble_deep_field", "immunohistochemistry")
QUERIES = ("a photo of a cat", "一杯咖啡", "Eine Rakete startet in den Himmel")
MEASURED = Path(__file__).resolve().parents[2] / "build" / "web-parity.json"
measured: dict[str, dict[str, float]] = {}

pytestmark = pytest.mark.parametrize("precision", PRECISIONS)


def record(precision: str, name: str, value: float) -> None:
    measured.setdefault(precision, {})[name] = value
    MEASURED.parent.mkdir(parents=True, exist_ok=True)
    MEASURED.write_text(json.dumps(measured, indent=2), encoding="utf-8")


@pytest.fixture(scope="module")
def encoders(tiny_bundle: Path) -> dict[str, Encoder]:
    return {p: Encoder(tiny_bundle, provider="cpu", precision=p) for p in PRECISIONS}


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    import skimage.data as skdata

    folder = tmp_path_factory.mktemp("web-library")
    paths = []
    for name in LIBRARY:
        array = getattr(skdata, name)()
        array = (array * 255).astype(np.uint8) if array.dtype == bool else array
        path = folder / f"{name}.jpg"
        Image.fromarray(array).convert("RGB").save(path, "JPEG", quality=90)
        paths.append(path)
    return paths


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_site_files_and_headers(precision: str, sites: dict[str, Path], servers) -> None:  # type: ignore[no-untyped-def]
    site = sites[precision]
    config = json.loads((site / "site.json").read_text())
    assert config["precision"] == precision and config["dtype"] == {"fp32": "fp32", "int8": "q8"}[precision]
    graphs = sorted(p.name for p in (site / "models" / config["model"] / "onnx").iterdir())
    suffix = "_quantized" if precision == "int8" else ""
    assert graphs == [f"text_model{suffix}.onnx", f"vision_model{suffix}.onnx"]
    runtime = sorted(str(p.relative_to(site)) for p in (site / "ort").rglob("*") if p.is_file())
    assert runtime == sorted(config["wasm"].values()) and [Path(p).name for p in runtime] == [
        "ort-wasm-simd-threaded.asyncify.mjs", "ort-wasm-simd-threaded.asyncify.wasm"]
    for path in ("/", "/" + config["wasm"]["wasm"], "/assets/worker.js"):
        with urllib.request.urlopen(servers[precision].url + path) as response:
            assert response.headers["Cross-Origin-Opener-Policy"] == "same-origin"
            assert response.headers["Cross-Origin-Embedder-Policy"] == "require-corp"
            if path.endswith(".wasm"):
                assert response.headers["Content-Type"] == "application/wasm"


def test_the_page_loads_cross_origin_isolated(precision: str, pages) -> None:  # type: ignore[no-untyped-def]
    page: OpenPage = pages(precision)
    assert page.info["crossOriginIsolated"] is True
    assert page.info["precision"] == precision and page.info["embeddingDim"] == 16
    page.page.wait_for_selector("#folder:not([disabled])")
    assert "The model is loaded" in page.page.inner_text("#model-status")


def test_token_ids_equal_the_runtime(precision: str, pages, encoders) -> None:  # type: ignore[no-untyped-def]
    ours = encoders[precision].tokenize(TOKEN_TEXTS)
    want = [row[mask.astype(bool)].tolist() for row, mask in zip(ours["input_ids"], ours["attention_mask"])]
    got = pages(precision).call("(texts) => altclip.tokenize(texts)", TOKEN_TEXTS)
    differing = [(text, w, g) for text, w, g in zip(TOKEN_TEXTS, want, got) if w != g]
    assert differing == [] and len(got) == len(TOKEN_TEXTS)
    assert len(got[-1]) == encoders[precision].manifest.text.max_length  # truncated, </s> kept
    record(precision, "token_texts_equal", len(TOKEN_TEXTS))


def test_text_vectors_equal_the_runtime(precision: str, pages, encoders) -> None:  # type: ignore[no-untyped-def]
    texts = PARITY_TEXTS + ["", LONG_TEXT]
    got = np.array(pages(precision).call("async (t) => (await altclip.embedTexts(t)).map(v => Array.from(v))", texts))
    want = encoders[precision].encode_texts(texts)
    assert got.shape == want.shape
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    found = float(cosines(got, want).min())
    record(precision, "text_min_cosine", found)
    assert found >= TEXT_MIN_COSINE[precision]
    # A text's vector does not depend on what else the call embeds (texts are never padded to each other).
    alone = np.array(pages(precision).call("async (t) => (await altclip.embedTexts(t)).map(v => Array.from(v))",
                                           [texts[0]]))
    assert np.array_equal(alone[0], got[0])


def test_image_vectors_equal_the_runtime(precision: str, pages, encoders, fixture_photos, library) -> None:  # type: ignore[no-untyped-def]
    photos = [*fixture_photos, *library]
    page = pages(precision)
    got = np.array(page.call(f"async () => (await altclip.embedImages({page.files(photos)})).map(v => Array.from(v))"))
    want = encoders[precision].encode_images([str(p) for p in photos])
    found = cosines(got, want)
    record(precision, "image_min_cosine", float(found.min()))
    assert float(found.min()) >= IMAGE_MIN_COSINE[precision], dict(zip([p.name for p in photos], found.round(7)))


def test_pixel_values_equal_the_runtime(precision: str, pages, encoders, fixture_photos, library) -> None:  # type: ignore[no-untyped-def]
    """The page's port of the runtime's preprocessing (src/altclip_onnx/web/sources/src/pixels.js): the browser decodes, then Pillow's
    resampling, crop and normalization table as in altclip_onnx.runtime.images."""
    photos = [*fixture_photos, *library]
    page = pages(precision)
    encoded = page.call(f"""async () => {{  // the Float32Array's bytes, base64 (a JSON list of floats is slow)
        const bytes = new Uint8Array((await altclip.pixelValues({page.files(photos)})).buffer);
        let text = "";
        for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
        return btoa(text); }}""")
    got = np.frombuffer(base64.b64decode(encoded), dtype="<f4")
    want = encoders[precision].preprocess([str(p) for p in photos])
    difference = float(np.abs(got.reshape(want.shape) - want).max())
    record(precision, "pixel_max_abs_difference", difference)
    assert difference == 0.0


@pytest.fixture(scope="module")
def odd_photos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Files that take other paths through a decoder: a gradient alpha, a palette with a transparent index, CMYK,
    an EXIF rotation, and 16 bits per sample."""
    import skimage.data as skdata

    folder = tmp_path_factory.mktemp("odd-photos")
    base = Image.fromarray(skdata.chelsea()).resize((300, 240))
    made = {name: folder / name for name in ("alpha.png", "palette.png", "cmyk.jpg", "exif6.jpg", "gray16.png")}
    alpha = base.convert("RGBA")
    alpha.putalpha(Image.fromarray(np.tile(np.linspace(0, 255, 300).astype(np.uint8), (240, 1))))
    alpha.save(made["alpha.png"])
    base.convert("P", palette=Image.ADAPTIVE, colors=64).save(made["palette.png"], transparency=0)
    base.convert("CMYK").save(made["cmyk.jpg"], quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise
    base.save(made["exif6.jpg"], quality=95, exif=exif.tobytes())
    deep = np.asarray(base.convert("L")).astype(np.uint16) * 257 + np.random.default_rng(0).integers(0, 257, (240, 300))
    Image.frombytes("I;16", (300, 240), deep.astype("<u2").tobytes()).save(made["gray16.png"])
    return made


def test_pixel_values_of_odd_files(precision: str, pages, encoders, odd_photos) -> None:  # type: ignore[no-untyped-def]
    """Transparency (composited onto white), a palette's transparent index, CMYK and EXIF orientation give the
    runtime's pixel values exactly. 16-bit samples do not: the browser's decoder reduces them to 8 bits itself
    (the runtime rounds v / 257), so those values may differ by up to 2 levels after resampling."""
    page = pages(precision)
    spec = encoders[precision].manifest.image
    level = spec.rescale_factor / min(spec.std)  # one 8-bit level, in the tower's units
    for name, path in odd_photos.items():
        encoded = page.call(f"""async () => {{
            const bytes = new Uint8Array((await altclip.pixelValues({page.files([path])})).buffer);
            let text = "";
            for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
            return btoa(text); }}""")
        want = encoders[precision].preprocess([str(path)])
        difference = np.abs(np.frombuffer(base64.b64decode(encoded), dtype="<f4").reshape(want.shape) - want)
        if name == "gray16.png":
            record(precision, "pixel_16_bit_max_levels", float(difference.max() / level))
            assert float(difference.max()) <= 2 * level + 1e-6, difference.max() / level
        else:
            assert float(difference.max()) == 0.0, (name, difference.max() / level)


def test_indexing_through_the_page_and_search_ranking(precision: str, pages, encoders, library,  # type: ignore[no-untyped-def]
                                                      tmp_path: Path, screenshot_dir: Path) -> None:
    page = pages(precision)
    page.page.set_input_files("#files", [str(p) for p in library])
    page.page.wait_for_function(f"() => altclip.photos.length === {len(library)} && "
                                "document.querySelector('#progress').hidden")
    assert f"{len(library)} photos ready" in page.page.inner_text("#index-status")
    encoder = encoders[precision]
    with Index.open(tmp_path / "photos.idx", create=True) as index:
        index.update(encoder, library[0].parent, progress=False)
        for query in QUERIES:
            want = [(Path(hit.path).name, hit.score) for hit in index.search_text(encoder, query, k=len(library))]
            got = page.call("([q, k]) => altclip.search(q, k)", [query, len(library)])
            assert [name for name, _ in want] == [hit["name"] for hit in got], (query, want, got)
            # |score difference| <= |text vector difference| + |image vector difference| = sqrt(2 (1 - cosine)) each
            bound = sum(np.sqrt(2 * (1 - gate[precision])) for gate in (TEXT_MIN_COSINE, IMAGE_MIN_COSINE))
            np.testing.assert_allclose([s for _, s in want], [hit["score"] for hit in got], atol=bound)
        # By example photo: the ranking of Index.search_image. At int8 two image vectors each within the image
        # gate may swap photos whose scores lie closer than the bound: each place's score must then agree.
        want = [(Path(hit.path).name, hit.score) for hit in index.search_image(encoder, library[1], k=len(library))]
        page.files([library[1]])
        got = [hit["name"] for hit in page.call("async (k) => await altclip.searchByImage(window.__files[0], k)",
                                                len(library))]
        assert got[0] == library[1].name
        if precision == "fp32":
            assert got == [name for name, _ in want]
        image_bound = 2 * np.sqrt(2 * (1 - IMAGE_MIN_COSINE[precision]))
        scores = dict(want)
        assert all(abs(scores[name] - score) <= image_bound for name, (_, score) in zip(got, want)), (got, want)
    # The UI: a query typed and submitted shows every photo as a thumbnail from the local files, best first.
    page.page.fill("#q", QUERIES[0])
    page.page.press("#q", "Enter")
    page.page.wait_for_function(f"() => document.querySelectorAll('#results img').length === {len(library)}")
    first = page.page.get_attribute("#results li:first-child img", "src")
    assert first.startswith("blob:" + page.origin)
    page.page.screenshot(path=str(screenshot_dir / f"web-search-{precision}.png"), full_page=True)
    shown = page.page.eval_on_selector_all("#results li .path", "items => items.map((item) => item.textContent)")
    assert shown == [hit["name"] for hit in page.call("([q, k]) => altclip.search(q, k)", [QUERIES[0], len(library)])]
    page.files([library[2]])  # search by photo, through the page: it lists searchByImage's ranking
    ranked = [hit["name"] for hit in page.call("async (k) => await altclip.searchByImage(window.__files[0], k)",
                                               len(library))]
    assert ranked[0] == library[2].name and ranked != shown  # else the wait below could not tell them apart
    page.page.set_input_files("#search-file", str(library[2]))
    page.page.wait_for_function("""(ranked) => JSON.stringify([...document.querySelectorAll('#results li .path')]
        .map((item) => item.textContent)) === JSON.stringify(ranked)""", arg=ranked)


def test_the_model_files_report_their_progress(precision: str, pages) -> None:  # type: ignore[no-untyped-def]
    """While the model loads, the worker reports each file's bytes (altclip.loading, and the status line): every
    graph of the model folder ends at its full size as site.json lists it."""
    page: OpenPage = pages(precision)
    files = json.loads(urllib.request.urlopen(page.origin + "/site.json").read())["model_files"]
    loading = page.call("() => altclip.loading")
    graphs = {name: size for name, size in files.items() if name.endswith(".onnx")}
    assert len(graphs) == 2
    for name, size in graphs.items():
        assert loading["files"][name] == {"loaded": size, "total": size}, (name, loading["files"])
    assert loading["loaded"] == loading["total"] >= sum(graphs.values())


def test_the_page_fits_a_phone(precision: str, pages, screenshot_dir: Path) -> None:  # type: ignore[no-untyped-def]
    page = pages(precision).page
    page.set_viewport_size({"width": 390, "height": 844})
    try:
        assert page.evaluate("() => document.documentElement.scrollWidth") <= 390
        page.screenshot(path=str(screenshot_dir / f"web-phone-{precision}.png"))
    finally:
        page.set_viewport_size({"width": 1280, "height": 800})


def test_a_reload_resumes_from_the_caches(precision: str, pages, library) -> None:  # type: ignore[no-untyped-def]
    """Cache Storage keeps the model's files and onnxruntime-web's under their (versioned) URLs: a reload
    downloads none of them again, but those the page said this browser did not keep (none, unless the disk is
    nearly full: test_a_browser_that_keeps_too_little_says_so). IndexedDB keeps the photos' vectors and
    thumbnails: a reload embeds nothing, searches the same, and choosing the same photos again embeds none."""
    page: OpenPage = pages(precision)
    site = json.loads(urllib.request.urlopen(page.origin + "/site.json").read())
    assert page.info["offline"]["files"] == len(site["model_files"]) + len(site["wasm"])
    ranked = page.call("([q, k]) => altclip.search(q, k)", [QUERIES[1], len(library)])
    before = len(page.requests)
    page.page.reload()
    info = page.call("async () => await altclip.ready")
    assert info["precision"] == precision and info["photos"] == len(library)
    assert set(downloads(page.requests[before:])) == set(page.info["offline"]["missing"])
    assert len(page.requests) > before
    assert page.call("() => altclip.stats") == {"embedded": 0, "restored": len(library)}
    assert page.call("([q, k]) => altclip.search(q, k)", [QUERIES[1], len(library)]) == ranked
    page.page.fill("#q", QUERIES[1])
    page.page.press("#q", "Enter")  # thumbnails from IndexedDB: the files are not there after a reload
    page.page.wait_for_function(f"() => document.querySelectorAll('#results img').length === {len(library)}")
    assert page.call("() => altclip.photos.every(p => p.file === null)")
    page.page.set_input_files("#files", [str(p) for p in library])
    page.page.wait_for_function("() => altclip.photos.every(p => p.file !== null)")
    assert page.call("() => altclip.stats.embedded") == 0


def downloads(urls: list[str]) -> list[str]:
    """The paths of the model's and onnxruntime-web's files among requested ``urls``."""
    return [urlparse(url).path for url in urls if "/models/" in url or "/ort/" in url]


def test_a_browser_that_keeps_too_little_says_so(precision: str, browser, sites,  # type: ignore[no-untyped-def]
                                                 tmp_path: Path) -> None:
    """Where the browser refuses to keep a file (here a small quota for the site, set through Chromium's DevTools
    protocol; on a nearly full disk, any), the page says so, works, and the next visit downloads exactly the
    files it said were not kept."""
    site = json.loads((sites[precision] / "site.json").read_text(encoding="utf-8"))
    wasm = sites[precision] / site["wasm"]["wasm"]
    quota = sum(site["model_files"].values()) + wasm.stat().st_size // 2  # the model fits, the WebAssembly not
    server = StaticServer.start(sites[precision], tmp_path / "server.log")  # another port: an origin of its own
    quota_override = {"origin": server.url, "quotaSize": quota}
    page = None
    try:
        page = open_site(browser, server.url,
                         lambda tab: browser.new_cdp_session(tab).send("Storage.overrideQuotaForOrigin", quota_override))
        missing = page.info["offline"]["missing"]
        assert "/" + site["wasm"]["wasm"] in missing
        status = page.page.inner_text("#model-status")
        assert f"did not keep {len(missing)} of its {page.info['offline']['files']} files" in status
        assert len(page.call("(q) => altclip.search(q, 3)", QUERIES[0])) == 0  # it works: no photos yet
        before = len(page.requests)
        page.page.reload()
        page.call("async () => await altclip.ready")
        assert set(downloads(page.requests[before:])) == set(missing)
    finally:
        if page is not None:
            page.page.close()
        assert server.stop() == 0


def test_a_folder_chosen_again_drops_its_removed_photos(precision: str, pages, library) -> None:  # type: ignore[no-untyped-def]
    """A folder pick's files carry webkitRelativePath ("album/x.jpg"); Playwright cannot choose a folder in this
    Chromium, so the files are made here with that property and given to addPhotos, as the folder input does."""
    page: OpenPage = pages(precision)
    folder = """(names) => window.__files.filter(f => names.includes(f.name)).map(f => Object.defineProperty(
        new File([f], f.name, {type: f.type, lastModified: 1}), "webkitRelativePath", {value: "album/" + f.name}))"""
    page.files(library)
    names = [p.name for p in library]
    embedded = page.call("() => altclip.stats.embedded")
    assert page.call(f"async (names) => await altclip.addPhotos(({folder})(names))", names) == 2 * len(library)
    assert page.call("() => altclip.stats.embedded") == embedded + len(library)
    assert page.call(f"async (names) => await altclip.addPhotos(({folder})(names))", names[:-1]) == 2 * len(library) - 1
    kept = page.call("() => altclip.photos.map(p => p.name)")
    assert f"album/{names[-1]}" not in kept and f"album/{names[0]}" in kept and names[-1] in kept
    assert page.call("() => altclip.stats.embedded") == embedded + len(library)  # nothing embedded again
    assert page.call("(names) => altclip.removePhotos(names)", [f"album/{n}" for n in names[:-1]]) == len(library)
    page.page.reload()
    assert page.call("async () => (await altclip.ready).photos") == len(library)  # the removals were kept too


def test_a_folder_read_with_the_file_system_access_api(precision: str, pages, library) -> None:  # type: ignore[no-untyped-def]
    """The File System Access API's directory handle (the picker itself cannot be driven headless, so the handle
    is one of the origin-private file system's, the same interface): its photos, a subfolder's included, are
    indexed as "folder/sub/name"; the handle is kept in IndexedDB, so after a reload rescan() reads the folder
    again without a picker, embeds nothing unchanged and drops a photo deleted from it."""
    page: OpenPage = pages(precision)
    page.files(library)
    make = """async () => {
        const root = await (await navigator.storage.getDirectory()).getDirectoryHandle("trip", {create: true});
        const sub = await root.getDirectoryHandle("day2", {create: true});
        for (const [i, file] of window.__files.entries()) {
            const writable = await (await (i % 2 ? sub : root).getFileHandle(file.name, {create: true})).createWritable();
            await writable.write(file);
            await writable.close();
        }
        return root;
    }"""
    kept = len(page.call("() => altclip.photos"))
    embedded = page.call("() => altclip.stats.embedded")
    assert page.call(f"async () => await altclip.addFolder(await ({make})())") == kept + len(library)
    names = page.call("() => altclip.photos.map(p => p.name).filter(n => n.startsWith('trip/'))")
    assert sorted(names) == sorted(f"trip/{'day2/' if i % 2 else ''}{p.name}" for i, p in enumerate(library))
    assert page.call("() => altclip.stats.embedded") == embedded + len(library)
    page.page.reload()
    assert page.call("async () => { await altclip.ready; return altclip.folder }") == "trip"
    assert page.page.is_visible("#rescan") and page.page.inner_text("#rescan") == "Scan trip again"
    page.call("""async (name) => { const root = await (await navigator.storage.getDirectory()).getDirectoryHandle("trip");
                 await root.removeEntry(name); }""", library[0].name)
    assert page.call("async () => await altclip.rescan()") == kept + len(library) - 1
    assert f"trip/{library[0].name}" not in page.call("() => altclip.photos.map(p => p.name)")
    assert page.call("() => altclip.stats.embedded") == 0  # after the reload: nothing embedded again
    assert page.call("(names) => altclip.removePhotos(names)",
                     [n for n in names if n != f"trip/{library[0].name}"]) == kept


def test_every_request_stayed_on_the_site(precision: str, pages) -> None:  # type: ignore[no-untyped-def]
    page: OpenPage = pages(precision)
    assert page.errors == []
    outside = [url for url in page.requests
               if not (url.startswith(page.origin + "/") or url.startswith("blob:" + page.origin + "/"))]
    assert outside == [] and len(page.requests) > 10
    model = json.loads(urllib.request.urlopen(page.origin + "/site.json").read())["model"]
    assert any(f"/models/{model}/onnx/" in url for url in page.requests)  # the workers' requests are seen
