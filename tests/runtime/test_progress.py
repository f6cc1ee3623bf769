"""Long work shows progress: a total, a percentage and the time left when known, plain lines in logs."""

from __future__ import annotations

import io
from pathlib import Path

from altclip_onnx import Encoder
from altclip_onnx.runtime.pipeline import embed_images
from altclip_onnx.runtime.progress import Progress


def test_plain_lines_with_total_rate_and_time_left(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    now = [0.0]
    monkeypatch.setattr("altclip_onnx.runtime.progress.time.monotonic", lambda: now[0])
    stream = io.StringIO()  # not a terminal: lines, not a bar
    progress = Progress("embedding images", "images", 500, every=5.0, stream=stream)
    now[0] = 2.0
    progress.update(20)
    assert stream.getvalue() == ""  # not yet: one line every 5 s
    now[0] = 10.0
    progress.update(80)
    assert stream.getvalue() == "embedding images: 100/500 (20%), 10.0 images/s, about 40 s left\n"
    now[0] = 20.0
    progress.update(100)
    assert stream.getvalue().splitlines()[-1] == "embedding images: 200/500 (40%), 10.0 images/s, about 30 s left"


def test_unknown_total_and_disabled() -> None:
    stream = io.StringIO()
    progress = Progress("embedding texts", "texts", None, every=0.0, stream=stream)
    progress.update(3)
    assert stream.getvalue().startswith("embedding texts: 3, ") and "left" not in stream.getvalue()
    quiet = io.StringIO()
    Progress("x", "y", 10, enabled=False, every=0.0, stream=quiet).update(5)
    assert quiet.getvalue() == ""


def test_embedding_a_list_counts_towards_its_total(tiny_bundle: Path, fixture_photos: list[Path]) -> None:
    stream = io.StringIO()
    progress = Progress("embedding images", "images", len(fixture_photos), every=0.0, stream=stream)
    batches = list(embed_images(Encoder(tiny_bundle), fixture_photos, batch_size=2, progress=progress))
    assert sum(len(b.items) for b in batches) == len(fixture_photos) == progress.done
    last = stream.getvalue().splitlines()[-1]
    assert last.startswith(f"embedding images: {len(fixture_photos)}/{len(fixture_photos)} (100%)")
