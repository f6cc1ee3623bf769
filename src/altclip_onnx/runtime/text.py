"""Texts in, ``input_ids`` and ``attention_mask`` out: the bundle's tokenizer.json, configured one way.

XLM-R ids (fairseq offset: ``<s>``=0, ``<pad>``=1, ``</s>``=2, ``<unk>``=3, other pieces = sentencepiece
id + 1), truncated to ``max_length`` keeping ``</s>`` (the template post-processor reserves room for
both special tokens), batches padded with id 1 and mask 0 (the text tower derives position ids from
the pad id, so any other padding shifts positions). Export bakes the same settings into tokenizer.json
and verification tokenizes with the same function, so there is one configuration. Needs ``tokenizers``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle import ATTENTION_MASK, INPUT_IDS, TextSpec
from ..errors import BundleError, InputError

PAD_TOKEN = "<pad>"


def configure(tokenizer: Any, spec: TextSpec, max_length: int | None = None) -> Any:
    """Truncation at ``max_length`` (default: the bundle's) and padding with the pad id, in place."""
    tokenizer.enable_truncation(max_length=spec.max_length if max_length is None else max_length)
    tokenizer.enable_padding(pad_id=spec.pad_id, pad_token=PAD_TOKEN)
    return tokenizer


def load_tokenizer(source: str | Path, spec: TextSpec, max_length: int | None = None) -> Any:
    """A configured ``tokenizers.Tokenizer`` from a tokenizer.json path, or from its JSON text (a ``str``
    starting with ``{``)."""
    from tokenizers import Tokenizer

    try:
        if isinstance(source, str) and source.lstrip().startswith("{"):
            tokenizer = Tokenizer.from_str(source)
        else:
            tokenizer = Tokenizer.from_file(str(source))
    except Exception as exc:  # tokenizers raises plain Exception subclasses from Rust
        where = "tokenizer.json" if isinstance(source, str) and source.lstrip().startswith("{") else source
        raise BundleError(f"{where}: not a readable tokenizer ({exc}); re-export the bundle") from exc
    return configure(tokenizer, spec, max_length)


def tokenize(tokenizer: Any, texts: Sequence[str]) -> dict[str, np.ndarray]:
    """int64 ``input_ids`` and ``attention_mask`` [N, longest], as the text tower takes them."""
    encodings = tokenizer.encode_batch(list(texts))
    return {
        INPUT_IDS: np.array([e.ids for e in encodings], dtype=np.int64),
        ATTENTION_MASK: np.array([e.attention_mask for e in encodings], dtype=np.int64),
    }


def check_texts(texts: str | Sequence[str], what: str = "text") -> list[str]:
    """A list of strings from one string or a sequence of them; InputError for anything else."""
    if isinstance(texts, str):
        return [texts]
    texts = list(texts)
    for text in texts:
        if not isinstance(text, str):
            raise InputError(f"every {what} must be a string, got {type(text).__name__}")
    return texts
