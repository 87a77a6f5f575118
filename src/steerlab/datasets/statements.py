"""Labelled true/false statements (Geometry of Truth, RepE), the data of probes and PCA."""

from __future__ import annotations

from pathlib import Path

from steerlab.errors import DataError

__all__ = ["load_statements"]


def load_statements(path: str | Path, *, limit: int | None = None, seed: int = 0) -> tuple[list[str], list[int]]:
    """True/false statements from a CSV with columns ``statement`` and ``label`` (1 true, 0 false), as in
    Geometry of Truth and RepE's ``facts_true_false.csv``. With ``limit``, a seeded random subset of that size.

    Example:
        >>> texts, labels = load_statements("datasets/geometry-of-truth/cities.csv", limit=400)
    """
    import csv
    import random

    path = Path(path)
    if not path.is_file():
        raise DataError(f"statement file '{path}' does not exist.")
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or not {"statement", "label"} <= set(reader.fieldnames):
            raise DataError(f"{path}: expected CSV columns 'statement' and 'label'; found {reader.fieldnames}.")
        rows = list(reader)
    texts, labels = [], []
    for n, row in enumerate(rows, start=2):
        label = str(row["label"]).strip()
        if label not in ("0", "1") or not (row["statement"] or "").strip():
            raise DataError(f"{path}, line {n}: expected a non-empty statement and label 0 or 1, found {row}.")
        texts.append(row["statement"])
        labels.append(int(label))
    if not texts:
        raise DataError(f"{path} holds no statements.")
    if limit is not None and limit < len(texts):
        order = list(range(len(texts)))
        random.Random(seed).shuffle(order)
        keep = sorted(order[:limit])
        texts, labels = [texts[i] for i in keep], [labels[i] for i in keep]
    if len(set(labels)) < 2:
        raise DataError(f"{path}: all {len(labels)} statements have label {labels[0]}; a probe needs both classes.")
    return texts, labels
