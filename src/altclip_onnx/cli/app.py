"""The command group and what every subcommand shares: error handling, common options, tables.

This package is the only place that reads environment variables (MODEL, ONNX_PROVIDER) and
configures logging. Known errors become one line on stderr and the error's exit code (see
:mod:`altclip_onnx.errors`); Ctrl-C prints what was kept and exits 130; tracebacks are for bugs.
"""

from __future__ import annotations

import functools
import logging
import sys
import time
import unicodedata
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

from ..errors import EXIT_INTERRUPTED, EXIT_PARTIAL, AltclipOnnxError, InputError, MissingDependencyError
from ..precisions import AUTO, PRECISION_NAMES, parse_precisions
from ..runtime.pipeline import DECODE_WORKERS, IMAGE_BATCH_SIZE, TEXT_BATCH_SIZE
from ..runtime.providers import SHORT_NAMES

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

PROVIDER_ENV = "ONNX_PROVIDER"
NO_SELF_CHECK_ENV = "ALTCLIP_NO_SELF_CHECK"
AUTO_OR_PRECISIONS = [AUTO, *PRECISION_NAMES]


def friendly_errors(func: F) -> F:
    """Turn the project's own errors and Ctrl-C into one line and an exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except AltclipOnnxError as exc:
            report = getattr(exc, "report", None)
            if report is not None and hasattr(report, "format_table"):
                click.echo(report.format_table(), err=True)
            for problem in getattr(exc, "problems", [])[1:]:  # the first one is in the message
                click.echo(problem, err=True)
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt as exc:
            click.echo(str(exc) or "interrupted; nothing half-written was left behind", err=True)
            sys.exit(EXIT_INTERRUPTED)

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("--no-self-check", is_flag=True, envvar=NO_SELF_CHECK_ENV, show_envvar=True,
              help="Use a bundle variant on this machine and provider without checking it against the PyTorch "
                   "reference the bundle carries (the check runs once per machine and provider otherwise).")
@click.version_option(None, "-V", "--version", package_name="altclip-onnx")
@click.pass_context
def main(ctx: click.Context, verbose: int, no_self_check: bool) -> None:
    """Export AltCLIP (multilingual CLIP) to verified ONNX bundles and run them without PyTorch.

    Exit codes: 0 done; 1 error; 2 usage error; 3 verification failed; 4 done, but some inputs
    failed (listed on stderr); 130 interrupted. Any command that runs a bundle exits 3 when a variant
    fails its first-use check on this machine (see --no-self-check).
    """
    ctx.obj = {"self_check": not no_self_check}
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=max(level, logging.DEBUG), format="%(levelname)s %(name)s: %(message)s")
    # huggingface_hub prints its records with a handler of its own (level: HF_HUB_VERBOSITY) and also passes them
    # up to ours: every warning came twice. Its own handler alone.
    logging.getLogger("huggingface_hub").propagate = False


def require_export_extra(feature: str) -> None:
    """The export half needs torch, transformers and onnx: say how to get them, in one line."""
    import importlib.util

    def absent(module: str) -> bool:
        try:
            return importlib.util.find_spec(module) is None
        except (ImportError, ValueError):  # a broken or blocked install counts as missing
            return True

    missing = [m for m in ("torch", "transformers", "onnx", "sentencepiece") if absent(m)]
    if missing:
        raise MissingDependencyError(feature, "export", ", ".join(missing) + " missing")


def step_printer() -> Callable[[str], None]:
    """Steps of long work as they happen, with the time since the start, on stderr."""
    started = time.perf_counter()

    def show(step: str) -> None:
        click.echo(f"[{time.perf_counter() - started:7.1f}s] {step}", err=True)

    return show


# --- options shared by several commands ------------------------------------------------------------


def bundle_argument(func: F) -> F:
    """BUNDLE: a bundle folder or hf://OWNER/REPO[@REVISION] (kept as text: a path would fold the //)."""
    return click.argument("bundle", metavar="BUNDLE")(func)


def provider_option(func: F) -> F:
    return click.option("--provider", envvar=PROVIDER_ENV, default=None, show_envvar=True,
                        help=f"{', '.join(SHORT_NAMES)} or auto [default: auto].")(func)


def threads_option(func: F) -> F:
    return click.option("--threads", type=click.IntRange(0), default=None,
                        help="onnxruntime intra-op threads (0: one per physical core) [default: 0].")(func)


