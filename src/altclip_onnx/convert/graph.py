"""Edits of a tower's graph at its boundary, so a client can feed it: never inside the model.

Every edit touches only the graph's inputs, outputs and where its weights are stored; the nodes in
between, whatever they are (fused com.microsoft ops, any int8 scheme, float16), are carried as they
are. The weights are never loaded: a graph with external weights is read without them, its tensors'
``location`` entries are rewritten, and the weight files are copied byte for byte under their new
names (see :func:`save_edited`). Needs the ``onnx`` package (the ``[convert]`` extra).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BundleError

log = logging.getLogger(__name__)

CAST_SUFFIX = "_as_int64"


@dataclass(frozen=True)
class GraphEdits:
    """What a client needs changed at a graph's boundary.

    ``rename_inputs``: old name -> new name. ``int32_inputs``: inputs (by their new name) the client feeds
    as int32; each gets a Cast to int64 inside the graph, so the model itself is unchanged.
    ``outputs``: the outputs to keep, in order, as (old name, new name); empty keeps all as they are.
    """

    rename_inputs: Mapping[str, str] = field(default_factory=dict)
    int32_inputs: tuple[str, ...] = ()
    outputs: tuple[tuple[str, str], ...] = ()

    def describe(self) -> list[str]:
        steps = [f"{old} -> {new}" for old, new in self.rename_inputs.items()]
        if self.int32_inputs:
            steps.append(f"{', '.join(self.int32_inputs)} int32 (Cast inside)")
        if self.outputs:
            steps.append("output " + ", ".join(old if old == new else f"{old} as {new}" for old, new in self.outputs))
        return steps

    def output_name(self, original: str) -> str | None:
        """What an original output is called after the edit (None: dropped)."""
        if not self.outputs:
            return original
        return dict(self.outputs).get(original)


def _subgraphs(graph: Any) -> Iterator[Any]:
    import onnx

    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield attr.g
            elif attr.type == onnx.AttributeProto.GRAPHS:
                yield from attr.graphs


def _rename_uses(graph: Any, old: str, new: str, *, skip: Any = None) -> None:
    """Every node input named ``old`` (subgraphs included, which see outer names) reads ``new``."""
    for node in graph.node:
        if node is skip:
            continue
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
    for sub in _subgraphs(graph):
        _rename_uses(sub, old, new)


def _all_names(graph: Any) -> set[str]:
    names = {v.name for v in (*graph.input, *graph.output, *graph.value_info, *graph.initializer)}
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
    return names


def _external_tensors(graph: Any) -> Iterator[Any]:
    """Every tensor of the graph (subgraphs included) whose data lives in an external file."""
    import onnx

    def tensors(g: Any) -> Iterator[Any]:
        yield from g.initializer
        for sparse in g.sparse_initializer:
            yield sparse.values
            yield sparse.indices
        for node in g.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    yield attr.t
                elif attr.type == onnx.AttributeProto.TENSORS:
                    yield from attr.tensors
                elif attr.type == onnx.AttributeProto.SPARSE_TENSOR:
                    yield attr.sparse_tensor.values
                    yield attr.sparse_tensor.indices
        for sub in _subgraphs(g):
            yield from tensors(sub)

    for tensor in tensors(graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            yield tensor


def external_files(model: Any) -> list[str]:
    """The external weight files a graph reads, in order of first use (relative to the graph)."""
    files: dict[str, None] = {}
    for tensor in _external_tensors(model.graph):
        for entry in tensor.external_data:
            if entry.key == "location":
                files.setdefault(entry.value, None)
    return list(files)


def apply_edits(model: Any, edits: GraphEdits, where: str) -> None:
    """Apply ``edits`` to a ModelProto in place. ``where`` names the graph in errors."""
    import onnx

    graph = model.graph
    inputs = {v.name: v for v in graph.input}
    for old, new in edits.rename_inputs.items():
        if old not in inputs:
            raise BundleError(f"{where}: has no input {old!r} (it has {', '.join(inputs)}); re-export the bundle")
        if old == new:
            continue
        if new in _all_names(graph):
            raise BundleError(f"{where}: cannot rename input {old!r} to {new!r}: that name is taken")
        inputs[old].name = new
        _rename_uses(graph, old, new)
    inputs = {v.name: v for v in graph.input}
    casts = 0
    for name in edits.int32_inputs:
        value = inputs.get(name)
        if value is None:
            raise BundleError(f"{where}: has no input {name!r} to feed as int32")
        tensor_type = value.type.tensor_type
        if tensor_type.elem_type == onnx.TensorProto.INT32:
            continue
        if tensor_type.elem_type != onnx.TensorProto.INT64:
            raise BundleError(f"{where}: input {name!r} is not int64, so it cannot be cast from int32")
        inner = name + CAST_SUFFIX
        cast = onnx.helper.make_node("Cast", [name], [inner], to=onnx.TensorProto.INT64, name=f"{name}_int32_to_int64")
        _rename_uses(graph, name, inner)
        graph.node.insert(casts, cast)  # first, in the order of the inputs
        casts += 1
        tensor_type.elem_type = onnx.TensorProto.INT32
    if edits.outputs:
        outputs = {v.name: v for v in graph.output}
        kept = []
        for old, new in edits.outputs:
            if old not in outputs:
                raise BundleError(f"{where}: has no output {old!r} (it has {', '.join(outputs)}); re-export the bundle")
            value = onnx.ValueInfoProto()
            value.CopyFrom(outputs[old])
            if new != old:
                if new in _all_names(graph):
                    raise BundleError(f"{where}: cannot rename output {old!r} to {new!r}: that name is taken")
                for node in graph.node:
                    for i, name in enumerate(node.output):
                        if name == old:
                            node.output[i] = new
                _rename_uses(graph, old, new)
                value.name = new
            kept.append(value)
        del graph.output[:]
        graph.output.extend(kept)


def relocate_external_data(model: Any, names: Mapping[str, str]) -> None:
    """Point every external tensor stored in file ``old`` at file ``names[old]`` (same offsets)."""
    for tensor in _external_tensors(model.graph):
        for entry in tensor.external_data:
            if entry.key == "location" and entry.value in names:
                entry.value = names[entry.value]


@dataclass(frozen=True)
class EditedGraph:
    graph: Path
    weights: tuple[Path, ...]  # external weight files written beside it, in the order the graph reads them

    @property
    def files(self) -> list[Path]:
        return [self.graph, *self.weights]


def save_edited(
    source: Path,
    destination: Path,
    edits: GraphEdits,
    weight_names: Sequence[str] | None = None,
) -> EditedGraph:
    """Write ``source`` with ``edits`` applied to ``destination``; copy its external weight files beside it.

    ``weight_names``: the file names the external weights get, in the order the graph first reads them
    (a client may expect its own names, e.g. ``text_model.onnx_data``); by default each keeps its name.
    The weights are copied byte for byte, never loaded into memory.
    """
    import onnx

    try:
        model = onnx.load(str(source), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and others for a damaged file
        raise BundleError(f"{source}: not a readable ONNX graph ({exc}); re-export the bundle") from exc
    apply_edits(model, edits, str(source))
    files = external_files(model)
    names = list(weight_names) if weight_names is not None else files
    if len(names) < len(files):
        raise BundleError(f"{source}: reads {len(files)} external weight files, {len(names)} names given")
    mapping = dict(zip(files, names))
    relocate_external_data(model, mapping)
    destination.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for old, new in mapping.items():
        source_file = source.parent / old
        if not source_file.is_file():
            raise BundleError(f"{source}: its external weights file {source_file} is missing; re-export or "
                              "re-download the bundle")
        target = destination.parent / new
        shutil.copyfile(source_file, target)
        written.append(target)
    onnx.save_model(model, str(destination))
    log.debug("%s -> %s (%s)", source, destination, "; ".join(edits.describe()) or "unchanged")
    return EditedGraph(destination, tuple(written))
