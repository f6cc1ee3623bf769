"""Measuring a bundle on data the user owns (runtime half: never imports the export or convert side).

retrieval: recall@k text→image and image→text on a captioned image set, per language and per precision.
Classification accuracy (zero-shot and few-shot) lives with the few-shot code: :func:`altclip_onnx.fewshot.evaluate`.

The package is ``evaluation``, not ``evaluate``: a submodule named ``evaluate`` would replace the
function :func:`altclip_onnx.evaluate` on the package as soon as it was imported.
"""

from __future__ import annotations

from .retrieval import (
    DEFAULT_KS,
    IMAGE_TO_TEXT,
    TEXT_TO_IMAGE,
    CaptionSet,
    RetrievalReport,
    count_hits,
    evaluate_retrieval,
    read_captions,
)

__all__ = [
    "DEFAULT_KS",
    "IMAGE_TO_TEXT",
    "TEXT_TO_IMAGE",
    "CaptionSet",
    "RetrievalReport",
    "count_hits",
    "evaluate_retrieval",
    "read_captions",
]
