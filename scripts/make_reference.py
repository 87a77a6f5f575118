"""Generate docs/cli.md (from the CLI's own help) and docs/api.md (from the public names' signatures and
docstrings). `tests/test_docs.py` fails when either is out of date.

    .venv/bin/python scripts/make_reference.py
"""

from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

API_MODULES = [
    # The core, then each public subpackage with its submodules (a name already listed is not repeated).
    "steerlab",
    "steerlab.errors",
    "steerlab.types",
    "steerlab.engines",
    "steerlab.engines.transformers",
    "steerlab.datasets",
    "steerlab.evaluate",
    "steerlab.evaluate.comparison",
    "steerlab.evaluate.metrics",
    "steerlab.evaluate.sweeps",
    "steerlab.evaluate.baselines",
    "steerlab.evaluate.results",
    "steerlab.evaluate.probes",
    "steerlab.evaluate.structure",
    "steerlab.evaluate.patching",
    "steerlab.evaluate.circuits",
    "steerlab.evaluate.sae",
    "steerlab.evaluate.breakdown_point",
    "steerlab.evaluate.judges",
    "steerlab.evaluate.plots",
    "steerlab.evaluate.report",
    "steerlab.optimize",
    "steerlab.finetune",
    "steerlab.bake",
    "steerlab.recipes",
    "steerlab.io",
    "steerlab.io.gguf",
    "steerlab.io.hub",
    "steerlab.io.llamacpp",
    "steerlab.arch",
    "steerlab.doctor",
    "steerlab.serve",
    "steerlab.vllm",
]


def cli_reference() -> str:
    import typer
    from typer.testing import CliRunner

    from steerlab.cli import app

    runner = CliRunner()
    group = typer.main.get_command(app)
    parts = [
        "# Command-line reference",
        "",
        "Generated from `steerlab --help` by `scripts/make_reference.py`; do not edit by hand.",
        "",
    ]
    names: list[list[str]] = [[]]
    for name, command in getattr(group, "commands", {}).items():
        names.append([name])
        names += [[name, sub] for sub in getattr(command, "commands", {})]  # a group's commands: `steerlab sae train`
    for words in names:
        name = " ".join(words)
        args = [*words, "--help"]
        result = runner.invoke(app, args, prog_name="steerlab", env={"COLUMNS": "100", "TERM": "dumb", "NO_COLOR": "1"})
        text = result.output
        text = "\n".join(line.rstrip() for line in re.sub(r"\x1b\[[0-9;]*m", "", text).strip("\n").splitlines())
        parts += [f"## `steerlab {name}`" if name else "## `steerlab`", "", "```", text, "```", ""]
    return "\n".join(parts)


def api_reference() -> str:
    import importlib

    parts = [
        "# Python API reference",
        "",
        "Generated from the docstrings by `scripts/make_reference.py`; do not edit "
        "by hand. Every name is importable from the module it is listed under.",
        "",
    ]
    seen: set[int] = set()
    for module_name in API_MODULES:
        module = importlib.import_module(module_name)
        entries = []
        for name in module.__all__:
            obj = getattr(module, name)
            if id(obj) in seen or name.startswith("__"):
                continue
            seen.add(id(obj))
            entries.append((name, obj))
        if not entries:
            continue
        parts += [f"## `{module_name}`", ""]
        doc = inspect.getdoc(module)
        if doc:
            parts += [doc.split("\n\n")[0], ""]
        for name, obj in entries:
            if inspect.isclass(obj) or inspect.isfunction(obj):
                try:
                    signature = str(inspect.signature(obj))
                except (TypeError, ValueError):
                    signature = ""
                kind = "class" if inspect.isclass(obj) else "def"
                parts += [f"### `{name}`", "", "```python", f"{kind} {name}{signature}", "```", ""]
                parts += [inspect.getdoc(obj) or "(no docstring)", ""]
                if inspect.isclass(obj):
                    for member, value in sorted(vars(obj).items()):
                        if member.startswith("_") or not callable(getattr(obj, member, None)):
                            continue
                        func = value.__func__ if isinstance(value, (classmethod, staticmethod)) else value
                        member_doc = inspect.getdoc(func)
                        if member_doc:
                            parts += [
                                f"- **`{name}.{member}{inspect.signature(func)}`**: "
                                + member_doc.split("\n\n")[0].replace("\n", " "),
                                "",
                            ]
            else:  # constants: a stable description (no memory addresses)
                shown = f"keys: {', '.join(map(str, obj))}" if isinstance(obj, dict) else repr(obj)
                parts += [f"### `{name}`", "", f"`{re.sub(r' at 0x[0-9a-f]+', '', shown)}`", ""]
    return "\n".join(parts)


def main() -> None:
    check = "--check" in sys.argv
    stale = []
    for path, text in ((ROOT / "docs" / "cli.md", cli_reference()), (ROOT / "docs" / "api.md", api_reference())):
        if check:
            if not path.is_file() or path.read_text() != text:
                stale.append(path.name)
        else:
            path.write_text(text)
    if stale:
        sys.exit(f"out of date: {stale}; run .venv/bin/python scripts/make_reference.py")


if __name__ == "__main__":
    main()
