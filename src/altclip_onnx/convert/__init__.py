"""Bundles in the layouts other tools load: transformers.js and immich (``altclip-onnx convert``).

:mod:`.layouts` is the one mapping from a bundle to each client's files; :mod:`.graph` edits a graph at
its boundary (input names, int32 inputs, outputs, external weight file names) without touching the model;
:mod:`.run` writes a layout atomically and checks every written graph against the bundle's. Needs ``onnx``
(the ``[convert]`` extra); never torch.
"""

from __future__ import annotations

from .layouts import CLIENTS, IMMICH, TRANSFORMERS_JS, Layout, plan
from .run import MIN_COSINE, ConvertReport, GraphCheck, convert_bundle

__all__ = ["CLIENTS", "IMMICH", "MIN_COSINE", "TRANSFORMERS_JS", "ConvertReport", "GraphCheck", "Layout",
           "convert_bundle", "plan"]
