"""The generated references are up to date and every public name is documented."""

import importlib.util
import inspect
from pathlib import Path

import steerlab

ROOT = Path(__file__).parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("make_reference", ROOT / "scripts" / "make_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_public_name_has_a_docstring_and_is_in_the_api_reference():
    api = (ROOT / "docs" / "api.md").read_text()
    for name in steerlab.__all__:
        obj = getattr(steerlab, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert inspect.getdoc(obj), f"{name} has no docstring"
            assert f"### `{name}`" in api, f"{name} is missing from docs/api.md"


def test_generated_references_are_current():
    script = load_script()
    assert (ROOT / "docs" / "api.md").read_text() == script.api_reference(), "run scripts/make_reference.py"
    assert (ROOT / "docs" / "cli.md").read_text() == script.cli_reference(), "run scripts/make_reference.py"
