"""The seams between the halves, read from the source: which modules import which, who touches the Encoder's
insides. Standard library only (ast), so it runs in the torch-free environment too."""

from __future__ import annotations

import ast
from pathlib import Path

import altclip_onnx

PACKAGE = Path(altclip_onnx.__file__).resolve().parent
EXPORT_SIDE = ("altclip_onnx.export", "altclip_onnx.convert")
# Everything a user runs after export. The CLI is the boundary: its export, convert and verify --model
# commands import the export side inside themselves.
RUNTIME_SIDE = ("__init__", "hub", "bundle", "files", "precisions", "errors", "models", "runtime", "search", "serve",
                "fewshot", "distributed", "verification", "evaluation")


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
    return files


def test_the_runtime_side_imports_nothing_of_export_or_convert() -> None:
    files = runtime_files()
    assert len(files) > 40 and all(f.is_file() for f in files)
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
    touching = [f"{path}:{node.lineno} .{node.attr}" for root in roots for path in sorted(root.rglob("*.py"))
                if path != encoder for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
                if isinstance(node, ast.Attribute) and node.attr in private]
    assert touching == []
