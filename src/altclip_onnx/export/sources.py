"""Model sources: what a name resolves to (the names themselves: :mod:`altclip_onnx.models`), Hub downloads,
both checkpoint layouts, and random initialisation.

Every way in ends in the same place: a ``LoadedModel`` holding a ``transformers.AltCLIPModel``
in eval mode with eager attention (so onnxruntime can fuse it), the tokenizer as a
``tokenizers`` JSON string, and the preprocessing settings.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..bundle import ImageSpec, TextSpec
from ..files import read_json_object
from ..errors import SourceError, one_line
from ..models import DEFAULT_VARIANT, KNOWN_VARIANTS, canonical_variant, known_names, variant_of_folder

log = logging.getLogger(__name__)

# --- The published variants' architecture (their names: altclip_onnx.models) ---------------------
# Shared architecture. Image tower: CLIP ViT-L/14 at 224 px, the numbers of openai/clip-vit-large-patch14's
# vision_config (AltCLIP keeps OpenAI's image tower). Text tower: XLM-RoBERTa large, the numbers of
# FacebookAI/xlm-roberta-large's config.json.
VIT_L14 = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "image_size": 224,
    "patch_size": 14,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}
XLMR_LARGE = {
    "vocab_size": 250002,
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "max_position_embeddings": 514,
    "type_vocab_size": 1,
    "layer_norm_eps": 1e-5,
    "hidden_act": "gelu",
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
}


# Files worth fetching from a Hub repo (either layout); everything else there (e.g. diffusion weights) is skipped.
HUB_PATTERNS = [
    "config.json",
    "preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "sentencepiece.bpe.model",
    "*.safetensors",
    "*.safetensors.index.json",
]
HUB_BIN_PATTERNS = ["pytorch_model.bin", "pytorch_model*.bin", "pytorch_model.bin.index.json"]
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


@dataclass(frozen=True)
class ResolvedSource:
    """Where a model comes from, before anything heavy is loaded."""

    name: str  # what the user asked for
    kind: str  # "hub", "transformers", "flagai" or "random-init"
    variant: str  # canonical variant name or models.CUSTOM
    path: Path | None = None  # local checkpoint folder (after download for Hub sources)
    repo_id: str | None = None
    seed: int | None = None

    def describe(self) -> dict[str, Any]:
        """Provenance for the manifest (no absolute paths: the bundle must stay movable)."""
        local = self.kind in ("transformers", "flagai") and self.path is not None
        info: dict[str, Any] = {"name": self.path.name if local else self.name, "kind": self.kind}  # type: ignore[union-attr]
        if self.repo_id:
            info["repo_id"] = self.repo_id
        if self.seed is not None:
            info["seed"] = self.seed
        return info


def default_output(source: str) -> Path:
    """Where ``export`` writes without ``-o``: ``onnx/<variant>`` (or the checkpoint folder's name)."""
    return Path("onnx") / (canonical_variant(source) or Path(source.rstrip("/")).name)


def resolve_source(
    name: str | None,
    *,
    random_init: bool = False,
    seed: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
) -> ResolvedSource:
    """Turn what the user typed into a local folder (downloading if needed) or a random-init recipe.

    ``name`` None means the default: the ``MODEL`` variable is read by the CLI, not here.
    """
    name = (name or DEFAULT_VARIANT).strip()
    local = Path(name).expanduser()
    variant = canonical_variant(name)
    if random_init:
        if variant is None:
            raise SourceError(f"--random-init needs a known variant name, not {name!r}; known: {known_names()}")
        return ResolvedSource(name=name, kind="random-init", variant=variant, seed=seed)
    if local.is_dir():
        kind = detect_layout(local)
        return ResolvedSource(name=name, kind=kind, variant=variant_of_folder(local), path=local)
    if local.exists():
        raise SourceError(f"{local}: is a file; pass the checkpoint folder that holds config.json")
    if variant is not None:
        repo_id = KNOWN_VARIANTS[variant].repo_id
    elif re.fullmatch(r"[\w.-]+/[\w.-]+", name) and not name.startswith((".", "/")):
        repo_id = name
    else:
        hint = " (no such folder)" if os.sep in name or name.startswith(".") else ""
        raise SourceError(f"unknown model {name!r}{hint}; known: {known_names()}")
    folder = download(repo_id, cache_dir=cache_dir)
    return ResolvedSource(
        name=name,
        kind="hub",
        variant=variant or variant_of_folder(folder),
        path=folder,
        repo_id=repo_id,
    )


def download(repo_id: str, *, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Fetch a checkpoint from the Hub into its usual cache layout (default ``./model/``)."""
    from huggingface_hub import snapshot_download

    cache = Path(cache_dir) if cache_dir is not None else Path("model")

    def fetch(patterns: list[str], local_only: bool) -> Path:
        return Path(
            snapshot_download(repo_id, cache_dir=cache, allow_patterns=patterns, local_files_only=local_only)
        )

    last_error: Exception | None = None
    for local_only in (True, False):  # use the cache when it is complete; go online only if needed
        try:
            folder = fetch(HUB_PATTERNS, local_only)
            if not any((folder / w).exists() for w in WEIGHT_FILES):
                folder = fetch(HUB_PATTERNS + HUB_BIN_PATTERNS, local_only)  # only pickled weights there
            if any((folder / w).exists() for w in WEIGHT_FILES):
                return folder
        except Exception as exc:  # huggingface_hub raises many types for "offline" and "not found"
            last_error = exc
    # The whole message, on one line: a message cut at a fixed length loses the part that says why.
    reason = f"{type(last_error).__name__}: {one_line(last_error)}" if last_error else "no weights in the repository"
    raise SourceError(
        f"could not download {repo_id} from the Hugging Face Hub into {cache}/ ({reason}); "
        f"on a machine with access run 'hf download {repo_id} --local-dir model/{repo_id.split('/')[-1]}' "
        "and pass that folder, or set HF_ENDPOINT to a mirror"
    ) from last_error


# --- Layouts ------------------------------------------------------------------------------------


def read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise SourceError(f"{path}: missing; {folder} is not an AltCLIP checkpoint folder")
    return read_json_object(path, SourceError)


def detect_layout(folder: Path) -> str:
    """'transformers' (model_type altclip) or 'flagai' (CLIPConfig with an xlm-roberta text_config)."""
    config = read_config(folder)
    if config.get("model_type") == "altclip":
        return "transformers"
    text_type = (config.get("text_config") or {}).get("model_type")
    if text_type in ("xlm-roberta", "xlm-roberta-large") and "vision_config" in config:
        return "flagai"
    raise SourceError(
        f"{folder / 'config.json'}: neither transformers' AltCLIP layout (model_type 'altclip') nor FlagAI's "
        f"(text_config.model_type 'xlm-roberta'); found model_type={config.get('model_type')!r}"
    )


# FlagAI's text config inherits XLMRobertaConfig: keys its config.json leaves out take these defaults
# (transformers' XLMRobertaConfig defaults, plus FlagAI's RobertaSeriesConfig project_dim).
XLMR_CONFIG_DEFAULTS = {
    "vocab_size": 30522,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "project_dim": 512,
}
VISION_KEYS = (
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_channels",
    "image_size", "patch_size", "hidden_act", "layer_norm_eps", "projection_dim",
)


def flagai_to_transformers_config(config: dict[str, Any]) -> dict[str, Any]:
    """Map FlagAI's CLIPHF config onto transformers' AltCLIPConfig arguments."""
    text = {k: config["text_config"].get(k, v) for k, v in XLMR_CONFIG_DEFAULTS.items()}
    vision = {k: config["vision_config"][k] for k in VISION_KEYS if k in config["vision_config"]}
    return {
        "text_config": text,
        "vision_config": vision,
        "projection_dim": config.get("projection_dim", 512),
        "logit_scale_init_value": config.get("logit_scale_init_value", 2.6592),
    }


# Checkpoint names -> the names of transformers 5's modules. FlagAI's XLM-R tower uses the older
# `encoder.layer.N` (its CLIP vision tower already has `encoder.layers.N`); transformers 5 itself saves
# `encoder.layer.N` for both towers and renames on load. One rule covers all of them.
LAYER_RENAMES = ((re.compile(r"(^|\.)encoder\.layer\.(\d+)\."), r"\1encoder.layers.\2."),)
# FlagAI's `roberta.pooler` is unused by CLIP features, and m18's `transformation_pre` only feeds
# AltDiffusion: both are dropped.
FLAGAI_DROPPED = re.compile(r"^text_model\.(roberta\.pooler\.|transformation_pre\.)|(^|\.)position_ids$")


def convert_state_dict(state: dict[str, Any]) -> dict[str, Any]:
    """Rename a checkpoint's tensors to transformers 5's AltCLIPModel names; drop the unused ones."""
    converted = {}
    for key, value in state.items():
        if FLAGAI_DROPPED.search(key):
            continue
        for pattern, replacement in LAYER_RENAMES:
            key = pattern.sub(replacement, key)
        converted[key] = value
    return converted


def load_weights(path: Path) -> dict[str, Any]:
    """Load a state dict without ever executing pickled code."""
    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except FileNotFoundError as exc:
        raise SourceError(f"{path}: missing weights file") from exc
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SourceError(f"{path}: cannot read weights ({first}); the file is corrupt or not a checkpoint") from exc


def weight_file(folder: Path) -> Path:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return folder / name
    for name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (folder / name).is_file():
            return folder / name
    raise SourceError(f"{folder}: no weights (model.safetensors or pytorch_model.bin); the download is incomplete")


def load_sharded(index: Path) -> dict[str, Any]:
    try:
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (OSError, ValueError, KeyError) as exc:
        raise SourceError(f"{index}: unreadable shard index ({exc})") from exc
    state: dict[str, Any] = {}
    for shard in shards:
        state.update(load_weights(index.parent / shard))
    return state


# --- Loading ------------------------------------------------------------------------------------


@dataclass
class LoadedModel:
    model: Any  # transformers.AltCLIPModel, eval mode, eager attention, float32
    tokenizer_json: str
    image: ImageSpec
    text: TextSpec
    source: ResolvedSource
    notes: list[str] = field(default_factory=list)
    # Read once from the model: the export releases the model before it writes the manifest.
    embedding_dim: int = field(init=False)
    logit_scale: float = field(init=False)  # the multiplier, exp of the model's parameter

    def __post_init__(self) -> None:
        self.embedding_dim = int(self.model.config.projection_dim)
        self.logit_scale = float(self.model.logit_scale.detach().exp().item())


def load_model(source: ResolvedSource, *, max_length: int = TextSpec.max_length) -> LoadedModel:
    """Load any source into an eval-mode AltCLIPModel plus tokenizer and preprocessing settings."""
    from . import tokenizer as tok

    if source.kind == "random-init":
        model = build_random_model(source.variant, source.seed or 0)
        tokenizer_json = tok.placeholder_tokenizer_json()
        image = ImageSpec()
        notes = [f"random weights (seed {source.seed}) and a placeholder tokenizer: for trying the pipeline only"]
    else:
        if source.path is None:
            raise SourceError(f"{source.name}: no local folder to load ({source.kind} source not downloaded)")
        folder = source.path
        kind = detect_layout(folder) if source.kind == "hub" else source.kind
        model = load_flagai(folder) if kind == "flagai" else load_transformers(folder)
        tokenizer_json = tok.checkpoint_tokenizer_json(folder)
        image = image_spec_of(folder)
        notes = []
    vocab = int(model.config.text_config.vocab_size)
    text = TextSpec(
        max_length=max_length,
        model_max_length=int(model.config.text_config.max_position_embeddings) - 2,
        pad_id=int(model.config.text_config.pad_token_id),
        vocab_size=vocab,
    )
    tok.check_tokenizer(tokenizer_json, text, where=str(source.path or source.name))
    tokenizer_json = tok.configure_tokenizer(tokenizer_json, text)
    return LoadedModel(model=model, tokenizer_json=tokenizer_json, image=image, text=text, source=source, notes=notes)


def _finish(model: Any) -> Any:
    import torch

    model.config._attn_implementation = "eager"  # eager attention fuses in onnxruntime; SDPA does not
    for sub in (model.config.text_config, model.config.vision_config):
        sub._attn_implementation = "eager"
    model.to(torch.float32)
    model.eval()
    model.requires_grad_(False)
    return model


def load_transformers(folder: Path) -> Any:
    from transformers import AltCLIPConfig, AltCLIPModel

    path = weight_file(folder)
    try:
        config = AltCLIPConfig.from_pretrained(folder)
    except Exception as exc:
        raise SourceError(f"{folder / 'config.json'}: not a valid AltCLIP config ({exc})") from exc
    state = load_sharded(path) if path.name.endswith(".index.json") else load_weights(path)
    return _from_state(AltCLIPModel, config, convert_state_dict(state), path)


def load_flagai(folder: Path) -> Any:
    from transformers import AltCLIPConfig, AltCLIPModel

    path = weight_file(folder)
    config = AltCLIPConfig(**flagai_to_transformers_config(read_config(folder)))
    state = load_sharded(path) if path.name.endswith(".index.json") else load_weights(path)
    return _from_state(AltCLIPModel, config, convert_state_dict(state), path)


def _from_state(model_class: Any, config: Any, state: dict[str, Any], path: Path) -> Any:
    from transformers.initialization import no_init_weights

    with no_init_weights():  # every tensor comes from the file (checked below): skip the random init
        model = model_class(config)
    _load_strict(model, state, path)
    return _finish(model)


def _load_strict(model: Any, state: dict[str, Any], path: Path) -> None:
    """Every tensor the model needs must come from the file, in the right shape: no silent random init."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or wrong:
        what = []
        if missing:
            what.append(f"{len(missing)} tensors missing (e.g. {missing[0]})")
        if wrong:
            k = wrong[0]
            what.append(f"{len(wrong)} of the wrong shape (e.g. {k}: {tuple(state[k].shape)} in the file, "
                        f"{tuple(expected[k].shape)} from config.json)")
        raise SourceError(f"{path}: does not match its config.json: {'; '.join(what)}")
    if unexpected:
        log.warning("%s: ignoring %d unused tensors (e.g. %s)", path, len(unexpected), unexpected[0])
    model.load_state_dict({k: state[k] for k in expected}, strict=True)


def image_spec_of(folder: Path) -> ImageSpec:
    """Preprocessing settings from the checkpoint's preprocessor_config.json, else CLIP's defaults."""
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        return ImageSpec()
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
        size = cfg.get("size", 224)
        shortest = size.get("shortest_edge", 224) if isinstance(size, dict) else int(size)
        crop = cfg.get("crop_size", shortest)
        crop = crop.get("height", shortest) if isinstance(crop, dict) else int(crop)
        default = ImageSpec()
        return ImageSpec(
            size=int(crop),
            shortest_edge=int(shortest),
            resample=int(cfg.get("resample", 3)),
            rescale_factor=float(cfg.get("rescale_factor", default.rescale_factor)),
            mean=tuple(cfg.get("image_mean", default.mean)),
            std=tuple(cfg.get("image_std", default.std)),
        )
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise SourceError(f"{path}: unreadable preprocessing settings ({exc})") from exc


# --- Random initialisation ----------------------------------------------------------------------


def architecture(variant: str) -> dict[str, Any]:
    """AltCLIPConfig arguments for a published variant's exact architecture."""
    known = KNOWN_VARIANTS[variant]
    return {
        "text_config": dict(XLMR_LARGE, project_dim=known.project_dim),
        "vision_config": dict(VIT_L14, projection_dim=known.projection_dim),
        "projection_dim": known.projection_dim,
        # ln(100): the trained checkpoints' logit scale sits at CLIP's cap of 100.
        "logit_scale_init_value": 4.605170185988092,
    }


def build_random_model(variant: str, seed: int) -> Any:
    from transformers import AltCLIPConfig, AltCLIPModel
    from transformers.initialization import no_init_weights

    config = AltCLIPConfig(**architecture(variant))
    with no_init_weights():  # our own initialisation below replaces transformers' (slow, and input-blind)
        model = AltCLIPModel(config)
    init_input_sensitive(model, seed)
    return _finish(model)


def init_input_sensitive(model: Any, seed: int) -> None:
    """Deterministic random weights under which different inputs give clearly different embeddings.

    transformers' default initialisation makes every input of a small model embed to nearly the same
    vector, even unrelated sentences, which hides real bugs such as off-by-one token
    ids. Weights ~ N(0, 1/fan_in), LayerNorm weights ~ 1, embeddings ~ N(0, 1) keep inputs apart.
    The same seed always gives the same weights (the verifier rebuilds the reference from it).
    """
    import math

    import torch

    gen = torch.Generator().manual_seed(seed)
    logit_scale = float(model.config.logit_scale_init_value)
    with torch.no_grad():
        for name, param in model.named_parameters():
            shape = param.shape
            if name.endswith("logit_scale"):
                param.fill_(logit_scale)
            elif "LayerNorm" in name or "layer_norm" in name or "layrnorm" in name or "layernorm" in name or "pre_LN" in name:
                base = 1.0 if name.endswith("weight") else 0.0
                param.copy_(base + 0.1 * torch.randn(shape, generator=gen))
            elif name.endswith("bias"):
                param.copy_(0.02 * torch.randn(shape, generator=gen))
            elif "embedding" in name and param.dim() != 4:
                param.copy_(torch.randn(shape, generator=gen))
            else:
                fan_in = math.prod(shape[1:]) if param.dim() > 1 else shape[0]
                param.copy_(torch.randn(shape, generator=gen) / math.sqrt(fan_in))
