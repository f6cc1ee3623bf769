"""The ``altclip-onnx`` command: thin subcommands over the Python API, one module per group.

app (the group, errors, shared options, tables), model (export, verify, bench, doctor), embed (embed,
embed-text, classify), search (index, search), fewshot (fewshot build), evaluate (evaluate classification,
evaluate retrieval), serve (serve), convert (convert, push), web (serve-static).
"""

from __future__ import annotations

from . import convert, embed, evaluate, fewshot, model, search, serve, web  # noqa: F401  (each registers its commands on main)
from .app import main

__all__ = ["main"]

if __name__ == "__main__":  # pragma: no cover
    main()
