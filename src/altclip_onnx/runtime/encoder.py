"""The Encoder: a bundle loaded for use. Images and texts in, normalized embeddings and probabilities out.

Needs only onnxruntime, tokenizers, numpy and Pillow. Sessions and the tokenizer load lazily, so a
text-only user never loads the image tower.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..bundle import (PIXEL_VALUES, TEXTUAL, TOKENIZER, VISUAL, Manifest, ModelIdentity, read_manifest, tower_output,
                      verify_files)
from ..errors import BundleError, InputError
from ..precisions import AUTO, PRECISION_NAMES, auto_order
from .images import IMAGE_BATCH_SIZE, ImageInput, preprocess_batch
from .profile import tuned_choice
from .providers import choose_providers, make_session, resolve_provider_name
from ..verification.selfcheck import ensure_verified
from .text import TEXT_BATCH_SIZE, check_texts, load_tokenizer, pads_texts, tokenize, unpadded_batches

log = logging.getLogger(__name__)


# Prompt ensembling as in CLIP: each label is embedded in several sentences and the normalized
# embeddings are averaged. English templates work for labels in any language (AltCLIP was trained on
# code-mixed pairs too); pass your own, e.g. ["一张{}的照片"], to prompt in the labels' language.
DEFAULT_TEMPLATES = (
    "a photo of a {}.",
    "a picture of a {}.",
    "a close-up photo of a {}.",
    "a photo of the {}.",
    "{}",
)

def pick_precision(manifest: Manifest, tower: str, requested: str, provider: str) -> str:
    """The precision variant to load for one tower: a pure function of bundle, request and provider."""
    available = manifest.precisions(tower)
    if not available:
        raise BundleError(f"the bundle's manifest lists no {tower} model; re-export the bundle")
    if requested == AUTO:
        for precision in auto_order(provider):
            if precision in available:
                return precision
        return available[0]
    if requested not in PRECISION_NAMES:
        raise InputError(f"unknown precision {requested!r}: choose {AUTO}, {', '.join(PRECISION_NAMES)}")
    if requested not in available:
        raise InputError(
            f"the bundle's {tower} tower has no {requested} variant (it has {', '.join(available)}); "
            "re-export with --precision to add it"
        )
    return requested


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return (exp / exp.sum(axis=-1, keepdims=True)).astype(np.float32)


def check_labels(labels: Sequence[str]) -> list[str]:
    """Labels as given, or InputError for none, a non-string, an empty one or a repeat (after trimming):
    a repeated label would split its probability in two, or be merged and read 100%."""
    labels = check_texts(labels, what="label")
    if not labels:
        raise InputError("no labels given")
    seen: dict[str, str] = {}
    for label in labels:
        key = label.strip()
        if not key:
            raise InputError("a label is empty; give every label some text")
        if key in seen:
            raise InputError(f"label {key!r} is given twice; give each label once")
        seen[key] = label
    return labels


@dataclass(frozen=True)
class Prompts:
    """A zero-shot classifier's recipe: each label in each template, embedded; per label, the renormalized
    mean of its normalized embeddings. Whoever runs the text tower (:meth:`Encoder.text_classifier`, the
    service's batches) embeds :attr:`texts` and hands the vectors to :meth:`classifier`."""

    labels: tuple[str, ...]
    templates: tuple[str, ...]

    @classmethod
    def of(cls, labels: Sequence[str], templates: str | Sequence[str] | None = None) -> Prompts:
        """Checked labels (see :func:`check_labels`) and templates: None for :data:`DEFAULT_TEMPLATES`, one
        string for one template; none at all is an :class:`InputError`."""
        labels = check_labels(labels)
        if templates is None:
            templates = DEFAULT_TEMPLATES
        templates = [templates] if isinstance(templates, str) else list(templates)
        if not templates:
            raise InputError("no templates given; pass None for the default ones")
        for template in templates:
            if "{}" not in template:
                raise InputError(f"template {template!r} has no {{}} where the label goes")
        return cls(tuple(labels), tuple(templates))

    @property
    def texts(self) -> list[str]:
        """Label by label, each in every template."""
        return [template.replace("{}", label) for label in self.labels for template in self.templates]

    def classifier(self, embeds: np.ndarray) -> np.ndarray:
        """float32 [labels, D] from the normalized embeddings of :attr:`texts`, in their order."""
        return l2_normalize(embeds.reshape(len(self.labels), len(self.templates), -1).mean(axis=1))


class Encoder:
    """Embed images and texts with an altclip-onnx bundle.

    ``bundle``: a bundle folder, or ``hf://OWNER/REPO[@REVISION]`` (downloaded into huggingface_hub's cache,
    the ``[hub]`` extra). ``provider``: None or "auto" (best available), a short name (cpu, cuda, tensorrt, coreml, openvino,
    directml) or a full onnxruntime provider name. ``precision``: "auto" (int8 on CPU and fp16 on
    CUDA/TensorRT when the bundle has them), "fp32" (the reference), "int8" or "fp16".
    ``threads``: onnxruntime intra-op threads (None: its default, one per physical core).
    ``check_files``: before anything runs, check the chosen variants' files and the tokenizer against the
    manifest (sizes always, sha256 once per file state: see :func:`~altclip_onnx.bundle.verify_files`).
    ``self_check``: the first time a tower's variant runs with this provider, onnxruntime build and CPU/GPU,
    hold its outputs on the bundle's quick verification cases against the PyTorch reference the bundle
    carries, and refuse it (:class:`~altclip_onnx.errors.VerificationError`) when it fails its gate; a pass
    is recorded so later starts skip it (see :mod:`altclip_onnx.verification.selfcheck`). False: trust it.
    ``spinning``: let onnxruntime's idle worker threads busy-wait between runs (fastest for one session
    alone; turn it off when sessions, decoders or a server's event loop share the cores).
    """

    def __init__(
        self,
        bundle: str | os.PathLike[str],
        *,
        provider: str | None = None,
        precision: str = AUTO,
        threads: int | None = None,
        max_length: int | None = None,
        check_files: bool = True,
        self_check: bool = True,
        spinning: bool = True,
    ) -> None:
        import onnxruntime

        from ..hub import locate_bundle

        self.bundle = locate_bundle(bundle)  # a folder, or hf://OWNER/REPO fetched into the Hub cache
        self.manifest = read_manifest(self.bundle)
        self.provider = provider
        self.providers = choose_providers(onnxruntime.get_available_providers(), provider)
        self.threads = threads
        self.self_check = self_check
        self.spinning = spinning
        self.precisions: dict[str, str] = {}
        self.tower_providers: dict[str, str | None] = {}  # what each tower's session is made with
        tuned = tuned_choice(self.bundle, self.manifest) if precision == AUTO else None
        wanted = None if provider is None or provider.strip().lower() == AUTO else resolve_provider_name(provider)
        self.tuned: tuple[str, ...] = ()  # the towers following the profile
        for tower in (VISUAL, TEXTUAL):
            if tuned is not None and wanted in (None, tuned[tower][0]):
                self.tower_providers[tower], self.precisions[tower] = tuned[tower]
                self.tuned += (tower,)
            else:
                self.tower_providers[tower] = provider
                self.precisions[tower] = pick_precision(self.manifest, tower, precision, self.providers[0])
        self.max_length = self.manifest.text.max_length if max_length is None else max_length
        if not 3 <= self.max_length <= self.manifest.text.model_max_length:
            raise InputError(f"max_length must be 3..{self.manifest.text.model_max_length}, not {self.max_length}")
        self._sessions: dict[str, Any] = {}
        self._tokenizer: Any = None
        self._identity: ModelIdentity | None = None
        if check_files:
            chosen = [f for tower, p in self.precisions.items() for f in self.manifest.towers[tower][p].files]
            checked = list(self.manifest.reference) if self_check else []  # the self-check reads the reference
            verify_files(self.bundle, self.manifest, [*chosen, TOKENIZER, *checked])

    def __repr__(self) -> str:
        return (
            f"Encoder({str(self.bundle)!r}, variant={self.manifest.variant!r}, dim={self.embedding_dim}, "
            f"providers={self.providers}, precisions={self.precisions}, tuned={self.tuned})"
        )

    def provider_of(self, tower: str) -> str:
        """The provider ``tower`` runs on first (its fallback is the CPU): the profile's, else the first chosen."""
        return self.tower_providers[tower] if tower in self.tuned else self.providers[0]  # type: ignore[return-value]

    @property
    def embedding_dim(self) -> int:
        return self.manifest.embedding_dim

    @property
    def logit_scale(self) -> float:
        return self.manifest.logit_scale

    @property
    def identity(self) -> ModelIdentity:
        """Which model this is, whatever its precision or folder (see :class:`~altclip_onnx.bundle.ModelIdentity`)."""
        if self._identity is None:
            self._identity = self.manifest.identity()
        return self._identity

    def session(self, tower: str) -> Any:
        """The tower's onnxruntime session, loaded (and, the first time here, checked) on first use."""
        if tower not in self._sessions:
            precision = self.precisions[tower]
            variant = self.manifest.towers[tower][precision]
            session = make_session(self.bundle / variant.path, provider=self.tower_providers[tower], threads=self.threads,
                                   spinning=self.spinning)
            if self.self_check:
                ensure_verified(self.bundle, self.manifest, tower, precision, session)
            self._sessions[tower] = session
        return self._sessions[tower]

    def token_counts(self, texts: Sequence[str]) -> np.ndarray:
        """int64 [N]: how many tokens each text becomes (after truncation), as the text tower sees it."""
        encodings = self.tokenizer.encode_batch(check_texts(texts))
        return np.array([sum(e.attention_mask) for e in encodings], dtype=np.int64)

    # --- text -------------------------------------------------------------------------------------

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.bundle / TOKENIZER, self.manifest.text, self.max_length)
        return self._tokenizer

    def tokenize(self, texts: str | Sequence[str]) -> dict[str, np.ndarray]:
        """XLM-R ids padded to the longest text (pad id 1, mask 0), truncated to max_length keeping ``</s>``."""
        return tokenize(self.tokenizer, check_texts(texts))

    def encode_texts(self, texts: str | Sequence[str], *, batch_size: int = TEXT_BATCH_SIZE,
                     normalize: bool = True) -> np.ndarray:
        """float32 [N, D]; L2-normalized unless ``normalize=False`` (then equal to get_text_features)."""
        texts = check_texts(texts)
        check_batch_size(batch_size)
        out = np.empty((len(texts), self.embedding_dim), dtype=np.float32)
        output = tower_output(TEXTUAL, normalized=normalize)
        session = self.session(TEXTUAL)
        if not pads_texts(session):  # texts batched only with texts of their own length (see pads_texts)
            for rows, inputs in unpadded_batches(self.tokenize(texts), batch_size):
                out[rows] = session.run([output], inputs)[0]
            return out
        # Sorting by length keeps padding (wasted work) small; results go back in the caller's order.
        lengths = [len(t) for t in texts]
        order = sorted(range(len(texts)), key=lengths.__getitem__)
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            out[index] = session.run([output], self.tokenize([texts[i] for i in index]))[0]
        return out

    # --- images -----------------------------------------------------------------------------------

    def preprocess(self, images: ImageInput | Iterable[ImageInput], *, draft: bool = False) -> np.ndarray:
        """float32 [N, 3, S, S], equal to CLIPImageProcessor (PIL backend) on the same decoded image."""
        return preprocess_batch(as_list(images), self.manifest.image, draft=draft)

    def encode_pixels(self, pixel_values: np.ndarray, *, normalize: bool = True, run_options: Any = None) -> np.ndarray:
        """``run_options``: onnxruntime RunOptions for this run (e.g. the service's arena shrinkage)."""
        output = tower_output(VISUAL, normalized=normalize)
        return self.session(VISUAL).run([output], {PIXEL_VALUES: pixel_values}, run_options)[0]

    def encode_images(
        self,
        images: ImageInput | Iterable[ImageInput],
        *,
        batch_size: int = IMAGE_BATCH_SIZE,
        normalize: bool = True,
        draft: bool = False,
    ) -> np.ndarray:
        """float32 [N, D] from paths, bytes, PIL images or HWC uint8 arrays; L2-normalized by default."""
        check_batch_size(batch_size)
        items = as_list(images)
        parts = [np.empty((0, self.embedding_dim), dtype=np.float32)]
        for start in range(0, len(items), batch_size):
            pixels = preprocess_batch(items[start : start + batch_size], self.manifest.image, draft=draft)
            parts.append(self.encode_pixels(pixels, normalize=normalize))
        return np.concatenate(parts)

    # --- zero-shot classification -----------------------------------------------------------------

    def text_classifier(self, labels: Sequence[str], templates: Sequence[str] | None = None) -> np.ndarray:
        """float32 [len(labels), D]: per label, the renormalized mean of its normalized template embeddings
        (:class:`Prompts`)."""
        prompts = Prompts.of(labels, templates)
        return prompts.classifier(self.encode_texts(prompts.texts))

    def classify(
        self,
        images: ImageInput | Iterable[ImageInput],
        labels: Sequence[str],
        templates: Sequence[str] | None = None,
        *,
        batch_size: int = IMAGE_BATCH_SIZE,
    ) -> np.ndarray:
        """float32 [N, len(labels)] probabilities: softmax(logit_scale x cosine(image, label))."""
        classifier = self.text_classifier(labels, templates)
        return self.probabilities(self.encode_images(images, batch_size=batch_size), classifier)

    def probabilities(self, image_embeds: np.ndarray, classifier: np.ndarray) -> np.ndarray:
        return softmax(self.logit_scale * (l2_normalize(image_embeds) @ classifier.T))


def as_list(images: ImageInput | Iterable[ImageInput]) -> list[ImageInput]:
    if isinstance(images, (str, bytes, bytearray, memoryview, os.PathLike)) or hasattr(images, "getpixel"):
        return [images]  # type: ignore[list-item]
    if isinstance(images, np.ndarray) and images.ndim in (2, 3):
        return [images]
    return list(images)  # type: ignore[arg-type]


def check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, not {batch_size}")
