"""The PyTorch half of verification: computing the reference, and verifying against a model afresh.

The reference must come from a model no exporter has touched (the TorchScript exporter was seen to change a
traced model's later outputs): ``export`` computes it before exporting and stores it in the bundle
(:mod:`altclip_onnx.verification.reference`); ``verify --model`` loads the model afresh (or rebuilds a
``--random-init`` model from its recorded seed) and runs it on the same inputs. Running and gating the
graphs is the runtime's :mod:`altclip_onnx.verification`, the same code a torch-free ``verify`` runs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle import ATTENTION_MASK, TOKENIZER, TOWER_INPUTS, TOWER_OUTPUTS, VISUAL, Manifest, read_manifest
from ..errors import SourceError
from ..verification import OwnData, VerifyReport, check_and_report
from ..verification.own_data import own_cases
from ..verification.reference import Case, StoredReference, has_reference, read_reference
from .verification_set import verification_cases, verification_images

log = logging.getLogger(__name__)

LONG_TEXT_MIN_TOKENS = 300


def reference_outputs(model: Any, cases: list[Case]) -> list[dict[str, np.ndarray]]:
    """The PyTorch reference: get_image_features / get_text_features, and their L2-normalized forms."""
    import torch

    results = []
    with torch.no_grad():
        for case in cases:
            if case.tower == VISUAL:
                out = model.get_image_features(**{k: torch.from_numpy(v) for k, v in case.inputs.items()})
            else:
                out = model.get_text_features(**{k: torch.from_numpy(case.inputs[k]) for k in TOWER_INPUTS[case.tower]})
            embeds = out.pooler_output.float()
            norm = torch.nn.functional.normalize(embeds, dim=-1)
            names = TOWER_OUTPUTS[case.tower]
            results.append({names[0]: embeds.numpy(), names[1]: norm.numpy()})
    return results


def build_reference(model: Any, tokenizer_json: str, manifest: Manifest) -> StoredReference:
    """The verification set (:mod:`.verification_set`) and PyTorch's outputs for it, ready to store."""
    images, notes, distinct = verification_images(manifest)
    cases = verification_cases(tokenizer_json, manifest, images)
    for case in cases:
        tokens = case.inputs.get(ATTENTION_MASK)
        if tokens is not None and case.name.startswith("long") and tokens.shape[1] < LONG_TEXT_MIN_TOKENS:
            log.warning("the long verification text is only %d tokens", tokens.shape[1])
    return StoredReference(cases, reference_outputs(model, cases), images, notes, distinct)


def verify_against_model(
    bundle: str | Path,
    *,
    model_source: str | None = None,
    precisions: Sequence[str] | None = None,
    provider: str | None = "cpu",
    threads: int | None = None,
    cache_dir: str | None = None,
    images: str | os.PathLike[str] | None = None,
    texts: str | os.PathLike[str] | None = None,
    progress: Callable[[str], None] = lambda step: None,
) -> VerifyReport:
    """``altclip-onnx verify --model``: PyTorch afresh on the bundle's own verification inputs (or, for a
    bundle made before it carried them, on a newly built set), compared with the same gates; ``images`` and
    ``texts``: the user's own data too, against PyTorch at every precision."""
    from .sources import load_model, resolve_source

    folder = Path(bundle)
    manifest = read_manifest(folder)
    source = manifest.source
    if model_source is None and source.get("kind") == "random-init":
        resolved = resolve_source(source["name"], random_init=True, seed=int(source.get("seed", 0)))
    else:
        if model_source is None and source.get("kind") in ("transformers", "flagai") and not Path(source["name"]).is_dir():
            raise SourceError(
                f"{folder}: exported from a local checkpoint folder named {source['name']!r}; "
                "pass it with --model PATH to verify against it"
            )
        resolved = resolve_source(model_source or source.get("repo_id") or source["name"], cache_dir=cache_dir)
    progress(f"loading the reference model {resolved.name} ({resolved.kind})")
    loaded = load_model(resolved, max_length=manifest.text.max_length)
    progress("computing the PyTorch reference")
    if has_reference(manifest):
        stored = read_reference(folder, manifest)
        reference = StoredReference(stored.cases, reference_outputs(loaded.model, stored.cases), stored.images,
                                    stored.image_notes, stored.distinct_images)
    else:
        reference = build_reference(loaded.model, (folder / TOKENIZER).read_text(encoding="utf-8"), manifest)
    own = None
    if images is not None or texts is not None:
        cases, crops = own_cases(folder, manifest, images, texts)
        own = OwnData(StoredReference(cases, reference_outputs(loaded.model, cases), crops), precisions, "PyTorch")
    del loaded
    return check_and_report(folder, reference, own, manifest=manifest, precisions=precisions, provider=provider,
                            threads=threads, progress=progress)
