"""The static site of ``convert --to web`` in headless Chromium: built once per session and precision from the
tiny bundle (``altclip-onnx convert --to web``, as a user runs it), served by ``altclip-onnx serve-static`` on
a free loopback port, opened in Debian's chromium through Playwright's Python API (never ``playwright install``).

Needs node and npm (the page is bundled at build time; the npm packages go to the user's cache once per
lockfile), chromium, playwright and onnx (the [convert] extra). Without them these tests are skipped, saying
what to install, unless ``ALTCLIP_REQUIRE_CLIENTS=1`` or CI (CI=true) makes that a failure.
"""

from __future__ import annotations

import base64
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ..conftest import missing as fail_or_skip
from ..conftest import free_port

REQUIRE_ENV = "ALTCLIP_REQUIRE_CLIENTS"
SRC = Path(__file__).resolve().parents[2] / "src"
PRECISIONS = ("fp32", "int8")
TIMEOUT = 60_000  # ms: loading the page and the model
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def missing(what: str, fix: str) -> None:
    message = f"the web site tests need {what}: {fix}"
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{message} ({REQUIRE_ENV}=1)", pytrace=False)
    fail_or_skip(message)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if not shutil.which("node") or not shutil.which("npm"):
    missing("node and npm", "apt-get install -y nodejs npm")
if CHROMIUM is None:
    missing("a chromium browser", "apt-get install -y chromium")
for _module, _fix in (("playwright", "pip install -e '.[test-services]' (never 'playwright install')"),
                      ("onnx", "pip install -e '.[convert]'"), ("skimage", "pip install -e '.[test]'")):
    if importlib.util.find_spec(_module) is None:
        missing(_module, _fix)
from playwright import sync_api  # noqa: E402


def env_with_src() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])))


def cli(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "altclip_onnx.cli", *args], env=env_with_src(),
                          capture_output=True, text=True, timeout=timeout)


@dataclass
class StaticServer:
    process: subprocess.Popen
    url: str
    site: Path

    @classmethod
    def start(cls, site: Path, log: Path) -> StaticServer:
        port = free_port()
        process = subprocess.Popen([sys.executable, "-m", "altclip_onnx.cli", "serve-static", str(site), "--port",
                                    str(port)], env=env_with_src(), stdout=log.open("w"), stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(url + "/site.json", timeout=2):
                    return cls(process, url, site)
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    process.kill()
                    raise AssertionError(f"serve-static did not start: {log.read_text()}") from None
                time.sleep(0.1)

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


@pytest.fixture(scope="session")
def sites(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The site at each precision, written by the command line as a user runs it."""
    folder = tmp_path_factory.mktemp("web-sites")
    made = {}
    for precision in PRECISIONS:
        done = cli("convert", str(tiny_bundle), "--to", "web", "--precision", precision, "-o",
                   str(folder / precision))
        assert done.returncode == 0, done.stderr[-3000:]
        made[precision] = folder / precision
    return made


@pytest.fixture(scope="session")
def servers(sites: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, StaticServer]]:
    logs = tmp_path_factory.mktemp("web-logs")
    running = {p: StaticServer.start(site, logs / f"{p}.log") for p, site in sites.items()}
    yield running
    for server in running.values():
        assert server.stop() == 0


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    with tempfile.TemporaryDirectory(prefix="altclip-chromium-") as profile, sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=FLAGS, viewport={"width": 1280, "height": 800})
        context.set_default_timeout(TIMEOUT)
        yield context
        context.close()


@pytest.fixture(scope="session")
def screenshot_dir() -> Path:
    """Where the screenshots go: $ALTCLIP_SCREENSHOTS, else build/screenshots (as tests/serve)."""
    folder = Path(os.environ.get("ALTCLIP_SCREENSHOTS") or SRC.parent / "build" / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@dataclass
class OpenPage:
    page: object
    origin: str
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    info: dict = field(default_factory=dict)

    def call(self, expression: str, arg: object = None) -> object:
        return self.page.evaluate(expression, arg)  # type: ignore[attr-defined]

    def files(self, paths: list[Path]) -> str:
        """A JavaScript expression's prelude: window.__files, File objects of ``paths`` (name, bytes, type)."""
        items = [[p.name, base64.b64encode(p.read_bytes()).decode(), "image/png" if p.suffix == ".png" else
                  "image/jpeg"] for p in paths]
        self.call("""(items) => { window.__files = items.map(([name, b64, type]) =>
            new File([Uint8Array.from(atob(b64), c => c.charCodeAt(0))], name, {type})); }""", items)
        return "window.__files"


def open_site(browser, origin: str,  # type: ignore[no-untyped-def]
              prepare: Callable[[object], None] = lambda page: None) -> OpenPage:
    """The site at ``origin`` in a new tab that records every request (the workers' too) and page error, once
    ``altclip.ready``; ``prepare(page)`` runs before it loads."""
    page = browser.new_page()
    page.set_default_timeout(TIMEOUT)
    state = OpenPage(page, origin)
    page.on("request", lambda request: state.requests.append(request.url))
    page.on("pageerror", lambda error: state.errors.append(str(error)))
    prepare(page)
    page.goto(state.origin + "/")
    state.info = page.evaluate("async () => await altclip.ready")
    return state


@pytest.fixture(scope="session")
def pages(browser, servers: dict[str, StaticServer]) -> Callable[[str], OpenPage]:  # type: ignore[no-untyped-def]
    """The site at a precision, open in a tab (:func:`open_site`), one per precision for the session."""
    opened: dict[str, OpenPage] = {}

    def open_page(precision: str) -> OpenPage:
        if precision not in opened:
            opened[precision] = open_site(browser, servers[precision].url)
        return opened[precision]

    return open_page
