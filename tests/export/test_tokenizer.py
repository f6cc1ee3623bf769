"""export/tokenizer.py: the bundle's tokenizer.json from a checkpoint, checked, configured; the placeholder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from altclip_onnx.bundle import TextSpec
from altclip_onnx.errors import SourceError
from altclip_onnx.export import sources, tokenizer as tok

from ..cases import TOKEN_TEXTS


@pytest.fixture(scope="module")
def converted(spm_model: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """transformers' slow->fast conversion from a folder holding only sentencepiece.bpe.model."""
    from transformers import XLMRobertaTokenizer

    folder = tmp_path_factory.mktemp("spm-only")
    shutil.copy(spm_model, folder / "sentencepiece.bpe.model")
    return XLMRobertaTokenizer.from_pretrained(folder)


def bundle_tokenizer(folder: Path) -> Tokenizer:
    tokenizer = Tokenizer.from_str(sources.load_model(sources.resolve_source(str(folder))).tokenizer_json)
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def test_old_style_checkpoint_tokenizer_json_is_not_copied_verbatim(  # type: ignore[no-untyped-def]
    transformers_checkpoint: Path, converted, tmp_path: Path
) -> None:
    """A checkpoint whose tokenizer.json was written by transformers 4 (as Hub repos of that time were:
    normalizer Precompiled + Replace(' {2,}', ' '), pre_tokenizer Metaspace only) must still tokenize
    like transformers 5 and sentencepiece. Taken verbatim, the file adds a lone '▁' piece for
    whitespace-only text and trailing whitespace ("x\\n" from a file's lines)."""
    old = tmp_path / "old-style"
    shutil.copytree(transformers_checkpoint, old)
    data = json.loads((old / "tokenizer.json").read_text())
    data["normalizer"] = {
        "type": "Sequence",
        "normalizers": [data["normalizer"], {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "}],
    }
    data["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "add_prefix_space": True}
    data["decoder"] = {"type": "Metaspace", "replacement": "▁", "add_prefix_space": True}
    (old / "tokenizer.json").write_text(json.dumps(data))

    verbatim = Tokenizer.from_str(json.dumps(data))
    ours = bundle_tokenizer(old)
    differing = ("   ", "\n", "trailing newline\n", "tabs\tand\nnewlines", "a  b")
    # The verbatim file really differs (so this test can fail) ...
    assert any(verbatim.encode(t).ids != converted(t)["input_ids"] for t in differing)
    # ... and the bundle's tokenizer does not.
    for text in (*differing, *TOKEN_TEXTS):
        assert ours.encode(text).ids == converted(text)["input_ids"], repr(text)


def test_a_folder_with_only_sentencepiece_converts_like_transformers(  # type: ignore[no-untyped-def]
    flagai_checkpoint: Path, converted
) -> None:
    assert not (flagai_checkpoint / "tokenizer.json").exists()
    ours = bundle_tokenizer(flagai_checkpoint)
    for text in TOKEN_TEXTS:
        assert ours.encode(text).ids == converted(text)["input_ids"], repr(text)


def test_tokenizers_that_do_not_fit_are_refused(transformers_checkpoint: Path, tmp_path: Path) -> None:
    good = tok.checkpoint_tokenizer_json(transformers_checkpoint)
    size = Tokenizer.from_str(good).get_vocab_size(with_added_tokens=True)
    text = TextSpec(vocab_size=size)
    tok.check_tokenizer(good, text, where="ckpt")
    with pytest.raises(SourceError, match=f"ckpt: tokenizer has {size} tokens but the text tower's vocabulary is 100"):
        tok.check_tokenizer(good, TextSpec(vocab_size=100), where="ckpt")
    shifted = json.loads(good)
    shifted["added_tokens"] = [dict(t, id=t["id"] + 1) if t["content"] == "<pad>" else t for t in shifted["added_tokens"]]
    vocab = shifted["model"]["vocab"]
    vocab[1], vocab[2] = vocab[2], vocab[1]
    with pytest.raises(SourceError, match=r"maps <pad> to .*XLM-R needs 1"):
        tok.check_tokenizer(json.dumps(shifted), text, where="ckpt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no tokenizer"):
        tok.checkpoint_tokenizer_json(tmp_path / "empty")


def test_configured_tokenizer_json_truncates_and_pads_like_the_runtime(transformers_checkpoint: Path) -> None:
    configured = Tokenizer.from_str(tok.configure_tokenizer(tok.checkpoint_tokenizer_json(transformers_checkpoint),
                                                            TextSpec(max_length=8)))
    long, short = configured.encode_batch([" ".join(TOKEN_TEXTS[:3]), "a"])
    assert len(long.ids) == len(short.ids) == 8 and long.ids[-1] == 2  # truncated keeping </s>
    assert short.ids[-1] == 1 and short.attention_mask[-1] == 0  # padded with <pad> = 1, mask 0


def test_placeholder_tokenizer_has_xlmr_specials_and_covers_its_scripts() -> None:
    placeholder = Tokenizer.from_str(tok.placeholder_tokenizer_json())
    assert [placeholder.token_to_id(t) for t in ("<s>", "<pad>", "</s>", "<unk>")] == [0, 1, 2, 3]
    ids = placeholder.encode("一张猫的照片 a photo of a cat").ids
    assert ids[0] == 0 and ids[-1] == 2 and 3 not in ids
