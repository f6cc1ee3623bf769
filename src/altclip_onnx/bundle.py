"""The bundle: the on-disk contract between the export half and the runtime half.

A bundle is a folder::

    manifest.json                   the one authority on the bundle (this module)
    visual/model.onnx               image tower, fp32 (+ model.onnx.data when weights are external)
    visual/model.<precision>.onnx   further precisions of the same tower (int8, fp16)
    visual/preprocessor_config.json CLIPImageProcessor settings, for tools that expect Hugging Face files
    textual/model.onnx              text tower, fp32 (+ model.onnx.data)
    textual/model.<precision>.onnx
    textual/tokenizer.json          a Hugging Face `tokenizers` fast tokenizer (XLM-R ids)
    reference/cases.json            the verification cases: how each input was made, sentences, batching
    reference/arrays.npz            their inputs (8-bit image crops, token ids) and PyTorch's outputs
    verify.json                     the last verification report (not checksummed: it is rewritten)
    .verified.json                  what was checked on which machine (not checksummed; see verify_files)

The reference (format 1.1 on) lets any machine verify the bundle without torch: see
:mod:`altclip_onnx.verification`.

Image tower: input ``pixel_values`` float32 [batch, 3, S, S]; outputs ``image_embeds`` float32
[batch, D] (equal to ``AltCLIPModel.get_image_features``) and ``image_embeds_norm`` (L2-normalized).
Text tower: inputs ``input_ids`` and ``attention_mask`` int64 [batch, sequence]; outputs
``text_embeds`` and ``text_embeds_norm``. ``batch`` and ``sequence`` are dynamic axes by those
names. All paths inside the manifest are relative to the bundle folder, so a bundle can be moved.

This module uses only the standard library; both halves import it, it imports neither.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import AltclipOnnxError, BundleError, InputError, IntegrityError
from .files import hash_file, read_json_object, write_json
from .models import display_name
from .precisions import PRECISION_NAMES, precision

log = logging.getLogger(__name__)

FORMAT_VERSION = "1.1"  # 1.1: the PyTorch reference travels in reference/
SUPPORTED_MAJOR = 1

MANIFEST = "manifest.json"
VERIFY_REPORT = "verify.json"
VERIFIED_RECORD = ".verified.json"  # which files' checksums were checked, and in what state (see verify_files)
VISUAL = "visual"
TEXTUAL = "textual"
TOWERS = (VISUAL, TEXTUAL)
TOKENIZER = f"{TEXTUAL}/tokenizer.json"
PREPROCESSOR = f"{VISUAL}/preprocessor_config.json"
REFERENCE_CASES = "reference/cases.json"
REFERENCE_ARRAYS = "reference/arrays.npz"
REFERENCE_FILES = (REFERENCE_CASES, REFERENCE_ARRAYS)

PIXEL_VALUES = "pixel_values"
INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
TOWER_INPUTS = {
    VISUAL: (PIXEL_VALUES,),
    TEXTUAL: (INPUT_IDS, ATTENTION_MASK),
}
TOWER_OUTPUTS = {  # (the embedding, the same L2-normalized)
    VISUAL: ("image_embeds", "image_embeds_norm"),
    TEXTUAL: ("text_embeds", "text_embeds_norm"),
}


def tower_output(tower: str, *, normalized: bool) -> str:
    """The name of a tower's output: its embedding, or (``normalized``) the same L2-normalized."""
    return TOWER_OUTPUTS[tower][1 if normalized else 0]

#: The ONNX opset a bundle is exported with unless told otherwise (``export --opset``); the manifest records
#: the one each bundle has.
DEFAULT_OPSET = 17

# PIL's resampling filter numbers, as CLIPImageProcessor stores them.
RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def model_filename(name: str) -> str:
    """File name of a tower's graph for one precision: fp32 is plain ``model.onnx``."""
    return precision(name).filename


