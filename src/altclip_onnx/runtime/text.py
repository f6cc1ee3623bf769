"""Texts in, ``input_ids`` and ``attention_mask`` out: the bundle's tokenizer.json, configured one way.

XLM-R ids (fairseq offset: ``<s>``=0, ``<pad>``=1, ``</s>``=2, ``<unk>``=3, other pieces = sentencepiece
id + 1), truncated to ``max_length`` keeping ``</s>`` (the template post-processor reserves room for
both special tokens), batches padded with id 1 and mask 0 (the text tower derives position ids from
the pad id, so any other padding shifts positions). Export bakes the same settings into tokenizer.json
and verification tokenizes with the same function, so there is one configuration. Needs ``tokenizers``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle import ATTENTION_MASK, INPUT_IDS, TextSpec
from ..errors import BundleError, InputError

PAD_TOKEN = "<pad>"
TEXT_BATCH_SIZE = 32  # texts per model call, unless told otherwise (every layer's default; the first-use check runs it)


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


def pads_texts(session: Any) -> bool:
    """Whether ``session`` may run texts of different lengths in one padded batch. A runtime whose kernels round
    a padded text otherwise than the same text alone says ``pads_texts = False`` (OpenVINO's runtime: per-row
    int8 carries such a difference across its rounding steps); its texts then share a batch only with texts of
    their own length, never padded (:func:`unpadded_batches`), so a text's vector is the same whatever else is
    embedded with it, which the first-use check and verify hold it to."""
    return bool(getattr(session, "pads_texts", True))


def unpadded_batches(inputs: dict[str, np.ndarray], batch_size: int) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """Right-padded text ``inputs`` regrouped into batches of at most ``batch_size`` texts of one length each,
    without padding: ``(which rows, their inputs)``, every row once."""
    lengths = inputs[ATTENTION_MASK].sum(axis=1)
    for length in np.unique(lengths):
        rows = np.flatnonzero(lengths == length)
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            yield chunk, {name: value[chunk, :length] for name, value in inputs.items()}


def check_texts(texts: str | Sequence[str], what: str = "text") -> list[str]:
    """A list of strings from one string or a sequence of them; InputError for anything else."""
    if isinstance(texts, str):
        return [texts]
    texts = list(texts)
    for text in texts:
        if not isinstance(text, str):
            raise InputError(f"every {what} must be a string, got {type(text).__name__}")
    return texts
