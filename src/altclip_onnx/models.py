"""Which model a bundle holds: the published variants, every name each answers to, the default one, "custom"
for any other checkpoint, and the name a model is shown by.

Both halves read this: export resolves what the user typed and records the variant in the manifest; the
runtime, the service and the model card show it. Standard library only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

#: The variant of a checkpoint that is none of the published ones.
CUSTOM = "custom"


@dataclass(frozen=True)
class KnownVariant:
    name: str  # our canonical name
    repo_id: str  # Hugging Face Hub id
    seed_name: str  # the name the seed project used
    languages: tuple[str, ...]
    project_dim: int  # text tower: transformation (hidden -> project_dim)
    projection_dim: int  # both towers' final embedding size
    dims_source: str  # where project_dim / projection_dim come from
    dims_certain: bool


KNOWN_VARIANTS = {
    v.name: v
    for v in (
        KnownVariant(
            "AltCLIP", "BAAI/AltCLIP", "AltCLIP-XLMR-L", ("en", "zh"), 768, 768,
            "BAAI/AltCLIP config.json (transformers' AltCLIPConfig docs use the same 768/768)", True,
        ),
        KnownVariant(
            "AltCLIP-m9", "BAAI/AltCLIP-m9", "AltCLIP-XLMR-L-m9",
            ("en", "zh", "es", "fr", "ru", "ja", "ko", "ar", "it"), 768, 768,
            "FlagAI's AltCLIP-m9 config (same heads as AltCLIP)", True,
        ),
        KnownVariant(
            "AltCLIP-m18", "BAAI/AltCLIP-m18", "AltCLIP-XLMR-L-m18",
            ("en", "zh", "ja", "th", "ko", "hi", "uk", "ar", "tr", "vi", "pl", "nl", "pt", "it", "es", "de", "fr", "ru"),
            1024, 1024,
            "UNCERTAIN: FlagAI's modeling_berts_m18.py sets project_dim=1024 (for AltDiffusion-m18) and users "
            "report 1024-d embeddings; no m18 config.json could be read here. A real checkpoint's config wins.",
            False,
        ),
    )
}
DEFAULT_VARIANT = "AltCLIP-m18"

# Every accepted spelling (matched case-insensitively) -> canonical variant name.
ALIASES = {
    alias.lower(): v.name
    for v in KNOWN_VARIANTS.values()
    for alias in (v.name, v.repo_id, v.seed_name, v.name.removeprefix("AltCLIP-") if "-" in v.name else "altclip")
}


def canonical_variant(name: str) -> str | None:
    return ALIASES.get(name.strip().lower())


def known_names() -> str:
    names = []
    for v in KNOWN_VARIANTS.values():
        names += [v.repo_id, v.seed_name]
    return ", ".join(names + ["m9", "m18", "or a local checkpoint folder"])


def variant_of_folder(folder: Path) -> str:
    """Best guess at which published variant a folder holds (for the manifest only)."""
    for part in (folder.name, *reversed(folder.parts)):
        variant = canonical_variant(part) or canonical_variant(re.sub(r"^models--BAAI--", "BAAI/", part))
        if variant:
            return variant
    return CUSTOM


def languages(variant: str) -> tuple[str, ...]:
    """ISO codes of a published variant's languages (empty for any other)."""
    known = KNOWN_VARIANTS.get(variant)
    return known.languages if known else ()


def display_name(variant: str, source_name: str | None) -> str:
    """What a model is called where people read it: its variant, or for a custom checkpoint the name of
    its source when one is known."""
    return source_name if variant == CUSTOM and source_name else variant
