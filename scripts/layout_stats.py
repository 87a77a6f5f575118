"""Print the size of steerlab's public surface and its import graph (the figures behind issue 12's layout work).

    PYTHONPATH=src .venv/bin/python scripts/layout_stats.py

Public modules are those with no ``_``-prefixed part in their dotted name; their ``__all__`` lists are counted,
and the objects they name counted once each. The import graph comes from grimp (import-linter's engine): modules,
direct import edges, and module pairs that import each other directly or through others (a cycle).
"""

from __future__ import annotations

import importlib
import pkgutil

import grimp

import steerlab


def surface() -> None:
    names = [steerlab.__name__] + [info.name for info in pkgutil.walk_packages(steerlab.__path__, "steerlab.")]
    public = [name for name in names if not any(part.startswith("_") for part in name.split("."))]
    listed, objects, modules = 0, set(), 0
    for name in public:
        exported = getattr(importlib.import_module(name), "__all__", None)
        if exported:
            modules += 1
            listed += len(exported)
            objects |= {id(getattr(importlib.import_module(name), item)) for item in exported}
    print(f"top-level names: {len(steerlab.__all__)}")  # noqa: T201
    print(f"public modules with __all__: {modules}; names listed: {listed}; distinct objects: {len(objects)}")  # noqa: T201


def graph() -> None:
    built = grimp.build_graph("steerlab", cache_dir=None)
    modules = sorted(built.modules)
    edges = sum(len(built.find_modules_directly_imported_by(m)) for m in modules)
    cycles = {
        tuple(sorted((m, n)))
        for m in modules
        for n in built.find_modules_directly_imported_by(m)
        if n != m and built.chain_exists(importer=n, imported=m)
    }
    print(f"modules: {len(modules)}; import edges: {edges}; module pairs in a cycle: {len(cycles)}")  # noqa: T201
    for pair in sorted(cycles):
        print("  cycle:", " <-> ".join(pair))  # noqa: T201


if __name__ == "__main__":
    surface()
    graph()