@dataclass(frozen=True)
class ImageSpec:
    """How pixels reach the image tower (CLIPImageProcessor's settings, stored as data)."""

    size: int = 224  # the square the tower takes
    shortest_edge: int = 224  # resize so the shortest edge is this long, keeping aspect ratio
    resample: int = 3  # PIL filter number; 3 is bicubic
    rescale_factor: float = 1 / 255
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["resample_name"] = RESAMPLE_NAMES.get(self.resample, "unknown")
        data["mean"], data["std"] = list(self.mean), list(self.std)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ImageSpec:
        return cls(
            size=int(data["size"]),
            shortest_edge=int(data["shortest_edge"]),
            resample=int(data["resample"]),
            rescale_factor=float(data["rescale_factor"]),
            mean=tuple(float(v) for v in data["mean"]),  # type: ignore[arg-type]
            std=tuple(float(v) for v in data["std"]),  # type: ignore[arg-type]
        )

    def preprocessor_config(self) -> dict[str, Any]:
        """The same settings as a Hugging Face ``preprocessor_config.json``."""
        return {
            "image_processor_type": "CLIPImageProcessor",
            "do_resize": True,
            "size": {"shortest_edge": self.shortest_edge},
            "resample": self.resample,
            "do_center_crop": True,
            "crop_size": {"height": self.size, "width": self.size},
            "do_rescale": True,
            "rescale_factor": self.rescale_factor,
            "do_normalize": True,
            "image_mean": list(self.mean),
            "image_std": list(self.std),
            "do_convert_rgb": True,
        }


@dataclass(frozen=True)
class TextSpec:
    """How text reaches the text tower (XLM-R ids with the fairseq offset)."""

    max_length: int = 77  # default truncation; the tower itself accepts up to model_max_length
    model_max_length: int = 512
    pad_id: int = 1
    bos_id: int = 0
    eos_id: int = 2
    unk_id: int = 3
    vocab_size: int = 250002

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TextSpec:
        return cls(**{f.name: int(data[f.name]) for f in dataclasses.fields(cls) if f.name in data})


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    size: int


@dataclass(frozen=True)
class Variant:
    """One precision of one tower: its graph file, weight files and measured accuracy."""

    precision: str
    path: str  # graph file, relative to the bundle
    files: tuple[str, ...]  # every file the graph needs (graph first), relative to the bundle
    accuracy: dict[str, Any] = field(default_factory=dict)
    fused_ops: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "files": list(self.files),
            "accuracy": self.accuracy,
            "fused_ops": self.fused_ops,
        }

    @classmethod
    def from_json(cls, precision: str, data: dict[str, Any]) -> Variant:
        return cls(
            precision=precision,
            path=data["path"],
            files=tuple(data["files"]),
            accuracy=dict(data.get("accuracy", {})),
            fused_ops={k: int(v) for k, v in data.get("fused_ops", {}).items()},
        )


@dataclass(frozen=True)
class ModelIdentity:
    """A model's identity: what indexes and few-shot caches record, and compare, to refuse another model.

    Two bundles are the same model when fingerprint and dimension agree, whatever their precision,
    folder or name.
    """

    fingerprint: str
    variant: str
    source: str
    embedding_dim: int

    def same_model(self, other: ModelIdentity) -> bool:
        return self.fingerprint == other.fingerprint and self.embedding_dim == other.embedding_dim

    def describe(self) -> str:
        name = display_name(self.variant, None if self.source == "?" else self.source)
        return f"{name} ({self.embedding_dim}-d, weights {self.fingerprint[:12]})"

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelIdentity:
        return cls(fingerprint=str(data["fingerprint"]), variant=str(data["variant"]), source=str(data["source"]),
                   embedding_dim=int(data["embedding_dim"]))


