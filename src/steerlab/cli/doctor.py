"""``steerlab doctor``: check that steering behaves on this installation."""

from __future__ import annotations

import typer
from rich.table import Table

from steerlab.cli._common import (
    app,
    err,
    out,
)


@app.command()
def doctor() -> None:
    """Check that steering behaves on this installation (tiny random models, a few seconds); exit 1 if not.

    Prints the versions in use, then each check: add / ablate / clamp, positions prompt / generated / k with and
    without a KV cache, padded and not, and per-row steering. Paste the output into bug reports.
    """
    from rich.markup import escape

    from steerlab.doctor import run_checks, versions

    table = Table(show_header=False, box=None)
    for name, version in versions().items():
        table.add_row(name, version)
    out.print(table)
    with err.status("checking steering on tiny random models ..."):
        checks = run_checks()
    for check in checks:
        mark = "[green]ok  [/]" if check.ok else "[bold red]FAIL[/]"
        out.print(f"{mark} {escape(check.name)}", highlight=False)
        if not check.ok:
            out.print(f"     {check.detail}", highlight=False, markup=False)
    failed = [check for check in checks if not check.ok]
    if failed:
        err.print(
            f"[bold red]{len(failed)} of {len(checks)} checks failed:[/] steering is not reliable with these versions. "
            "Install the tested versions (pip install -r requirements.lock in a steerlab checkout) and report this "
            "output at the project's issue tracker.",
            highlight=False,
        )
        raise typer.Exit(1)
    out.print(f"all {len(checks)} checks passed.")
