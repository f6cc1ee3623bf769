"""The two towers as ONNX graphs: one declaration per tower drives tracing, naming and checking.

Export uses the TorchScript exporter (``dynamo=False``) with eager attention: measured here, that
graph lets onnxruntime's transformer optimizer fuse Attention, SkipLayerNormalization and BiasGelu,
while a dynamo-exported graph fused neither attention nor skip-LayerNorm.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..bundle import DEFAULT_OPSET, TEXTUAL, TOWER_INPUTS, TOWER_OUTPUTS, VISUAL
from ..errors import ExportError

log = logging.getLogger(__name__)

# Above this many bytes of weights a graph cannot be one protobuf (2 GiB limit): weights go to
# model.onnx.data beside it. Kept well below the limit to leave room for the graph itself.
EXTERNAL_DATA_THRESHOLD = 1 << 30


@dataclass(frozen=True)
class TowerSpec:
    """Names and dynamic axes of one tower's graph: the bundle contract, in exporter terms."""

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    dynamic_axes: dict[str, dict[int, str]]


TOWER_SPECS = {
    VISUAL: TowerSpec(
        VISUAL,
        TOWER_INPUTS[VISUAL],
        TOWER_OUTPUTS[VISUAL],
        {name: {0: "batch"} for name in TOWER_INPUTS[VISUAL] + TOWER_OUTPUTS[VISUAL]},
    ),
    TEXTUAL: TowerSpec(
        TEXTUAL,
        TOWER_INPUTS[TEXTUAL],
        TOWER_OUTPUTS[TEXTUAL],
        {
            **{name: {0: "batch", 1: "sequence"} for name in TOWER_INPUTS[TEXTUAL]},
            **{name: {0: "batch"} for name in TOWER_OUTPUTS[TEXTUAL]},
        },
    ),
}


def tower_module(model: Any, tower: str) -> Any:
    """A torch module computing one tower's outputs exactly as AltCLIPModel.get_*_features does."""
    import torch

    def normalized(embeds: torch.Tensor) -> torch.Tensor:
        # Same epsilon as torch.nn.functional.normalize: a zero vector stays zero instead of NaN.
        return embeds / torch.linalg.vector_norm(embeds, dim=-1, keepdim=True).clamp_min(1e-12)

    class VisualTower(torch.nn.Module):
        """The vision model's own steps, except that its last layer computes the class token alone.

        Only the class token of the last layer's output is pooled, and in that layer no token's output
        depends on another's except through keys and values. So the last layer's query, attention output,
        MLP and LayerNorms run on one row instead of every patch's, while keys and values still come from
        every row: the same numbers, less work. No runtime's optimizer removes the dead rows by itself,
        since they die only at the final slice.
        """

        def __init__(self) -> None:
            super().__init__()
            self.vision_model = model.vision_model
            self.visual_projection = model.visual_projection

        def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            vision = self.vision_model
            # The last layer's input, through the model's own forward (its signature changed within
            # transformers 5); the exporter drops the full last layer, whose outputs nothing reads.
            hidden = vision(pixel_values=pixel_values, output_hidden_states=True).hidden_states[-2]
            pooled = vision.post_layernorm(class_token_of_layer(vision.encoder.layers[-1], hidden))
            embeds = self.visual_projection(pooled)
            return embeds, normalized(embeds)

    class TextualTower(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.text_model = model.text_model
            self.text_projection = model.text_projection

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            projected = self.text_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            embeds = self.text_projection(projected[:, 0, :])
            return embeds, normalized(embeds)

    module = VisualTower() if tower == VISUAL else TextualTower()
    return module.eval()


def class_token_of_layer(layer: Any, hidden: Any) -> Any:
    """A CLIP encoder layer's output for the first row of ``hidden`` (no mask), computing that row alone.

    The steps are the layer's own modules and transformers' own eager attention, so they follow the
    checkpoint's configuration (heads, scale, activation, LayerNorm epsilon)."""
    from transformers.models.altclip.modeling_altclip import eager_attention_forward

    attention = layer.self_attn
    normed = layer.layer_norm1(hidden)
    batch = hidden.shape[0]

    def heads(states: Any) -> Any:  # (batch, rows, dim) -> (batch, heads, rows, head_dim)
        return states.view(batch, -1, attention.num_heads, attention.head_dim).transpose(1, 2)

    # The row axis stays (one row long) so every Linear exports as the MatMul the int8 pass quantizes,
    # not as a 2-D Gemm it would leave in float.
    queries = heads(attention.q_proj(normed[:, :1]))
    keys = heads(attention.k_proj(normed))
    values = heads(attention.v_proj(normed))
    attended, _ = eager_attention_forward(attention, queries, keys, values, None, scaling=attention.scale)
    token = hidden[:, :1] + attention.out_proj(attended.reshape(batch, 1, -1))
    return (token + layer.mlp(layer.layer_norm2(token)))[:, 0]


def dummy_inputs(model: Any, tower: str) -> tuple[Any, ...]:
    """Trace inputs. The text batch is padded so that masking is traced as a computation, not skipped."""
    import torch

    if tower == VISUAL:
        size = int(model.config.vision_config.image_size)
        return (torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0)),)
    ids = torch.tensor([[0, 10, 11, 12, 13, 2], [0, 14, 15, 2, 1, 1]], dtype=torch.long)
    mask = (ids != int(model.config.text_config.pad_token_id)).long()
    return ids, mask