def precision_option(func: F) -> F:
    """One precision to run (commands that embed)."""
    return click.option("--precision", type=click.Choice(AUTO_OR_PRECISIONS), default=AUTO, show_default=True,
                        help="auto: int8 on CPU, fp16 on CUDA/TensorRT, when the bundle has them.")(func)


def precisions_option(default: str | None, help: str) -> Callable[[F], F]:
    """Several precisions (commands that write or compare variants): comma-separated and/or repeated."""

    def convert(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> tuple[str, ...]:
        try:
            return parse_precisions(value) if value else ()
        except AltclipOnnxError as exc:
            raise click.BadParameter(str(exc).removeprefix("--precision: ")) from exc

    return click.option("--precision", "precisions", multiple=True, metavar="P[,P...]", callback=convert,
                        default=(default,) if default else (), show_default=default is not None,
                        help=f"{help} Any of {', '.join(PRECISION_NAMES)}; comma-separated or repeated.")


def encoder_options(func: F) -> F:
    """--provider, --precision and --threads, shared by the commands that load an Encoder."""
    return provider_option(precision_option(threads_option(func)))


def batch_options(batch_size: int, workers: bool = True) -> Callable[[F], F]:
    def decorate(func: F) -> F:
        if workers:
            func = click.option("--workers", type=click.IntRange(0), default=DECODE_WORKERS, show_default=True,
                                help="Threads that decode images while the model runs (0: none).")(func)
        return click.option("--batch-size", type=click.IntRange(1), default=batch_size, show_default=True,
                            help="Inputs per model call.")(func)

    return decorate


#: --batch-size and --workers of the commands that embed images, and --batch-size of those that embed texts,
#: with the API's defaults.
image_batch_options = batch_options(IMAGE_BATCH_SIZE)
text_batch_options = batch_options(TEXT_BATCH_SIZE, workers=False)


def json_option(help: str) -> Callable[[F], F]:
    return click.option("--json", "as_json", is_flag=True, help=help)


def options_from_flags(cls: Callable[..., T], **values: Any) -> T:
    """The options object a command's flags map onto (it owns their defaults and checks them): what it
    refuses (its :class:`~altclip_onnx.errors.InputError`) is a usage error, exit 2, as click's own checks."""
    try:
        return cls(**values)
    except InputError as exc:
        raise click.UsageError(str(exc), click.get_current_context(silent=True)) from exc


def self_check() -> bool:
    """False when the user turned the first-use check off (altclip-onnx --no-self-check ...)."""
    context = click.get_current_context(silent=True)
    obj = context.find_root().obj if context is not None else None
    return bool(obj.get("self_check", True)) if isinstance(obj, dict) else True


def load_encoder(bundle: str, provider: str | None, precision: str, threads: int | None) -> Any:
    from ..runtime.encoder import Encoder

    return Encoder(bundle, provider=provider, precision=precision, threads=threads, self_check=self_check())


def line_source(value: str) -> Any:
    """A list file's path, or standard input for "-"."""
    return sys.stdin if value == "-" else value


def report_failures(failures: Sequence[Any]) -> None:
    """Every failed input on stderr, one line each, the same way for every command."""
    for failure in failures:
        click.echo(f"failed: {failure}", err=True)


def exit_partial_if(failures: Sequence[Any]) -> None:
    if failures:
        sys.exit(EXIT_PARTIAL)


# --- tables ----------------------------------------------------------------------------------------


def display_width(text: str) -> int:
    """Columns ``text`` takes in a terminal: East Asian wide and full-width characters take two, combining
    marks (Hindi's virama, a decomposed accent) and format characters (zero-width joiner) none."""
    return sum(0 if unicodedata.category(c) in ("Mn", "Me", "Cf")
               else 2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def table(header: Sequence[str], rows: Sequence[Sequence[str]], *, right: Sequence[int] = ()) -> str:
    """Columns padded to their widest cell (by display width), two spaces apart; ``right``: the
    indexes of right-aligned columns (numbers)."""
    widths = [max([display_width(str(r[i])) for r in rows] + [display_width(header[i])]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        out = []
        for i, cell in enumerate(cells):
            room = " " * (widths[i] - display_width(str(cell)))
            out.append(f"{room}{cell}" if i in right else f"{cell}{room}")
        return "  ".join(out).rstrip()

    return "\n".join([line(header), *(line(row) for row in rows)])


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"
