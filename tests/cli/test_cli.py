"""The command line itself: one group, consistent options, exit codes, errors in one line, tables."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import altclip_onnx
from altclip_onnx.cli import main
from altclip_onnx.cli.app import display_width, table

COMMANDS = ["bench", "classify", "convert", "doctor", "embed", "embed-text", "evaluate classification",
            "evaluate retrieval", "export", "fewshot build", "index", "push", "search", "serve", "serve-static", "tune",
            "verify"]
GROUPS = ("evaluate", "fewshot")


def run(*args: object, env: dict | None = None, input: str | None = None):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(main, [str(a) for a in args], env=env, input=input, catch_exceptions=False)


def command(name: str) -> click.Command:
    found: click.Command = main
    for part in name.split():
        found = found.commands[part]  # type: ignore[attr-defined]
    return found


def test_version_and_help() -> None:
    for flag in ("-V", "--version"):
        result = run(flag)
        assert result.exit_code == 0 and altclip_onnx.__version__ in result.stdout
    assert "Exit codes: 0 done; 1 error; 2 usage error; 3 verification failed; 4 done" in " ".join(
        run("--help").stdout.split())
    for name in COMMANDS:
        result = run(*name.split(), "--help")
        assert result.exit_code == 0, name


def test_every_command_is_listed() -> None:
    listed = set(main.commands) | {f"{g} {c}" for g in GROUPS for c in main.commands[g].commands}  # type: ignore[attr-defined]
    assert listed - set(GROUPS) == set(COMMANDS)


def options_of(name: str) -> dict[str, click.Option]:
    return {p.name: p for p in command(name).params if isinstance(p, click.Option)}


def test_shared_options_behave_the_same_everywhere() -> None:
    for name in COMMANDS:
        options = options_of(name)
        if "threads" in options:  # one range: 0 (automatic) and up
            assert options["threads"].type.min == 0 and options["threads"].type.max is None, name
        if "provider" in options:  # one way to read ONNX_PROVIDER
            assert options["provider"].envvar == "ONNX_PROVIDER", name
        if "as_json" in options:  # --json is a flag everywhere
            assert options["as_json"].is_flag and options["as_json"].opts == ["--json"], name
        if "top" in options or "k" in options:
            opt = options.get("top") or options["k"]
            assert "-k" in opt.opts and "--top" in opt.opts, name
    # Commands that take several precisions accept the same comma-separated, repeatable syntax.
    for name in ("export", "verify", "bench"):
        option = options_of(name)["precisions"]
        assert option.multiple and option.metavar == "P[,P...]", name


@pytest.mark.parametrize("args", [
    ("embed",),  # no bundle
    ("classify", "b", "x.jpg"),  # no labels
    ("bench", "b", "--precision", "fp32,bf16"),
    ("search", "--db", "x"),  # neither text nor --image
    ("embed", "b", "x", "-o", "o.npy", "--threads", "-1"),
])
def test_usage_errors_exit_2(args: tuple[str, ...]) -> None:
    assert run(*args).exit_code == 2


def test_known_errors_are_one_line_and_exit_1(tmp_path: Path) -> None:
    result = run("embed", tmp_path / "no-bundle", tmp_path, "-o", tmp_path / "x.npy")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [f"error: {tmp_path / 'no-bundle'}: no such bundle folder; "
                                                  "export one with 'altclip-onnx export'"]


def test_unknown_output_extensions_are_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    """-o emb.csv used to write emb.csv.npy silently."""
    (tmp_path / "a.png").write_bytes(b"")
    result = run("embed", tiny_bundle, tmp_path / "a.png", "-o", tmp_path / "emb.csv")
    assert result.exit_code == 1 and "unknown output format '.csv'" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


def test_nothing_to_embed_is_an_error_naming_where_it_looked(tiny_bundle: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run("embed", tiny_bundle, empty, "-o", tmp_path / "out.npy")
    assert result.exit_code == 1 and f"no image files found under {empty}" in result.stderr
    assert not (tmp_path / "out.npy").exists() and not list(tmp_path.glob("out*"))
    texts = run("embed-text", tiny_bundle, "-", "-o", tmp_path / "t.npy", input="\n  \n")
    assert texts.exit_code == 1 and "no texts to embed" in texts.stderr


def test_tables_align_wide_characters() -> None:
    assert display_width("猫a") == 3
    lines = table(["name", "n"], [["猫猫", "1"], ["dog", "10"]], right=(1,)).splitlines()
    assert lines == ["name   n", "猫猫   1", "dog   10"]


def test_classify_table_aligns_cjk_and_combining_labels() -> None:
    """classify's table pads by the columns a label takes in a terminal: two for 猫, none for Hindi's virama."""
    import numpy as np

    from altclip_onnx.cli.embed import format_classification

    assert display_width("बिल्ली") == 5 and display_width("e\u0301") == 1  # virama, a decomposed accent
    results = [("a.jpg", np.array([0.5, 0.3, 0.2])), ("b.jpg", np.array([0.2, 0.1, 0.7]))]
    lines = format_classification(results, ["一只猫", "बिल्ली", "cat"], 2).splitlines()
    # the second column is 19 wide ("top 2 (probability)"); 一只猫 takes 6 of them, बिल्ली 5
    assert lines == ["image  top 2 (probability)",
                     "a.jpg  一只猫  50.0%" + " " * (19 - 13 + 2) + "बिल्ली  30.0%",
                     "b.jpg  cat  70.0%" + " " * (19 - 10 + 2) + "一只猫  20.0%"]


ROOT = Path(__file__).resolve().parents[2]


def cli_reference():  # type: ignore[no-untyped-def]
    """scripts/cli_reference.py, which writes docs/cli.md from click's own help."""
    spec = importlib.util.spec_from_file_location("cli_reference", ROOT / "scripts" / "cli_reference.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_cli_reference_page_is_what_help_says() -> None:
    """docs/cli.md is generated from --help; a changed option or help text without regenerating it fails here."""
    reference = cli_reference()
    page = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    assert page == reference.render(), "docs/cli.md is stale: run python scripts/cli_reference.py"
    for name in COMMANDS:  # every command has its section and its row in the table of options
        assert f"\n## altclip-onnx {name}\n" in page and f"[`{name}`](#" in page, name
        for option in reference.options(command(name)):
            assert f"`{option}`" in page, (name, option)


def exit_code_table() -> dict[str, list[int]]:
    text = (ROOT / "docs" / "errors.md").read_text(encoding="utf-8")
    block = text.split("<!-- exit-codes")[1].split("<!-- /exit-codes -->")[0]
    rows = {}
    for line in block.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = [int(c) for c in cells[1].split()]
    return rows


def test_exit_code_table_names_every_command() -> None:
    """docs/errors.md's table of exit codes per command lists every command, with the codes each must have."""
    rows = exit_code_table()
    assert set(rows) == set(COMMANDS)
    for name, codes in rows.items():
        assert codes[0] == 0 and (2 in codes or name == "doctor"), name
    for name in ("embed", "classify", "index", "evaluate classification"):  # these skip unreadable inputs and say so
        assert 4 in rows[name], name
    assert 3 in rows["export"] and 3 in rows["verify"]
