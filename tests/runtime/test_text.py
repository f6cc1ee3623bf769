"""Tokenization: the bundle's tokenizer.json against sentencepiece (with XLM-R's fairseq offset) and
transformers' XLMRobertaTokenizer, both computed by the fixture builder (tests/reference.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from altclip_onnx import Encoder

from ..cases import DIFFERING_TEXTS, LONG_TEXT, PADDING_TEXTS, TOKEN_TEXTS, prefixes
from ..reference import Reference, text_key


def unpadded(encoder: Encoder, text: str) -> list[int]:
    batch = encoder.tokenize([text])
    assert batch["attention_mask"].all()
    return batch["input_ids"][0].tolist()


@pytest.fixture(scope="module")
def long(tiny_bundle: Path) -> Encoder:
    """No truncation in play."""
    return Encoder(tiny_bundle, max_length=512)


def test_tokenizer_equals_sentencepiece_with_fairseq_offset(long: Encoder, ref: Reference) -> None:
    mismatches = [(t, unpadded(long, t), ref.sentencepiece_ids(t)) for t in TOKEN_TEXTS
                  if unpadded(long, t) != ref.sentencepiece_ids(t)]
    assert mismatches == []
    # Unseen scripts really exercise <unk> (id 3), and the shift is real (no id collides with specials).
    ids = [i for t in TOKEN_TEXTS for i in unpadded(long, t)[1:-1]]
    assert 3 in ids and 1 not in ids and 0 not in ids and 2 not in ids
    for text in ("", " ", "   ", "\t", "\n", "\r\n", " \t\n\u3000 "):
        assert unpadded(long, text) == [0, 2], repr(text)
    # Whitespace is a separator only: tabs, newlines and runs of spaces tokenize like one space.
    assert unpadded(long, "tab\tseparated\tvalues") == unpadded(long, "tab separated values")
    assert unpadded(long, "a \t\n b") == unpadded(long, "a b")
    assert unpadded(long, "trailing newline\n") == unpadded(long, "trailing newline")
    # nmt_nfkc: full-width forms are their ASCII letters.
    assert unpadded(long, "ＡＢＣ１２３") == unpadded(long, "ABC123")


def test_tokenizer_equals_transformers(long: Encoder, ref: Reference) -> None:
    for text in TOKEN_TEXTS:
        ours = unpadded(long, text)
        assert ours == ref.transformers_ids(text), repr(text)
        assert ours == ref.data["checkpoint_tokenizer_ids"][text_key(text)], repr(text)


def test_where_transformers_and_sentencepiece_differ_we_follow_transformers(long: Encoder, ref: Reference) -> None:
    """Inputs on which transformers 5 (what AltCLIPModel users run) and raw sentencepiece differ.

    U+0085 (NEXT LINE) is whitespace to the tokenizers pipeline (WhitespaceSplit) but an ordinary,
    unknown character to sentencepiece; literal special-token strings in the text become the special
    ids in transformers, but plain characters in sentencepiece. The bundle follows transformers.
    """
    for text in DIFFERING_TEXTS:
        assert unpadded(long, text) == ref.transformers_ids(text), repr(text)
        assert unpadded(long, text) != ref.sentencepiece_ids(text), repr(text)
    assert unpadded(long, "a\x85b") == unpadded(long, "a b")
    assert 1 in unpadded(long, "a <pad> b")  # a pad id with mask 1: what transformers does too


def test_truncation_keeps_end_of_sequence(tiny_bundle: Path, ref: Reference) -> None:
    default = Encoder(tiny_bundle)
    full = ref.sentencepiece_ids(LONG_TEXT)
    assert len(full) > 200
    ids = unpadded(default, LONG_TEXT)  # default: the manifest's 77
    assert default.max_length == 77
    assert ids == full[:76] + [2]
    assert ids == ref.data["long_text_truncated_77"]

    short = Encoder(tiny_bundle, max_length=16)
    assert unpadded(short, LONG_TEXT) == full[:15] + [2]
    # Every length around the limit, word by word: untouched up to 16 ids, cut to 15 + </s> beyond.
    lengths = set()
    for text in prefixes(LONG_TEXT, 16):
        want = ref.sentencepiece_ids(text)
        lengths.add(len(want))
        assert unpadded(short, text) == (want if len(want) <= 16 else want[:15] + [2]), text
    assert min(lengths) < 16 < max(lengths)


def test_batch_padding_uses_pad_id_and_zero_mask(tiny_bundle: Path, ref: Reference) -> None:
    encoder = Encoder(tiny_bundle)
    batch = encoder.tokenize(PADDING_TEXTS)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.dtype == np.int64 and mask.dtype == np.int64
    assert ids.shape == mask.shape == (5, 77)
    for row, text in enumerate(PADDING_TEXTS):
        want = ref.sentencepiece_ids(text)[:76]
        want = want if want[-1] == 2 else want + [2]
        n = len(want)
        assert ids[row, :n].tolist() == want
        assert mask[row, :n].tolist() == [1] * n
        assert ids[row, n:].tolist() == [1] * (77 - n)
        assert mask[row, n:].tolist() == [0] * (77 - n)
    # Padded only to the longest text of the batch.
    assert encoder.tokenize(["a", "b c"])["input_ids"].shape[1] == len(ref.sentencepiece_ids("b c"))
