"""The page in a real browser: headless Chromium (Debian's ``chromium``) driven by Playwright's Python API.

Search page (the search server, whose API needs a key): type a Chinese query with the keyboard, give the key
when asked, see thumbnails with scores; choose a photo with the keyboard and see it first; open a result with
the keyboard; drop a photo on the page. Zero-shot page: choose an image, see one probability bar per label, equal to the API's. Both
pages: every request goes to the service itself, nothing is wider than a phone-width window. Screenshots go to
``$ALTCLIP_SCREENSHOTS`` (default ``build/screenshots``).
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, quote, urlparse

import httpx
import pytest

from .conftest import API_KEY, Server, missing

if importlib.util.find_spec("playwright") is None:
    missing("playwright", "pip install -e '.[test-services]' (never 'playwright install': the browser is Debian's)")
from playwright import sync_api  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    missing("a chromium browser", "apt-get install -y chromium")

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WIDE = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
TIMEOUT = 20_000  # ms


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with tempfile.TemporaryDirectory(prefix="altclip-chromium-") as profile, sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=FLAGS, viewport=WIDE)
        context.set_default_timeout(TIMEOUT)
        yield context
        context.close()


def open_page(browser, server: Server, path: str = "/"):  # type: ignore[no-untyped-def]
    page = browser.new_page()
    page.set_viewport_size(WIDE)
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    # Subscribe to file choosers now: Playwright turns their interception on asynchronously, and a subscription
    # made only by expect_file_chooser() can come after the key press that opens the chooser.
    page.on("filechooser", lambda chooser: None)
    page.goto(server.url + path)
    return page, requested, errors


def shared_query(page) -> list[str]:  # type: ignore[no-untyped-def]
    """The q= of the page's address: what a copied link searches for."""
    return parse_qs(urlparse(page.url).query).get("q", [])


def tab_to(page, element_id: str, limit: int = 15) -> None:  # type: ignore[no-untyped-def]
    """Press Tab until the element has the focus (keyboard only)."""
    for _ in range(limit):
        if page.evaluate("() => document.activeElement && document.activeElement.id") == element_id:
            return
        page.keyboard.press("Tab")
    raise AssertionError(f"Tab never reached #{element_id}")


def drop_file(page, path: Path) -> None:  # type: ignore[no-untyped-def]
    """Drop a file on the page, as dragging it from a file manager does."""
    transfer = page.evaluate_handle(
        "([bytes, name]) => { const t = new DataTransfer();"
        " t.items.add(new File([new Uint8Array(bytes)], name, {type: 'image/jpeg'})); return t; }",
        [list(path.read_bytes()), path.name])
    page.dispatch_event("#main", "dragenter", {"dataTransfer": transfer})
    page.dispatch_event("#main", "drop", {"dataTransfer": transfer})


def fits(page) -> bool:  # type: ignore[no-untyped-def]
    return page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")


def only_from(server: Server, requested: list[str]) -> None:
    outside = [url for url in requested if not url.startswith((server.url + "/", "blob:", "data:"))]
    assert outside == [], outside  # every asset is served by the service itself: no CDN


def test_search_page(browser, search_server: Server, library: list[Path], screenshot_dir: Path) -> None:  # type: ignore[no-untyped-def]
    page, requested, errors = open_page(browser, search_server)
    tab_to(page, "q")
    page.keyboard.type("海边的日落")
    page.keyboard.press("Enter")
    # The API needs a key: the page asks for it and puts the focus in its field.
    page.wait_for_selector("#key:focus")
    page.keyboard.type(API_KEY)
    page.keyboard.press("Enter")
    last = f"#results li:nth-child({len(library)}) img[data-loaded]"
    page.wait_for_selector(last)
    hits = page.locator("#results .hit")
    assert hits.count() == len(library)
    paths = [hits.nth(i).get_attribute("title") for i in range(hits.count())]
    assert sorted(paths) == sorted(map(str, library))  # the photo's path on hover
    scores = [float(hits.nth(i).locator(".score").inner_text()) for i in range(hits.count())]
    assert scores == sorted(scores, reverse=True)
    api = httpx.get(f"{search_server.url}/v1/search", params={"q": "海边的日落", "k": 24}, headers=search_server.headers)
    assert paths == [hit["path"] for hit in api.json()["data"]]  # what the API says, in its order
    assert all(page.locator("#results img").nth(i).evaluate("img => img.naturalWidth") > 0 for i in range(len(library)))
    hits.first.hover()
    page.wait_for_timeout(300)
    assert hits.first.locator(".path").evaluate("el => getComputedStyle(el).opacity") == "1"
    assert "海边的日落" in page.locator("#search-status").inner_text()
    assert shared_query(page) == ["海边的日落"]  # the address bar now holds a link to this search
    page.screenshot(path=str(screenshot_dir / "serve-search.png"))
    page.set_viewport_size(PHONE)
    assert fits(page)
    page.screenshot(path=str(screenshot_dir / "serve-search-phone.png"), full_page=True)
    page.set_viewport_size(WIDE)

    # Search by image, keyboard only: from the search box, Tab to the file chooser and open it with Enter.
    chosen = library[3]
    page.locator("#q").focus()
    tab_to(page, "search-file")
    with page.expect_file_chooser() as chooser:
        page.keyboard.press("Enter")
    chooser.value.set_files(str(chosen))
    page.wait_for_selector("#query-image:not([hidden])")  # shown with the new results, in the same task
    page.wait_for_selector(f"#results li:nth-child({len(library)}) img[data-loaded]")
    first = page.locator("#results .hit").first
    assert first.get_attribute("title") == str(chosen)  # the photo itself comes first
    assert float(first.locator(".score").inner_text()) >= 0.999
    # the text of the earlier search is gone, from the box and from the address: the results are not for it
    assert page.locator("#q").input_value() == "" and shared_query(page) == []

    # A result opened with the keyboard: photos like it, itself first, and the focus stays in the results.
    tab_to(page, "clear-image")
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")  # the second result
    second = page.evaluate("() => document.activeElement.dataset.path")
    assert second == page.locator("#results .hit").nth(1).get_attribute("title")
    page.keyboard.press("Enter")
    # (waits use selectors: the page's Content-Security-Policy forbids eval, which wait_for_function needs)
    page.wait_for_selector(f"#search-status:has-text('like {Path(second).name}')")
    assert page.locator("#results .hit").first.get_attribute("title") == second
    assert page.evaluate("() => document.activeElement.dataset.path") == second  # the focus is on it, first

    # Drop a photo anywhere on the page: photos like it, itself first.
    dropped = library[5]
    drop_file(page, dropped)
    page.wait_for_selector(f"#search-status:has-text('like {dropped.name}')")
    assert page.locator("#results .hit").first.get_attribute("title") == str(dropped)
    assert page.locator("#query-name").inner_text() == f"Photos like {dropped.name}"
    assert page.locator("#q").input_value() == "" and shared_query(page) == []
    assert errors == []
    only_from(search_server, requested)
    page.close()