@dataclass(frozen=True)
class Manifest:
    """Everything a runtime needs to know about a bundle, and how it was made."""

    source: dict[str, Any]  # name, kind (hub|transformers|flagai|random-init), path or repo id, seed
    variant: str  # AltCLIP, AltCLIP-m9, AltCLIP-m18 or "custom" (see altclip_onnx.models)
    embedding_dim: int
    logit_scale: float  # the multiplier (exp of the model's parameter), e.g. 100.0
    image: ImageSpec
    text: TextSpec
    opset: int
    towers: dict[str, dict[str, Variant]]  # tower -> precision -> variant
    files: dict[str, FileEntry]  # every checksummed file, relative path -> entry
    exported_with: dict[str, str] = field(default_factory=dict)
    reference: tuple[str, ...] = ()  # REFERENCE_FILES when the bundle carries PyTorch's outputs (format 1.1 on)
    format_version: str = FORMAT_VERSION

    def precisions(self, tower: str) -> list[str]:
        return [p for p in PRECISION_NAMES if p in self.towers.get(tower, {})]

    def fingerprint(self) -> str:
        """SHA-256 over the checksums of both towers' fp32 files: same weights, same fingerprint.

        Every precision of a bundle shares it (they are one model), and a moved or copied bundle keeps
        it; indexes and few-shot caches record it to refuse vectors from another model.
        """
        files: list[str] = []
        for tower in TOWERS:
            variants = self.towers.get(tower, {})
            variant = variants.get("fp32") or next(iter(variants.values()), None)
            files.extend(variant.files if variant else ())
        lines = [f"{name} {self.files[name].sha256 if name in self.files else '-'}" for name in sorted(files)]
        return hashlib.sha256("\n".join(lines).encode()).hexdigest()

    def identity(self) -> ModelIdentity:
        """Which model this bundle is (see :class:`ModelIdentity`)."""
        return ModelIdentity(
            fingerprint=self.fingerprint(),
            variant=self.variant,
            source=str(self.source.get("name") or "?"),
            embedding_dim=self.embedding_dim,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "source": self.source,
            "variant": self.variant,
            "embedding_dim": self.embedding_dim,
            "logit_scale": self.logit_scale,
            "image": self.image.to_json(),
            "text": self.text.to_json(),
            "opset": self.opset,
            "towers": {
                tower: {
                    "inputs": list(TOWER_INPUTS[tower]),
                    "outputs": list(TOWER_OUTPUTS[tower]),
                    "variants": {p: v.to_json() for p, v in variants.items()},
                }
                for tower, variants in self.towers.items()
            },
            "files": {path: dataclasses.asdict(entry) for path, entry in sorted(self.files.items())},
            "reference": list(self.reference),
            "exported_with": self.exported_with,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str = MANIFEST) -> Manifest:
        version = str(data.get("format_version", ""))
        try:
            major = int(version.split(".")[0])
        except ValueError as exc:
            raise BundleError(f"{where}: format_version {version!r} is not a version number") from exc
        if major != SUPPORTED_MAJOR:
            raise BundleError(
                f"{where}: bundle format {version} is not supported by this altclip-onnx "
                f"(it reads format {SUPPORTED_MAJOR}.x); re-export the model or upgrade altclip-onnx"
            )
        try:
            return cls(
                format_version=version,
                source=dict(data["source"]),
                variant=str(data["variant"]),
                embedding_dim=int(data["embedding_dim"]),
                logit_scale=float(data["logit_scale"]),
                image=ImageSpec.from_json(data["image"]),
                text=TextSpec.from_json(data["text"]),
                opset=int(data["opset"]),
                towers={
                    tower: {
                        p: Variant.from_json(p, v) for p, v in data["towers"][tower]["variants"].items()
                    }
                    for tower in TOWERS
                },
                files={p: FileEntry(**e) for p, e in data["files"].items()},
                exported_with=dict(data.get("exported_with", {})),
                reference=tuple(str(name) for name in data.get("reference", ())),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"{where}: manifest is incomplete or malformed ({exc!r}); re-export the bundle") from exc


def read_manifest(bundle: str | os.PathLike[str]) -> Manifest:
    """Read and validate ``bundle/manifest.json``."""
    folder = Path(bundle)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise BundleError(f"{folder}: no such bundle folder; export one with 'altclip-onnx export'")
    if not path.is_file():
        raise BundleError(f"{path}: missing; {folder} is not an altclip-onnx bundle (export one with 'altclip-onnx export')")
    data = read_json_object(path, BundleError, hint="; re-export the bundle")
    return Manifest.from_json(data, where=str(path))


def file_entry(bundle: Path, relpath: str) -> FileEntry:
    path = bundle / relpath
    return FileEntry(sha256=hash_file(path), size=path.stat().st_size)


def needed_files(manifest: Manifest, variants: Iterable[tuple[str, str]]) -> list[str]:
    """The checksummed files that running ``variants`` ((tower, precision) pairs) needs, sorted: their graphs,
    and every file that belongs to no graph (tokenizer, image settings, reference). :class:`InputError` for
    a variant the bundle does not have."""
    graphs = {f for by_precision in manifest.towers.values() for v in by_precision.values() for f in v.files}
    files = set(manifest.files) - graphs
    for tower, name in variants:
        available = manifest.towers.get(tower, {})
        if name not in available:
            raise InputError(f"the bundle's {tower} tower has no {name} variant (it has {', '.join(available)})")
        files.update(available[name].files)
    return sorted(files)


def check_integrity(bundle: str | os.PathLike[str], manifest: Manifest | None = None) -> list[str]:
    """Check every checksummed file against the manifest. Returns one problem line per bad file."""
    folder = Path(bundle)
    manifest = manifest or read_manifest(folder)
    problems = []
    for relpath, entry in sorted(manifest.files.items()):
        path = folder / relpath
        if not path.is_file():
            problems.append(f"{path}: missing")
            continue
        size = path.stat().st_size
        if size != entry.size:
            problems.append(f"{path}: size {size} bytes, manifest says {entry.size}")
        elif hash_file(path) != entry.sha256:
            problems.append(f"{path}: sha256 differs from the manifest (corrupt or modified)")
    return problems


