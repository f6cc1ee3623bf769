"""The bundle's tokenizer.json: taken from the checkpoint, converted from sentencepiece, or a placeholder.

The runtime needs only the ``tokenizers`` library and this one file; the ids must be XLM-R's
(fairseq offset: ``<s>``=0, ``<pad>``=1, ``</s>``=2, ``<unk>``=3, other pieces = sentencepiece id + 1).
"""

from __future__ import annotations

import logging
import tempfile
import unicodedata
from pathlib import Path

from ..bundle import TextSpec
from ..errors import SourceError

log = logging.getLogger(__name__)

SPECIALS = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}


def checkpoint_tokenizer_json(folder: Path) -> str:
    """The checkpoint's tokenizer as transformers 5 loads it, serialized for the ``tokenizers`` runtime.

    A checkpoint's own tokenizer.json is not copied as it is: transformers 5 rebuilds XLM-R's
    normalizer and pre-tokenizer on load, and older files (transformers 4 style) tokenize whitespace
    differently (whitespace-only text gave an extra piece). Loading through transformers and saving
    its backend gives the runtime exactly what transformers computes. A folder with only
    ``sentencepiece.bpe.model`` is converted the same way (``XLMRobertaTokenizer(vocab_file=...)`` would
    silently map every piece to ``<unk>`` in transformers 5, so ``from_pretrained`` on a folder is used).
    """
    import shutil

    from transformers import XLMRobertaTokenizer

    names = [n for n in ("tokenizer.json", "sentencepiece.bpe.model") if (folder / n).is_file()]
    if not names:
        raise SourceError(f"{folder}: no tokenizer (neither tokenizer.json nor sentencepiece.bpe.model)")
    # Only the vocabulary files: a checkpoint's tokenizer_config.json may carry unrelated settings.
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            shutil.copy(folder / name, Path(tmp) / name)
        try:
            tokenizer = XLMRobertaTokenizer.from_pretrained(tmp)
        except Exception as exc:
            raise SourceError(f"{folder / names[0]}: not a readable XLM-R tokenizer ({exc})") from exc
        return tokenizer.backend_tokenizer.to_str()


def check_tokenizer(tokenizer_json: str, text: TextSpec, where: str) -> None:
    """Refuse a tokenizer whose special ids or vocabulary do not fit the text tower."""
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_str(tokenizer_json)
    except Exception as exc:
        raise SourceError(f"{where}: tokenizer.json is not readable by tokenizers ({exc})") from exc
    for token, expected in SPECIALS.items():
        got = tokenizer.token_to_id(token)
        if got != expected:
            raise SourceError(f"{where}: tokenizer maps {token} to {got}, XLM-R needs {expected}; wrong tokenizer")
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    if size > text.vocab_size:
        raise SourceError(
            f"{where}: tokenizer has {size} tokens but the text tower's vocabulary is {text.vocab_size}; wrong tokenizer"
        )


def configure_tokenizer(tokenizer_json: str, text: TextSpec) -> str:
    """Bake the runtime's truncation and padding into tokenizer.json, so other clients of the file
    (transformers, transformers.js) tokenize as the runtime does."""
    from ..runtime.text import load_tokenizer

    return load_tokenizer(tokenizer_json, text).to_str()


# A few lines in many scripts: the placeholder tokenizer's pieces are their characters.
PLACEHOLDER_TEXT = (
    "a photo of a cat. the quick brown fox jumps over the lazy dog 0123456789 "
    "一张猫的照片 日本語の写真です 고양이 사진 ภาพถ่ายของแมว बिल्ली की तस्वीर фото кота "
    "صورة قطة kedi fotoğrafı ảnh con mèo zdjęcie kota foto van een kat foto de um gato "
    "foto di un gatto foto de un gato Foto einer Katze photo d'un chat ÄÖÜßéèêàçñ"
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ!?,;:'\"()[]{}-_+=*/\\&%$#@~`^|<>"
)


def placeholder_tokenizer_json() -> str:
    """An XLM-R-shaped unigram tokenizer over single characters, for ``--random-init`` bundles.

    Same special ids, normalisation style and template as XLM-R, so the runtime path is exercised
    exactly; the pieces are characters because no real vocabulary is available offline.
    """
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import Unigram

    chars = sorted({unicodedata.normalize("NFKC", c) for c in PLACEHOLDER_TEXT if not c.isspace()})
    pieces = [("▁", -2.0)] + [(c, -5.0) for c in chars] + [("▁" + c, -4.0) for c in chars]
    vocab = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + pieces + [("<mask>", 0.0)]
    tokenizer = Tokenizer(Unigram(vocab, unk_id=3, byte_fallback=False))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(r"\s+"), " ")])
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    tokenizer.add_special_tokens(["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    return tokenizer.to_str()
