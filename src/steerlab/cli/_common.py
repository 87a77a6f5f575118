"""What every ``steerlab`` command shares: the app, consoles, options, error handling and argument parsers.

Every command defaults ``--model`` to ``smollm2-135m`` and reports user errors as one line on stderr with
exit code 1 (no traceback).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from steerlab._models import DEFAULT_MODEL
from steerlab.errors import SteerlabError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Extract steering vectors, steer generation, compare.",
)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def _print_version(value: bool) -> None:
    if value:
        from steerlab._version import __version__

        out.print(f"steerlab {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(
        False, "--version", help="Print steerlab's version and exit.", callback=_print_version, is_eager=True
    ),
) -> None:
    """Extract steering vectors, steer generation, compare."""


F = TypeVar("F", bound=Callable[..., Any])

MODEL_OPT = typer.Option(DEFAULT_MODEL, "--model", help="Alias, .gguf file, model folder or hub id.")
DEVICE_OPT = typer.Option(None, "--device", help="cpu, cuda, cuda:1, mps (default: transformers' choice).")
DTYPE_OPT = typer.Option(None, "--dtype", help="float32, bfloat16, float16 or auto.")


def user_errors(fn: F) -> F:
    """Turn steerlab's errors into one clear line and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SteerlabError as error:
            err.print(f"[bold red]error:[/] {error}", highlight=False, markup=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def parse_ints(text: str, what: str) -> list[int]:
    """``"10,12"`` or ``"8-12"`` or ``"8-10,14"`` -> list of ints."""
    values: list[int] = []
    try:
        for part in (p.strip() for p in text.split(",") if p.strip()):
            if "-" in part[1:]:
                lo, hi = part.split("-", 1)
                values.extend(range(int(lo), int(hi) + 1))
            else:
                values.append(int(part))
    except ValueError:
        raise SteerlabError(f"{what} '{text}' is not a list of integers; write e.g. 10,12 or 8-12.") from None
    if not values:
        raise SteerlabError(f"{what} is empty; write e.g. 10,12 or 8-12.")
    return values


def parse_floats(text: str, what: str) -> list[float]:
    try:
        values = [float(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise SteerlabError(f"{what} '{text}' is not a list of numbers; write e.g. -0.15,0,0.15.") from None
    if not values:
        raise SteerlabError(f"{what} is empty; write e.g. -0.15,0,0.15.")
    return values


def read_lines(path: Path, what: str) -> list[str]:
    """The non-empty lines of a text file given to option ``what`` (one prompt or text per line), stripped."""
    if not path.is_file():
        raise SteerlabError(f"{what} file '{path}' does not exist; give a text file with one text per line.")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        raise SteerlabError(f"{what} file '{path}' has no non-empty lines; put one text per line.")
    return lines


def read_prompts(prompt: str | None, prompts: Path | None) -> list[str]:
    """``--prompt TEXT`` or ``--prompts FILE`` (one prompt per line), exactly one of them."""
    if (prompt is None) == (prompts is None):
        raise SteerlabError("give exactly one of --prompt TEXT or --prompts FILE.")
    if prompts is not None:
        return read_lines(prompts, "--prompts")
    if not (prompt or "").strip():
        raise SteerlabError("--prompt is empty.")
    return [prompt or ""]


COHERENCE_TEXTS_OPT = typer.Option(
    None,
    "--coherence-texts",
    help="Text file, one text per line, on which KL from the unsteered model is measured (default: steerlab's "
    "24 neutral texts).",
)


def write_table(result: Any, prefix: Path) -> list[Path]:
    """Write a result table as ``prefix``.csv and ``prefix``.json."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    return [result.to_csv(prefix.with_suffix(".csv")), result.to_json(prefix.with_suffix(".json"))]


def _load(model: str, device: str | None, dtype: str | None):
    from transformers.utils import logging as hf_logging

    from steerlab._models import load_model

    hf_logging.disable_progress_bar()
    with err.status(f"loading {model} ..."):
        return load_model(model, device=device, dtype=dtype)


def parse_alphas(text: str, mode: str) -> list:
    """``-0.15,0,0.15`` for most modes; ``lo:hi`` bands for clamp (an empty end is unbounded: ``:2``, ``-1:``)."""
    if mode != "clamp":
        return parse_floats(text, "--alphas")
    bands = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        lo, sep, hi = part.partition(":")
        try:
            if not sep:
                raise ValueError
            bands.append((float(lo) if lo.strip() else None, float(hi) if hi.strip() else None))
        except ValueError:
            raise SteerlabError(f"--alphas '{text}': mode clamp takes bands lo:hi, e.g. -2:2 or :3.") from None
    if not bands:
        raise SteerlabError("--alphas is empty; mode clamp takes bands lo:hi, e.g. -2:2.")
    return bands


def load_combined(specs: list[str]):
    """``--vector PATH[:WEIGHT]`` repeated -> the weighted sum of the vectors."""
    from steerlab._vector import SteeringVector

    total = None
    for spec in specs:
        path, weight = spec, 1.0
        head, sep, tail = spec.rpartition(":")
        if sep and head:
            try:
                path, weight = head, float(tail)
            except ValueError:
                path, weight = spec, 1.0  # a ':' inside the path itself
        vec = weight * SteeringVector.load(path)
        total = vec if total is None else total + vec
    if total is None:
        raise SteerlabError("give at least one --vector PATH[:WEIGHT].")
    return total


def alpha_label(alpha: Any) -> str:
    if alpha is None:
        return "unsteered"
    if isinstance(alpha, tuple):
        lo, hi = alpha
        return f"[{'-inf' if lo is None else f'{lo:g}'}, {'inf' if hi is None else f'{hi:g}'}]"
    return f"{alpha:+g}" + ("\n(unsteered)" if alpha == 0 else "")


def show_comparison(row: Any) -> None:
    table = Table(title=row.prompt, title_justify="left", show_lines=True, expand=True)
    table.add_column("alpha", justify="right", no_wrap=True)
    table.add_column("size", justify="right", no_wrap=True)  # the push, as a fraction of the residual norm
    table.add_column("nll", justify="right", no_wrap=True)
    table.add_column("text", ratio=1)
    for g in row.generations:
        table.add_row(alpha_label(g.alpha), "-" if g.size is None else f"{g.size:.2f}", f"{g.nll:.2f}", g.text)
    out.print(table)
