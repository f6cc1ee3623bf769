"""The tiny bundle's int8 on CPUs without VNNI: the same vectors as on this one, within the int8 gate.

Emulated Haswell (AVX2: the u8s8 GEMM that adds products in saturating int16 pairs) and Nehalem (SSE4.2)
embed the fixture photos and the parity sentences (18 languages) with the bundle's int8; this CPU embeds
them with int8 and fp32. The bundle's pair-safe GEMM weights keep every pair AVX2 adds within int16, so
emulated int8 must give native int8's vectors (cosine per row, the issue's bar) and pass the int8 gate
against fp32.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from altclip_onnx.precisions import PRECISIONS

from ..cases import PARITY_TEXTS
from .conftest import EMULATED, SAME_VECTORS, cosines, encode_spec, run_job, vectors

INT8_GATE = PRECISIONS["int8"].gate


@pytest.fixture(scope="module")
def native(tiny_bundle: Path, fixture_photos: list[Path],
           tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    """This CPU's vectors by precision (int8, fp32)."""
    folder = tmp_path_factory.mktemp("native")
    return {precision: vectors(run_job("encode", encode_spec(tiny_bundle, precision, PARITY_TEXTS, fixture_photos),
                                       folder))
            for precision in ("int8", "fp32")}


@pytest.fixture(scope="module", params=EMULATED)
def emulated(request: pytest.FixtureRequest, qemu: str, tiny_bundle: Path, fixture_photos: list[Path],
             tmp_path_factory: pytest.TempPathFactory) -> tuple[str, np.ndarray]:
    """(CPU model, int8 vectors embedded under it)."""
    cpu = request.param
    spec = encode_spec(tiny_bundle, "int8", PARITY_TEXTS, fixture_photos)
    out = run_job("encode", spec, tmp_path_factory.mktemp(cpu), cpu=cpu, qemu=qemu)
    assert "AVX512F" not in out["cpu"], out["cpu"]
    return cpu, vectors(out)


def test_emulated_int8_equals_native_int8(emulated: tuple[str, np.ndarray], native: dict[str, np.ndarray]) -> None:
    cpu, vectors = emulated
    similarity = cosines(vectors, native["int8"])
    below = np.flatnonzero(similarity < SAME_VECTORS)
    assert not below.size, f"{cpu}: rows {below.tolist()} (texts, then images): min cosine {similarity.min():.6f}"


def test_emulated_int8_passes_the_int8_gate_against_fp32(emulated: tuple[str, np.ndarray],
                                                         native: dict[str, np.ndarray]) -> None:
    cpu, vectors = emulated
    similarity = cosines(vectors, native["fp32"])
    assert similarity.min() >= INT8_GATE.min_cosine, f"{cpu}: min cosine {similarity.min():.6f}"
    assert similarity.mean() >= INT8_GATE.mean_cosine, f"{cpu}: mean cosine {similarity.mean():.6f}"
