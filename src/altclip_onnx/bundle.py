"""The bundle: the on-disk contract between the export half and the runtime half.

A bundle is a folder::

    manifest.json                   the one authority on the bundle (this module)
    visual/model.onnx               image tower, fp32 (+ model.onnx.data when weights are external)
    visual/model.<precision>.onnx   further precisions of the same tower (int8, fp16)
    visual/preprocessor_config.json CLIPImageProcessor settings, for tools that expect Hugging Face files
    textual/model.onnx              text tower, fp32 (+ model.onnx.data)
    textual/model.<precision>.onnx
    textual/tokenizer.json          a Hugging Face `tokenizers` fast tokenizer (XLM-R ids)
    verify.json                     the last verification report (not checksummed: it is rewritten)

Image tower: input ``pixel_values`` float32 [batch, 3, S, S]; outputs ``image_embeds`` float32
[batch, D] (equal to ``AltCLIPModel.get_image_features``) and ``image_embeds_norm`` (L2-normalized).
Text tower: inputs ``input_ids`` and ``attention_mask`` int64 [batch, sequence]; outputs
``text_embeds`` and ``text_embeds_norm``. ``batch`` and ``sequence`` are dynamic axes by those
names. All paths inside the manifest are relative to the bundle folder, so a bundle can be moved.

This module uses only the standard library and numpy; both halves import it, it imports neither.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import BundleError

FORMAT_VERSION = "1.0"
SUPPORTED_MAJOR = 1

MANIFEST = "manifest.json"
VERIFY_REPORT = "verify.json"
VISUAL = "visual"
TEXTUAL = "textual"
TOWERS = (VISUAL, TEXTUAL)
TOKENIZER = f"{TEXTUAL}/tokenizer.json"
PREPROCESSOR = f"{VISUAL}/preprocessor_config.json"
PRECISIONS = ("fp32", "int8", "fp16")

TOWER_INPUTS = {
    VISUAL: ("pixel_values",),
    TEXTUAL: ("input_ids", "attention_mask"),
}
TOWER_OUTPUTS = {
    VISUAL: ("image_embeds", "image_embeds_norm"),
    TEXTUAL: ("text_embeds", "text_embeds_norm"),
}

# PIL's resampling filter numbers, as CLIPImageProcessor stores them.
RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def model_filename(precision: str) -> str:
    """File name of a tower's graph for one precision: fp32 is plain ``model.onnx``."""
    if precision not in PRECISIONS:
        raise BundleError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    return "model.onnx" if precision == "fp32" else f"model.{precision}.onnx"


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
class Manifest:
    """Everything a runtime needs to know about a bundle, and how it was made."""

    source: dict[str, Any]  # name, kind (hub|transformers|flagai|random-init), path or repo id, seed
    variant: str  # AltCLIP, AltCLIP-m9, AltCLIP-m18 or "custom"
    embedding_dim: int
    logit_scale: float  # the multiplier (exp of the model's parameter), e.g. 100.0
    image: ImageSpec
    text: TextSpec
    opset: int
    towers: dict[str, dict[str, Variant]]  # tower -> precision -> variant
    files: dict[str, FileEntry]  # every checksummed file, relative path -> entry
    exported_with: dict[str, str] = field(default_factory=dict)
    format_version: str = FORMAT_VERSION

    def precisions(self, tower: str) -> list[str]:
        return [p for p in PRECISIONS if p in self.towers.get(tower, {})]

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
            "exported_with": self.exported_with,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str = MANIFEST) -> Manifest:
        version = str(data.get("format_version", ""))
        try:
            major = int(version.split(".")[0])
        except ValueError:
            raise BundleError(f"{where}: format_version {version!r} is not a version number") from None
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
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"{where}: manifest is incomplete or malformed ({exc!r}); re-export the bundle") from None


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


def read_json_object(path: Path, error: type[Exception], hint: str = "") -> dict[str, Any]:
    """A JSON object from ``path``, or ``error`` with one line naming the file and what is wrong."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"{path}: not readable JSON ({exc}){hint}") from None
    if not isinstance(data, dict):
        raise error(f"{path}: not a JSON object{hint}")
    return data


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically: a temp file beside the target, then rename."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_entry(bundle: Path, relpath: str) -> FileEntry:
    path = bundle / relpath
    return FileEntry(sha256=sha256_file(path), size=path.stat().st_size)


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
        elif sha256_file(path) != entry.sha256:
            problems.append(f"{path}: sha256 differs from the manifest (corrupt or modified)")
    return problems


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temp path beside ``target``; rename it over ``target`` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600 files; outputs get the usual mode
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def refuse_non_empty(target: Path, overwrite: bool) -> None:
    if target.exists() and (not target.is_dir() or any(target.iterdir())) and not overwrite:
        raise BundleError(f"{target}: exists and is not empty; pass --overwrite to replace it or choose another -o")


@contextlib.contextmanager
def staging_folder(target: Path, overwrite: bool) -> Iterator[Path]:
    """Build a folder in a temp sibling of ``target`` and move it into place only on success.

    A failed or interrupted build leaves ``target`` as it was (and no half-written folder).
    """
    target = Path(target)
    refuse_non_empty(target, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".building", dir=target.parent))
    try:
        yield staging
        os.chmod(staging, 0o777 & ~current_umask())  # mkdtemp makes a 0700 folder
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(staging, target)
            shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
        else:
            os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
