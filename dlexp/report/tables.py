"""The report table as text: Markdown, CSV (safe to open in a spreadsheet), LaTeX, JSON."""

from __future__ import annotations

import math
from typing import Any, Mapping

from dlexp.report.runs import ReportError

FORMATS = {"md": "md", "csv": "csv", "latex": "tex", "json": "json"}  # format -> file suffix
# a cell starting with one of these is run as a formula by Excel, LibreOffice and Google Sheets
# (OWASP "CSV injection"); tab and carriage return start one too in some of them
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def cell(v: Any) -> str:
    """One table cell for people: integers as such, other numbers to 4 significant digits, NaN empty."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return str(v)
    try:
        f = float(v)
    except (TypeError, ValueError):
        return " ".join(str(v).split())  # one line: a line break would end a Markdown row
    if math.isnan(f):
        return ""
    if math.isinf(f):
        return "inf" if f > 0 else "-inf"
    if f == int(f) and abs(f) < 1e6 and not isinstance(v, float):
        return str(int(f))
    return f"{f:.4g}"


def spreadsheet_safe(v: Any) -> Any:
    """Text that a spreadsheet would run as a formula, made plain text with a leading apostrophe.

    Numbers stay numbers (a negative number is data, not a formula); only text cells are escaped.
    """
    if isinstance(v, str) and v.startswith(FORMULA_START):
        return "'" + v
    return v


def to_csv(table) -> str:
    """CSV text with formula-like text cells escaped; text is quoted, so a CR in a cell stays in it."""
    import csv

    import pandas as pd

    safe = table.copy()
    safe.columns = [spreadsheet_safe(str(c)) for c in table.columns]
    for c in safe.columns:
        if not pd.api.types.is_numeric_dtype(safe[c]) and not pd.api.types.is_bool_dtype(safe[c]):
            safe[c] = safe[c].map(spreadsheet_safe)
    return safe.to_csv(index=False, quoting=csv.QUOTE_NONNUMERIC)


def to_markdown(table) -> str:
    cols = [cell(c) for c in table.columns]
    lines = ["| " + " | ".join(c.replace("|", "\\|") for c in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in table.itertuples(index=False):
        lines.append("| " + " | ".join(cell(v).replace("|", "\\|") for v in row) + " |")
    return "\n".join(lines) + "\n"


def _latex_escape(s: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("$", r"\$"), ("#", r"\#"),
                 ("_", r"\_"), ("{", r"\{"), ("}", r"\}"), ("~", r"\textasciitilde{}"), ("^", r"\^{}")):
        s = s.replace(a, b) if a != "\\" else s.replace(a, "\x00")
    return s.replace("\x00", r"\textbackslash{}")


def to_latex(table, caption: str = "") -> str:
    cols = list(table.columns)
    align = "".join("r" if table[c].dtype.kind in "iuf" else "l" for c in cols)
    lines = [r"\begin{table}[ht]", r"\centering", rf"\begin{{tabular}}{{{align}}}", r"\hline",
             " & ".join(_latex_escape(str(c)) for c in cols) + r" \\", r"\hline"]
    for row in table.itertuples(index=False):
        lines.append(" & ".join(_latex_escape(cell(v)) for v in row) + r" \\")
    lines += [r"\hline", r"\end{tabular}"]
    if caption:
        lines.append(rf"\caption{{{_latex_escape(caption)}}}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def _json_value(v: Any) -> Any:
    import numpy as np

    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None  # JSON has no NaN/inf; a miss in time to target shows in target_hits
    if isinstance(v, dict):
        return {k: _json_value(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_value(x) for x in v]
    return v


def to_json(table, meta: Mapping[str, Any]) -> str:
    import json

    rows = [{k: _json_value(v) for k, v in r.items()} for r in table.to_dict(orient="records")]
    return json.dumps({**{k: _json_value(v) for k, v in meta.items()}, "groups": rows}, indent=2, default=str) + "\n"


def format_table(table, fmt: str, meta: Mapping[str, Any]) -> str:
    """The report table as md, csv, latex or json text; md and json carry the answer and the notes."""
    if fmt == "csv":  # a CSV file says what its numbers are: the metric and when it was taken, on every row
        named = {k: meta[k] for k in ("metric", "at") if k in meta and k not in table.columns}
        return to_csv(table.assign(**named)[[*named, *table.columns]] if named else table)
    if fmt == "md":
        head = f"## {meta.get('metric', '')} at {meta.get('at', 'final')}\n\n"
        answer = "".join(f"**{a}**\n\n" for a in meta.get("answer", []))
        notes = "".join(f"- {n}\n" for n in meta.get("notes", []))
        return head + answer + to_markdown(table) + ("\n" + notes if notes else "")
    if fmt == "latex":
        return to_latex(table, caption=f"{meta.get('metric', '')} at {meta.get('at', 'final')}: mean, std and 95% CI per group")
    if fmt == "json":
        return to_json(table, meta)
    raise ReportError(f"--format: expected md, csv, latex or json, got {fmt!r}")