def test_a_search_shared_as_a_link_runs_on_load(browser, search_server: Server, library: list[Path]) -> None:  # type: ignore[no-untyped-def]
    """/?q=TEXT opens with TEXT in the box and its results (after the key, in a new tab)."""
    page, requested, errors = open_page(browser, search_server, "/?q=" + quote("一只猫"))
    page.wait_for_selector("#key:focus")  # the search ran at once and needs the key
    page.keyboard.type(API_KEY)
    page.keyboard.press("Enter")
    page.wait_for_selector(f"#results li:nth-child({len(library)})")
    assert page.locator("#q").input_value() == "一只猫"
    assert "一只猫" in page.locator("#search-status").inner_text()
    api = httpx.get(f"{search_server.url}/v1/search", params={"q": "一只猫", "k": 24}, headers=search_server.headers)
    paths = [page.locator("#results .hit").nth(i).get_attribute("title") for i in range(len(library))]
    assert paths == [hit["path"] for hit in api.json()["data"]]
    assert shared_query(page) == ["一只猫"] and errors == []
    only_from(search_server, requested)
    page.close()


def test_zero_shot_page(browser, zeroshot_server: Server, library: list[Path], screenshot_dir: Path) -> None:  # type: ignore[no-untyped-def]
    page, requested, errors = open_page(browser, zeroshot_server)
    assert page.locator("#search-view").is_hidden() and page.locator("#classify-view").is_visible()
    labels = page.locator("#labels").input_value().split("\n")
    photo = library[1]
    tab_to(page, "classify-file")
    with page.expect_file_chooser() as chooser:
        page.keyboard.press("Enter")
    chooser.value.set_files(str(photo))
    page.wait_for_selector(f"#probabilities li:nth-child({len(labels)})")
    shown = {item.get_attribute("data-label"): float(item.get_attribute("data-probability"))
             for item in page.locator("#probabilities li").all()}
    api = httpx.post(f"{zeroshot_server.url}/v1/classify", data={"label": labels},
                     files={"image": (photo.name, photo.read_bytes(), "image/jpeg")}).json()
    assert shown == pytest.approx(api["data"][0]["probabilities"], abs=1e-9)
    assert sum(shown.values()) == pytest.approx(1, abs=1e-5)
    texts = [item.inner_text() for item in page.locator("#probabilities .pct").all()]
    assert texts == [f"{100 * p:.1f}%" for p in sorted(shown.values(), reverse=True)]  # bars, highest first
    page.screenshot(path=str(screenshot_dir / "serve-classify.png"))
    page.set_viewport_size(PHONE)
    assert fits(page)
    page.screenshot(path=str(screenshot_dir / "serve-classify-phone.png"), full_page=True)
    page.set_viewport_size(WIDE)

    # New labels, typed, and the form sent with the keyboard.
    tab_to(page, "labels")
    page.keyboard.press("Control+A")
    page.keyboard.type("cat\nrocket")
    tab_to(page, "templates")
    page.keyboard.type("一张{}的照片")
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")  # the Classify button
    page.wait_for_selector("#probabilities li[data-label='cat']")  # a new label: the new answer is shown
    assert sorted(page.locator("#probabilities li").evaluate_all("items => items.map(i => i.dataset.label)")) == \
        ["cat", "rocket"]
    assert errors == []
    only_from(zeroshot_server, requested)
    page.close()
