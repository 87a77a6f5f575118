"""A partial results file: the finished cells of a long run, written as they finish, so an interrupted run keeps
them and the same run started again resumes from them.

The file is JSON lines. The first is a header naming the run: ``{"steerlab_partial": 1, "kind": "sweep",
"run": <sha256 of the identity>, "identity": {part: value or digest}}``; each further line is one finished cell,
``{"cell": [...], "records": [...]}``. A file whose header names another run is refused, never mixed with this
one: a resumed table must equal an uninterrupted run's. JSON writes floats with ``repr``, so they read back equal.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from steerlab.errors import SteeringError

FORMAT = 1
"""Version of the file's layout, in its header."""


def digest(*parts: Any) -> str:
    """A sha256 of tensors (dtype, shape and bytes), strings and JSON values, in order: an identity for big inputs
    (a vector's directions, a token batch) that a header can hold."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, torch.Tensor):
            t = part.detach().cpu().contiguous()
            h.update(f"tensor {t.dtype} {tuple(t.shape)}\n".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())  # uint8 view: any dtype, bfloat16 included
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode() + b"\n")
    return h.hexdigest()


class PartialResults:
    """The cells a run already finished (read from ``path``) and the writer of the next ones.

    Opening creates the file with its header, or reads an existing one: a header for another run (another
    ``kind`` or ``identity``) raises :class:`~steerlab.SteeringError`; a last line cut off mid-write (the run was
    killed while appending) is dropped from the file, so that cell runs again.

    Example:
        >>> store = PartialResults("runs/sweep.partial.jsonl", "sweep", {"layers": [8, 12], "vector": digest(t)})
        >>> for cell in cells:
        ...     if cell not in store.done:
        ...         store.add(cell, measure(cell))
    """

    def __init__(self, path: str | os.PathLike, kind: str, identity: dict[str, Any]):
        self.path = Path(path)
        self.kind = kind
        self.identity = json.loads(json.dumps(identity))  # as it reads back: tuples become lists
        self.run = digest(kind, self.identity)
        self.done: dict[tuple, list[dict[str, Any]]] = {}
        if self.path.exists() and self.path.stat().st_size > 0:
            self._read()
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            header = {"steerlab_partial": FORMAT, "kind": kind, "run": self.run, "identity": self.identity}
            self.path.write_text(json.dumps(header) + "\n", encoding="utf-8")

    def _refuse(self, found: str) -> SteeringError:
        return SteeringError(
            f"the partial results file '{self.path}' is not from this {self.kind}: expected a header for run "
            f"{self.run[:12]}, found {found}. Its cells would mix two runs. Delete the file to start over, or give "
            "this run another partial results path (partial= or --partial)."
        )

    def _read(self) -> None:
        data = self.path.read_bytes()
        *complete, tail = data.split(b"\n")  # tail: "" after a final newline, else a line cut off mid-write
        try:
            header = json.loads(complete[0]) if complete else None
        except ValueError:  # not JSON, or not even text
            header = None
        if not isinstance(header, dict) or "steerlab_partial" not in header:
            raise self._refuse("a file that is not a steerlab partial results file (no header line)")
        if header.get("kind") != self.kind or header.get("run") != self.run:
            raise self._refuse(self._differences(header))
        for number, line in enumerate(complete[1:], 2):
            try:
                entry = json.loads(line)
                self.done[tuple(entry["cell"])] = entry["records"]
            except (ValueError, KeyError, TypeError):
                raise SteeringError(
                    f"line {number} of the partial results file '{self.path}' is not a finished cell (expected "
                    '{"cell": [...], "records": [...]}, found a damaged line). Delete the file to start over.'
                ) from None
        if tail:
            os.truncate(self.path, len(data) - len(tail))  # the next cell appends on a line of its own

    def _differences(self, header: dict[str, Any]) -> str:
        """What the file's header says, in the terms of this run: which parts of the identity differ."""
        if header.get("kind") != self.kind:
            return f"a header for a {header.get('kind')!r} run"
        theirs = header.get("identity") or {}
        parts = [
            f"{name} (file: {_short(theirs.get(name))}, this run: {_short(value)})"
            for name, value in self.identity.items()
            if theirs.get(name) != value
        ]
        return f"run {str(header.get('run'))[:12]}, which differs in " + ("; ".join(parts) or "its format")

    def add(self, cell: Sequence[Any], records: list[dict[str, Any]]) -> None:
        """Append a finished cell's records, one line, flushed (the file is closed) before the next cell starts: a
        killed run keeps every cell before the one it was on."""
        line = json.dumps({"cell": list(cell), "records": records})
        with self.path.open("a", encoding="utf-8") as f:
            f.write(line + "\n")
        self.done[tuple(cell)] = records


def _short(value: Any) -> str:
    """A header value for an error message: a digest's first 12 digits, anything else as JSON (cut at 60)."""
    if isinstance(value, str) and len(value) == 64:
        return value[:12]
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."
