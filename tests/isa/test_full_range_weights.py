"""tests/isa can fail: with the full-range GEMM weights of before, emulated Haswell gives other vectors.

The tiny bundle's fp32 graphs are quantized again by ``quantize_int8`` from the same graph, once with
full-range weights (up to +-127: ``Int8Recipe(gemm_weights=FULL_RANGE)``, the recipe before pair-safe) and
once with the bundle's pair-safe weights. Under Haswell the full-range copy's vectors move away from the exact
ones, below the bar test_bundle_int8 holds the bundle to (SAME_VECTORS) and further than the pair-safe copy's,
which stays within it. The exact vectors come from this CPU when it has VNNI, else from emulated Nehalem
(SSE4.2, whose kernel does not saturate): a CPU without VNNI saturates as Haswell does, natively.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from altclip_onnx.bundle import TEXTUAL, VISUAL

from ..cases import PARITY_TEXTS
from ..conftest import require_module
from .conftest import HASWELL, NEHALEM, SAME_VECTORS, cosines, encode_spec, host_has_vnni, run_job, vectors

require_module("onnx", "requantizing the bundle needs onnx: pip install -e '.[export]'")

from altclip_onnx.export.quantize import FULL_RANGE, PAIR_SAFE, Int8Recipe, quantize_int8  # noqa: E402

RECIPES = (FULL_RANGE, PAIR_SAFE)


def requantized(tiny_bundle: Path, folder: Path, gemm_weights: str) -> Path:
    """A copy of the tiny bundle whose int8 graphs are its fp32 graphs quantized with ``gemm_weights``
    (the manifest's hashes then no longer match: encode with check_files False)."""
    bundle = folder / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    for tower in (VISUAL, TEXTUAL):
        target = bundle / tower / "model.int8.onnx"
        target.unlink()
        quantize_int8(bundle / tower / "model.onnx", target, Int8Recipe(gemm_weights=gemm_weights))
    return bundle


@pytest.fixture(scope="module")
def drift(tiny_bundle: Path, fixture_photos: list[Path], qemu: str,
          tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    """Per weight recipe: cosine per row of Haswell's int8 vectors with the exact ones (texts, then images)."""
    exact_cpu = None if host_has_vnni() else NEHALEM
    result = {}
    for recipe in RECIPES:
        folder = tmp_path_factory.mktemp(recipe)
        spec = encode_spec(requantized(tiny_bundle, folder, recipe), "int8", PARITY_TEXTS, fixture_photos,
                           check_files=False)
        exact = vectors(run_job("encode", spec, folder, cpu=exact_cpu, qemu=qemu))
        emulated = vectors(run_job("encode", spec, folder, cpu=HASWELL, qemu=qemu))
        result[recipe] = cosines(emulated, exact)
    return result


def test_full_range_weights_give_other_vectors_on_haswell(drift: dict[str, np.ndarray]) -> None:
    assert drift[FULL_RANGE].min() < SAME_VECTORS, drift[FULL_RANGE].min()


def test_pair_safe_weights_give_the_same_vectors_on_haswell(drift: dict[str, np.ndarray]) -> None:
    assert drift[PAIR_SAFE].min() >= SAME_VECTORS, drift[PAIR_SAFE].min()
    assert drift[PAIR_SAFE].min() > drift[FULL_RANGE].min()
    assert drift[PAIR_SAFE].mean() > drift[FULL_RANGE].mean()
