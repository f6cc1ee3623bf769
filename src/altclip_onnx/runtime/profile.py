"""The machine profile: which provider and precision ``altclip-onnx tune`` found fastest per tower, here.

What is fastest depends on the CPU (int8 kernels by instruction set), the GPU and the runtime build, and a
bundle cannot know it at export. ``tune`` (:mod:`.tune`) times the candidates that pass the bundle's own
check on this machine and records its choice under a key of the machine (:func:`machine`) and the bundle's
graphs, in ``bundle/.verified.json`` beside the first-use verdicts, or in the user's cache when the bundle is
read-only. ``precision="auto"`` (with ``provider`` "auto" or the profile's provider) then follows it; a
profile made on another CPU, GPU or runtime has another key and is never read.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from ..bundle import TOWERS, Manifest
from ..verification.selfcheck import cpu_identity, gpu_identity, lookup, record, runtime_identity

log = logging.getLogger(__name__)

SECTION = "tuned"  # the section of .verified.json (and of the user cache's file) this module keeps


def machine() -> dict[str, Any]:
    """What a timing depends on besides the graphs: the runtime build, the CPU and the GPUs."""
    from .providers import available_providers

    providers = available_providers()
    runtimes = sorted({runtime_identity(p) for p in providers} | {runtime_identity()})
    return {"runtime": runtimes, "cpu": cpu_identity(), "gpu": gpu_identity(), "providers": providers}


def profile_key(manifest: Manifest, place: dict[str, Any]) -> str:
    graphs = sorted(name for variants in manifest.towers.values() for v in variants.values() for name in v.files)
    content = {"graphs": {name: manifest.files[name].sha256 for name in graphs if name in manifest.files},
               "machine": place}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def save_profile(bundle: Path, manifest: Manifest, profile: dict[str, Any], place: dict[str, Any]) -> Path | None:
    """Record ``profile`` (``{"chosen": {tower: {"provider", "precision"}}, ...}``) for ``place`` (this
    :func:`machine`); where it went (None: nowhere writable)."""
    return record(bundle, manifest, profile_key(manifest, place), {**profile, "machine": place}, section=SECTION)


def tuned_choice(bundle: Path, manifest: Manifest) -> dict[str, tuple[str, str]] | None:
    """Per tower, the (provider, precision) ``tune`` chose on this machine for these graphs; None when it
    has not run here (or its choice no longer fits: a precision the bundle lost, a provider gone)."""
    place = machine()
    entry = lookup(bundle, manifest, profile_key(manifest, place), section=SECTION)
    if not isinstance(entry, dict):
        return None
    try:
        choice = {tower: (str(entry["chosen"][tower]["provider"]), str(entry["chosen"][tower]["precision"]))
                  for tower in TOWERS}
    except (KeyError, TypeError):
        return None
    for tower, (provider, precision) in choice.items():
        if provider not in place["providers"] or precision not in manifest.precisions(tower):
            log.warning("%s: the tuned %s choice (%s on %s) does not fit any more; run 'altclip-onnx tune' again",
                        bundle, tower, precision, provider)
            return None
    return choice
