"""The page's own first-use check: before it embeds anything, the site runs the bundle's quick PyTorch reference
cases (``check.json``) on its backend and holds them against the precision's gate, as ``Encoder`` does. A site
whose numbers do not match refuses to start and says why."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from altclip_onnx import Encoder
from altclip_onnx.bundle import TOWER_INPUTS, TOWER_OUTPUTS, read_manifest
from altclip_onnx.precisions import precision as declared_precision
from altclip_onnx.verification.reference import read_reference

from .conftest import PRECISIONS, TIMEOUT, OpenPage, StaticServer


@pytest.mark.parametrize("precision", PRECISIONS)
def test_the_page_checks_itself_against_the_bundles_reference(precision: str, pages, tiny_bundle: Path) -> None:  # type: ignore[no-untyped-def]
    """Every quick case runs in the browser as the page runs its inputs (images batched, and each alone too;
    texts one at a time); its least cosine per tower clears the gate and equals, within 1e-4, what the Python
    runtime's session gets on the same inputs. No GPU here: WebAssembly, and why not WebGPU."""
    page: OpenPage = pages(precision)
    check, gate = page.info["check"], declared_precision(precision).gate
    assert page.info["backend"] == "wasm" and "WebGPU" in page.info["webgpu"]
    assert check["passed"] is True and check["failure"] is None
    manifest = read_manifest(tiny_bundle)
    reference = read_reference(tiny_bundle, manifest, quick_only=True)
    encoder = Encoder(tiny_bundle, provider="cpu", precision=precision)
    for tower in ("visual", "textual"):
        cases = [(c, o) for c, o in zip(reference.cases, reference.outputs) if c.tower == tower]
        assert check[tower]["rows"] == sum(c.size for c, _ in cases) > 0
        runtime = []
        for case, outputs in cases:
            got = encoder.session(tower).run([TOWER_OUTPUTS[tower][0]], {n: case.inputs[n] for n in TOWER_INPUTS[tower]})[0]
            want = outputs[TOWER_OUTPUTS[tower][0]]
            runtime += list((got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1))
        assert check[tower]["min_cosine"] >= gate.min_cosine
        if tower == "visual":  # images are embedded in batches: each row also runs alone, as in Encoder's check
            assert check[tower]["batch_invariance"] >= gate.batch_invariance
        else:  # texts are embedded one at a time (worker.js, embedTexts), so the rows ran alone
            assert check[tower]["batch_invariance"] is None
        assert abs(check[tower]["min_cosine"] - min(runtime)) <= 1e-4, (check[tower], min(runtime))
        assert abs(check[tower]["mean_cosine"] - float(np.mean(runtime))) <= 1e-4


def refusal(sites: dict[str, Path], browser, tmp_path: Path, edit: Callable[[dict[str, Any]], None],  # type: ignore[no-untyped-def]
            then: Callable[[Any], None] | None = None) -> str | None:
    """What ``altclip.ready`` rejects with (None: it did not) on a copy of the fp32 site whose check.json
    ``edit`` changed; ``then(page)`` runs before the page closes."""
    site = tmp_path / "site"
    shutil.copytree(sites["fp32"], site)
    check = json.loads((site / "check.json").read_text())
    edit(check)
    (site / "check.json").write_text(json.dumps(check))
    server = StaticServer.start(site, tmp_path / "serve.log")
    page = browser.new_page()
    try:
        page.goto(server.url + "/")
        error = page.evaluate("async () => { try { await altclip.ready; return null } catch (e) { return e.message } }")
        if then is not None:
            then(page)
    finally:
        page.close()
        assert server.stop() == 0
    return error


def test_a_site_whose_numbers_do_not_match_refuses_to_start(sites: dict[str, Path], browser, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The stored vectors of the image cases swapped between rows (what a wrong kernel or preprocessing would
    look like from the page's side): ready rejects naming the tower and the gate, and the page says so."""

    def swap_rows(check: dict[str, Any]) -> None:
        for case in check["visual"]:
            case["expected"] = case["expected"][1:] + case["expected"][:1]

    def says_so(page: Any) -> None:
        page.wait_for_function("() => document.querySelector('#model-status').textContent.includes('did not load')",
                               timeout=TIMEOUT)
        assert page.is_disabled("#files")

    error = refusal(sites, browser, tmp_path, swap_rows, says_so)
    assert error is not None and "do not match the bundle's PyTorch reference" in error, error
    assert "visual fp32" in error and "< 0.99999" in error, error


def test_a_site_whose_rows_alone_differ_from_their_batch_refuses_to_start(sites: dict[str, Path], browser,  # type: ignore[no-untyped-def]
                                                                          tmp_path: Path) -> None:
    """The batch test is a gate of its own: with the site's batch-invariance bound raised past what any
    backend reaches (cosine 1 + 1e-6), ready rejects saying the vectors depend on the batch."""
    error = refusal(sites, browser, tmp_path, lambda check: check.update(batch_invariance=1.000001))
    assert error is not None and "alone and inside its batch" in error and "vectors depend on the batch" in error, error
