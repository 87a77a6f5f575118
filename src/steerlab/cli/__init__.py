"""The ``steerlab`` command line: a thin layer over the library.

Every command defaults ``--model`` to ``smollm2-135m`` and reports user errors as one line on stderr with
exit code 1 (no traceback). Commands register on :data:`app` when their module is imported, in the order
``steerlab --help`` lists them.
"""

from __future__ import annotations

from steerlab.cli._common import app

# isort: off
# Importing a command module registers its commands; this order is the order `steerlab --help` lists them in.
from steerlab.cli import vectors, conditions, serving, doctor, measure, recipes, understand  # noqa: F401, E402
# isort: on

__all__ = ["app", "main"]


def main() -> None:
    """Run the command line (the ``steerlab`` console script)."""
    app()