def export_tower(model: Any, tower: str, destination: Path, *, opset: int = DEFAULT_OPSET) -> list[Path]:
    """Export one tower to ``destination`` (a model.onnx path). Returns the files written (graph first).

    The exporter mutates modules it traces (seen here: the same in-memory model gave different text
    embeddings after a TorchScript export), so reference outputs must be computed before this call or
    from a freshly loaded model.
    """
    import onnx
    import torch

    spec = TOWER_SPECS[tower]
    module = tower_module(model, tower)
    args = dummy_inputs(model, tower)
    weight_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
    destination.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="altclip-export-", dir=destination.parent) as tmp:
        raw = Path(tmp) / "raw.onnx"
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tracer warnings about Python control flow on shapes
                torch.onnx.export(
                    module,
                    args,
                    str(raw),
                    dynamo=False,
                    opset_version=opset,
                    input_names=list(spec.inputs),
                    output_names=list(spec.outputs),
                    dynamic_axes=spec.dynamic_axes,
                    do_constant_folding=True,
                )
        except Exception as exc:
            raise ExportError(f"exporting the {tower} tower failed: {type(exc).__name__}: {exc}") from exc
        # Re-save: the exporter scatters >2 GB models over one file per tensor; the bundle keeps either
        # one self-contained graph or one graph plus one model.onnx.data.
        proto = onnx.load(str(raw), load_external_data=True)
        return save_model(proto, destination, external=weight_bytes > EXTERNAL_DATA_THRESHOLD)


def save_model(proto: Any, destination: Path, *, external: bool) -> list[Path]:
    """Save a graph, with its weights in ``<name>.data`` beside it when ``external``."""
    import onnx

    data = destination.with_name(destination.name + ".data")
    destination.parent.mkdir(parents=True, exist_ok=True)
    for stale in (destination, data):
        if stale.exists():
            stale.unlink()
    if external:
        onnx.save_model(
            proto,
            str(destination),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=data.name,  # relative: the bundle stays movable
            size_threshold=1024,
        )
        return [destination, data]
    onnx.save_model(proto, str(destination))
    return [destination]


def check_signature(path: Path, tower: str) -> list[str]:
    """Problems with a saved graph's names, types and dynamic axes (empty when it honours the contract)."""
    import onnx

    spec = TOWER_SPECS[tower]
    graph = onnx.load(str(path), load_external_data=False).graph
    problems = []
    for kind, values, names in (("input", graph.input, spec.inputs), ("output", graph.output, spec.outputs)):
        got = [v.name for v in values]
        if got != list(names):
            problems.append(f"{path}: {kind}s are {got}, expected {list(names)}")
            continue
        for value in values:
            dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
            for axis, axis_name in spec.dynamic_axes.get(value.name, {}).items():
                if dims[axis] != axis_name:
                    problems.append(f"{path}: {value.name} axis {axis} is {dims[axis]!r}, expected dynamic {axis_name!r}")
    return problems

