"""The seams between the halves, read from the source: which modules import which, who touches the Encoder's
insides. Standard library only (ast), so it runs in the torch-free environment too.

With tests/blocking.py's blocker (code run in a fresh interpreter where the export side cannot be imported,
tests/core/test_torch_free.py and others), this is how the tests prove the runtime torch-free: every import
statement of the runtime side, read here, and the paths that run, run there."""

from __future__ import annotations

import ast
from pathlib import Path

import altclip_onnx

from ..blocking import BLOCKED

PACKAGE = Path(altclip_onnx.__file__).resolve().parent
EXPORT_SIDE = ("altclip_onnx.export", "altclip_onnx.convert", *BLOCKED)
# Everything a user runs after export. The CLI is the boundary: its export, convert and verify --model
# commands import the export side inside themselves.
RUNTIME_SIDE = ("__init__", "hub", "bundle", "files", "precisions", "errors", "models", "runtime", "search", "serve",
                "fewshot", "distributed", "verification", "evaluation", "web")
CLI_BOUNDARY = ("model.py", "convert.py")  # export, convert, verify --model: the export side inside the command


def module_name(path: Path) -> str:
    parts = ["altclip_onnx", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> list[tuple[int, str]]:
    """(line, dotted name) of every import in the file, at module level or inside a function; relative ones
    resolved, and ``from X import y`` counted as X.y too (y may be a module)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join([*base, *([node.module] if node.module else [])])
            found.append((node.lineno, target))
            found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names]
    return found


def export_side_imports(path: Path) -> list[str]:
    return [f"{path.relative_to(PACKAGE)}:{line} imports {target}" for line, target in imported(path)
            if any(target == side or target.startswith(side + ".") for side in EXPORT_SIDE)]


def runtime_files() -> list[Path]:
    files = []
    for top in RUNTIME_SIDE:
        folder = PACKAGE / top
        files += sorted(folder.rglob("*.py")) if folder.is_dir() else [PACKAGE / f"{top}.py"]
    return files + [path for path in sorted((PACKAGE / "cli").glob("*.py")) if path.name not in CLI_BOUNDARY]


def test_the_runtime_side_imports_nothing_of_the_export_side() -> None:
    """Nor torch, transformers, sentencepiece or onnx: at module level or inside a function."""
    files = runtime_files()
    assert len(files) > 40 and all(f.is_file() for f in files)
    assert PACKAGE / "cli" / "evaluate.py" in files and PACKAGE / "cli" / "model.py" not in files
    assert [problem for path in files for problem in export_side_imports(path)] == []


def test_the_import_reader_sees_relative_and_late_imports() -> None:
    """What the test above relies on: cli/model.py imports the export side inside its commands, relatively."""
    problems = export_side_imports(PACKAGE / "cli" / "model.py")
    assert any("imports altclip_onnx.export.build" in p for p in problems), problems
    assert ("altclip_onnx.runtime.encoder.Encoder" in
            {target for _, target in imported(PACKAGE / "serve" / "engine.py")})


def test_only_the_encoder_touches_its_private_attributes() -> None:
    encoder = PACKAGE / "runtime" / "encoder.py"
    private = {node.attr for node in ast.walk(ast.parse(encoder.read_text(encoding="utf-8")))
               if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self"
               and node.attr.startswith("_") and not node.attr.startswith("__")}
    assert {"_sessions", "_tokenizer"} <= private
    roots = [PACKAGE, PACKAGE.parents[1] / "benchmarks"]
    touching = [f"{path}:{node.lineno}" for root in roots for path in sorted(root.rglob("*.py"))
                if path != encoder for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
                if (isinstance(node, ast.Attribute) and node.attr in private)
                or (isinstance(node, ast.Constant) and node.value in private)]  # getattr(encoder, "_sessions")
    assert touching == []


def constants(path: Path) -> list[tuple[int, object]]:
    return [(node.lineno, node.value) for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(node, ast.Constant)]


def test_tower_input_and_output_names_are_typed_once() -> None:
    from altclip_onnx.bundle import TOWER_INPUTS, TOWER_OUTPUTS

    names = {name for declared in (TOWER_INPUTS, TOWER_OUTPUTS) for tower in declared.values() for name in tower}
    typed = [f"{path.relative_to(PACKAGE)}:{line} {value!r}" for path in sorted(PACKAGE.rglob("*.py"))
             if path.name != "bundle.py" for line, value in constants(path) if value in names]
    assert typed == []


def test_auto_is_declared_once() -> None:
    from altclip_onnx.precisions import AUTO

    typed = [f"{path.relative_to(PACKAGE)}:{line}" for path in sorted(PACKAGE.rglob("*.py"))
             if path.name != "precisions.py" for line, value in constants(path) if value == AUTO]
    assert typed == []


# Settings whose default one module owns; everywhere else it is named, never typed as a number.
OWNED = {"batch_size", "workers", "max_length", "opset", "max_batch", "max_wait_ms", "max_pixels", "shard_rows"}


def is_number(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool)


def test_defaults_are_named_where_they_are_repeated() -> None:
    """Function signatures and command-line options name a default (IMAGE_BATCH_SIZE, ServeOptions.max_batch,
    ...); only its owner, a constant or an options dataclass's field, types the number."""
    typed = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):  # def f(..., batch_size: int = 8)
                args = node.args
                pairs = [*zip(args.args[len(args.args) - len(args.defaults):], args.defaults),
                         *zip(args.kwonlyargs, args.kw_defaults)]
                typed += [(path, default.lineno, arg.arg) for arg, default in pairs
                          if arg.arg in OWNED and is_number(default)]
            elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "option":  # click.option
                flags = {a.value.lstrip("-").replace("-", "_") for a in node.args if isinstance(a, ast.Constant)}
                typed += [(path, k.lineno, min(flags)) for k in node.keywords
                          if k.arg == "default" and is_number(k.value) and flags & (OWNED | {"max_body_mb"})]
    assert [f"{p.relative_to(PACKAGE)}:{line} {name}" for p, line, name in typed] == []


def test_the_serve_command_takes_its_defaults_from_serve_options() -> None:
    import click

    from altclip_onnx.cli import main
    from altclip_onnx.serve_options import ServeOptions

    options = {p.name: p.default for p in main.commands["serve"].params if isinstance(p, click.Option)}
    for name in ("max_batch", "max_wait_ms", "max_pixels", "workers"):
        assert options[name] == getattr(ServeOptions, name), name
    assert options["max_body_mb"] * 1024 * 1024 == ServeOptions.max_body_bytes
