"""One self-contained HTML page for result tables: summary, figures embedded as base64 PNG, and the records.

The page loads nothing from the network (no scripts, fonts or styles from elsewhere), so it can be mailed or
archived as one file.

Example:
    >>> write_report([sweep_table, probe_table], "report.html", title="refusal, SmolLM2")
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from steerlab.errors import DataError
from steerlab.evaluate.results import JSON_ONLY, ResultTable

__all__ = ["render_report", "write_report"]

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
img { max-width: 100%; border: 1px solid #eee; margin: .5em 0; }
table { border-collapse: collapse; font-size: .85em; margin: .5em 0; }
td, th { border: 1px solid #ddd; padding: .2em .5em; text-align: right; }
th { background: #f4f4f4; } .meta td { text-align: left; } details { margin: .5em 0; }
"""


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _rounded(value: Any) -> Any:
    """``value`` with every float inside it kept to 4 significant digits (a table shows 0.0123, not 0.01234567)."""
    if isinstance(value, float):
        return float(f"{value:.4g}")
    if isinstance(value, (list, tuple)):
        return [_rounded(v) for v in value]
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple, dict)):
        return html.escape(json.dumps(_rounded(value))[:80])
    return html.escape(str(value))


def _records_table(records: list[dict[str, Any]], limit: int = 300) -> str:
    columns: list[str] = []
    for rec in records:
        columns.extend(k for k in rec if k not in columns and k not in JSON_ONLY)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    rows = "".join(
        "<tr>" + "".join(f"<td>{_cell(rec.get(c, ''))}</td>" for c in columns) + "</tr>" for rec in records[:limit]
    )
    more = f"<p>{len(records) - limit} more records in the JSON/CSV file.</p>" if len(records) > limit else ""
    return f"<table><tr>{head}</tr>{rows}</table>{more}"


def _meta_table(meta: dict[str, Any]) -> str:
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{_cell(v)}</td></tr>" for k, v in meta.items())
    return f'<table class="meta">{rows}</table>'


def render_report(tables: Sequence[ResultTable], *, title: str = "steerlab report") -> str:
    """The HTML page as a string (see :func:`write_report`)."""
    from steerlab.evaluate.plots import figures_for

    if not tables:
        raise DataError("a report needs at least one result table.")
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]  # fmt: skip
    for table in tables:
        parts.append(f"<h2>{html.escape(table.kind)}</h2><p>{html.escape(table.kind_record.summary)}</p>")
        parts.append(_meta_table(table.meta))
        for name, fig in figures_for(table):
            parts.append(f"<h3>{html.escape(name)}</h3><img alt='{html.escape(name)}' "
                         f"src='data:image/png;base64,{_png(fig)}'>")  # fmt: skip
        parts.append(
            f"<details><summary>{len(table.records)} records</summary>{_records_table(table.records)}</details>"
        )
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(
    tables: ResultTable | Sequence[ResultTable], path: str | Path, *, title: str = "steerlab report"
) -> Path:
    """Write one self-contained HTML page for one or several result tables; returns the path.

    Example:
        >>> write_report(ResultTable.load("sweep.json"), "sweep.html")
    """
    if isinstance(tables, ResultTable):
        tables = [tables]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(list(tables), title=title), encoding="utf-8")
    return path