def verify_files(bundle: str | os.PathLike[str], manifest: Manifest, names: Iterable[str]) -> None:
    """Refuse corrupt weights before they run: every size always, every checksum once per file state.

    A flipped block in a weights file runs silently (embeddings nothing like the true ones) and a
    truncated one crashes inside onnxruntime, so files are checked before a session loads them. Hashing a
    full bundle takes seconds (benchmarks/README.md), so a successful check is recorded in
    ``bundle/.verified.json`` keyed by each file's size, mtime, inode and ctime (ctime cannot be set back by
    hand); a file in the same state is not hashed again, one that changed in any way is. When the bundle
    folder is read-only nothing is recorded and the check hashes every time.

    Raises :class:`IntegrityError` naming the file and what to do.
    """
    folder = Path(bundle)
    record = dict(read_record(folder, "files"))
    changed = False
    for name in dict.fromkeys(names):
        entry = manifest.files.get(name)
        if entry is None:
            raise IntegrityError(f"{folder / name}: not listed in the manifest; re-export or re-download the bundle")
        path = folder / name
        try:
            st = path.stat()
        except OSError as exc:
            raise IntegrityError(f"{path}: missing ({exc.strerror}); re-export or re-download the bundle") from exc
        if st.st_size != entry.size:
            raise IntegrityError(f"{path}: {st.st_size} bytes, the manifest says {entry.size} (truncated or replaced); "
                                 "re-export or re-download the bundle")
        state = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino, "ctime_ns": st.st_ctime_ns,
                 "sha256": entry.sha256}
        if record.get(name) == state:
            continue
        log.info("%s: checking its sha256 (once; recorded in %s)", path, VERIFIED_RECORD)
        if hash_file(path) != entry.sha256:
            raise IntegrityError(f"{path}: sha256 differs from the manifest (corrupt or modified); "
                                 "re-export or re-download the bundle")
        record[name] = state
        changed = True
    if changed:
        write_record(folder, "files", record)


def read_record(folder: Path, section: str) -> dict[str, Any]:
    """One section of ``folder/.verified.json`` ("files": checksums checked; "numbers": see
    :mod:`altclip_onnx.verification.selfcheck`); empty when there is none."""
    try:
        data = json.loads((folder / VERIFIED_RECORD).read_text(encoding="utf-8"))
        value = data.get(section, {})
    except (OSError, ValueError, AttributeError):
        return {}
    return value if isinstance(value, dict) else {}


def write_record(folder: Path, section: str, entries: dict[str, Any]) -> bool:
    """Replace one section of ``folder/.verified.json``, keeping the others; False when the folder is
    read-only (nothing recorded: the check runs again next time)."""
    path = folder / VERIFIED_RECORD
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            data = {}
    except (OSError, ValueError):
        data = {}
    data.update({"format": 1, section: entries})
    try:
        write_json(path, data)
    except AltclipOnnxError as exc:
        log.debug("%s: not recorded (%s)", path, exc)
        return False
    return True


def require_integrity(bundle: str | os.PathLike[str], manifest: Manifest | None = None) -> Manifest:
    """Check every file against the manifest; :class:`IntegrityError` with the first problem if any fails."""
    manifest = manifest or read_manifest(bundle)
    problems = check_integrity(bundle, manifest)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise IntegrityError(f"{problems[0]}{more}; re-export or re-download the bundle", problems)
    return manifest


def check_same_model(
    recorded_what: str,
    recorded: ModelIdentity,
    recorded_precision: str,
    actual_what: str,
    actual: ModelIdentity,
    actual_precision: str,
    *,
    error: type[Exception],
    fix: str,
    warned: set[tuple[str, str]] | None = None,
) -> None:
    """Refuse vectors of another model; warn (once per ``warned`` set) when only the precision differs.

    Indexes and few-shot caches hold vectors that mean something only to the model that made them;
    this is the one check both use. The message reads ``"<recorded_what> <recorded>, but <actual_what>
    <actual>; <fix>"``.
    """
    if not recorded.same_model(actual):
        raise error(f"{recorded_what}, but {actual_what} {actual.describe()}; {fix}")
    key = (actual.fingerprint, actual_precision)
    if actual_precision != recorded_precision and (warned is None or key not in warned):
        if warned is not None:
            warned.add(key)
        log.warning("%s: vectors were computed at %s, this encoder runs %s (same model): scores may differ "
                    "slightly", recorded_what, recorded_precision, actual_precision)
