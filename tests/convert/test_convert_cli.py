"""altclip-onnx convert: written atomically, checked, refusing what it cannot do in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from altclip_onnx import ExportError
from altclip_onnx.cli import main
from altclip_onnx.convert import convert_bundle, run as convert_run
from altclip_onnx.errors import install_command


def run(*args: object):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def error_line(result) -> str:  # type: ignore[no-untyped-def]
    lines = [line for line in result.stderr.splitlines() if not line.startswith("[")]  # progress lines start with [
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_convert_writes_and_checks_every_graph(tiny_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "tjs"
    result = run("convert", tiny_bundle, "--to", "transformers.js", "-o", out)
    assert result.exit_code == 0, result.stderr
    table = result.stdout.splitlines()
    assert table[0].split()[:3] == ["graph", "tower", "precision"]
    assert len(table) == 1 + 6 + 1 and all(line.split()[-1] == "yes" for line in table[1:7])
    assert f"wrote {out} (transformers.js layout, 10 files)" in table[-1]
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "onnx", "preprocessor_config.json",
                                                     "tokenizer.json", "tokenizer_config.json"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_json_report(tiny_bundle: Path, tmp_path: Path) -> None:
    result = run("convert", tiny_bundle, "--to", "immich", "-o", tmp_path / "immich", "--precision", "int8", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["client"] == "immich" and len(report["checks"]) == 2
    assert all(check["ok"] and check["min_cosine"] >= 0.99999 and check["precision"] == "int8"
               for check in report["checks"])
    assert "visual/preprocess_cfg.json" in report["files"]


def test_non_empty_output_is_refused_without_overwrite(tiny_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = run("convert", tiny_bundle, "--to", "immich", "-o", out)
    assert result.exit_code == 1
    assert error_line(result) == f"error: {out}: exists and is not empty; pass --overwrite to replace it or choose another -o"
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert run("convert", tiny_bundle, "--to", "immich", "-o", out, "--overwrite").exit_code == 0
    assert (out / "visual" / "model.onnx").is_file() and not (out / "keep.txt").exists()


def test_usage_and_input_errors_are_one_line(tiny_bundle: Path, tmp_path: Path) -> None:
    assert run("convert", tiny_bundle, "--to", "tfjs", "-o", tmp_path / "x").exit_code == 2
    assert run("convert", tiny_bundle, "--to", "immich").exit_code == 2  # -o is required
    result = run("convert", tiny_bundle, "--to", "immich", "-o", tmp_path / "x", "--precision", "int8,fp16")
    assert result.exit_code == 1
    assert error_line(result) == "error: immich loads one model.onnx per tower: give one --precision (fp32, int8 or fp16)"
    result = run("convert", tmp_path / "nothing", "--to", "immich", "-o", tmp_path / "y")
    assert result.exit_code == 1 and "no such bundle folder" in error_line(result)
    result = run("convert", tiny_bundle, "--to", "immich", "-o", tiny_bundle / "immich")
    assert result.exit_code == 1 and "is the bundle or inside it" in error_line(result)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_a_corrupt_bundle_file_is_named_and_nothing_is_written(tiny_bundle: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    (bundle / ".verified.json").unlink(missing_ok=True)
    graph = bundle / "visual" / "model.onnx"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))
    result = run("convert", bundle, "--to", "immich", "-o", tmp_path / "out")
    assert result.exit_code == 1
    assert error_line(result) == (f"error: {graph}: sha256 differs from the manifest (corrupt or modified); "
                                  "re-export or re-download the bundle")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_a_failed_check_leaves_nothing(tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = convert_run.check_graph

    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        check = real(*args, **kwargs)
        return convert_run.GraphCheck(check.path, check.tower, check.precision, check.edits, 0.5, 1.0)

    monkeypatch.setattr(convert_run, "check_graph", broken)
    with pytest.raises(ExportError, match=r"textual/model.onnx: min cosine 0.5000000 .* nothing was written"):
        convert_bundle(tiny_bundle, tmp_path / "out", "immich")
    assert list(tmp_path.iterdir()) == []


def test_without_onnx_says_which_extra(tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnx" else real(name, *a))
    result = run("convert", tiny_bundle, "--to", "immich", "-o", tmp_path / "out")
    assert result.exit_code == 1
    assert error_line(result) == ("error: altclip-onnx convert needs the [convert] extra (onnx missing): "
                                  + install_command("convert"))
