"""The HTML report: one self-contained page (no scripts, images as data URIs) that answers first.

Top of the page, above the fold on a laptop screen: the answer (which group is best, by how much,
how sure), then a short table of every group with its 95% CI and its comparison with the baseline.
Below: the notes, the figures, and the full table.
"""

from __future__ import annotations

import base64
import html
from typing import Any, Sequence

from dlexp.report.compare import num, pvalue
from dlexp.report.tables import cell

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:1.2em 2em;max-width:1200px;color:#1d1d1f}
h1{font-size:1.15em;font-weight:600;color:#555;margin:0 0 .6em}
.answer{background:#eef5ee;border-left:5px solid #2e7d32;padding:.7em 1em;margin:0 0 1em;font-size:1.08em;line-height:1.45}
.answer p{margin:.15em 0}.answer p:first-child{font-size:1.15em;font-weight:600}
table{border-collapse:collapse;font-size:.9em;margin:.3em 0 1em}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right;white-space:nowrap}td:first-child,th:first-child{text-align:left}
th{background:#f4f4f4}tr.best td{font-weight:600;background:#f6fbf6}
ul.notes{font-size:.85em;color:#444;padding-left:1.2em}
img{max-width:100%;margin:.4em 0 1.2em;display:block}h2{font-size:1em;margin:1.2em 0 .2em}
details{margin:1em 0}summary{cursor:pointer;color:#555}
"""


def glance(table, metric: str) -> tuple[list[str], list[list[str]]]:
    """The short table at the top: group, n, mean, 95% CI, and (with a baseline) the difference, its CI and p."""
    from dlexp.report.runs import lower_is_better

    t = table.sort_values("mean", ascending=lower_is_better(metric), kind="stable", na_position="last")
    head = ["group", "n", "mean", "95% CI"]
    has_target = "target_hits" in t.columns
    has_cmp = "diff" in t.columns
    if has_target:
        head += ["hits target", "epochs to target"]
    if has_cmp:
        head += ["vs baseline", "95% CI of difference", "p (Holm)"]
    rows = []
    for r in t.to_dict(orient="records"):
        row = [str(r["group"]), str(r["n"]) + (f" (+{r['failed']} not ok)" if r.get("failed") else ""),
               num(r["mean"]), f"[{num(r['ci_low'])}, {num(r['ci_high'])}]"]
        if has_target:
            row += ["-" if cell(r.get("target_n")) == "" else f"{cell(r['target_hits'])}/{cell(r['target_n'])}",
                    num(r.get("epochs_to_target"))]
        if has_cmp:
            base = r.get("baseline")
            if isinstance(base, str):
                row += [f"{num(r['diff'], sign=True)} vs {base}", f"[{num(r['diff_ci_low'], sign=True)}, {num(r['diff_ci_high'], sign=True)}]",
                        pvalue(r.get("p_t_holm"))]
            else:
                row += ["baseline" if r["group"] in set(t["baseline"].dropna()) else "", "", ""]
        rows.append(row)
    return head, rows


def html_page(title: str, answer: Sequence[str], table, notes: Sequence[str], images: Sequence[tuple[str, bytes]],
              *, metric: str | None = None, glance_table: tuple[list[str], list[list[str]]] | None = None) -> str:
    """One self-contained page: the answer, the short table, the notes, PNG images as data URIs, the full table."""
    e = html.escape
    parts = [
        "<!DOCTYPE html>", "<html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        "<link rel='icon' href='data:,'>",  # no favicon request: the page needs nothing beyond itself
        f"<title>{e(title)}</title>", f"<style>{STYLE}</style>", "</head><body>", f"<h1>{e(title)}</h1>",
    ]
    if answer:
        parts.append("<div class='answer' id='answer'>" + "".join(f"<p>{e(a)}</p>" for a in answer) + "</div>")
    if glance_table is None and metric is not None and "mean" in table.columns:
        glance_table = glance(table, metric)
    if glance_table is not None:
        head, rows = glance_table
        parts.append(_table(head, rows, first_row_class="best", table_id="glance"))
    if notes:
        parts.append("<ul class='notes'>" + "".join(f"<li>{e(n)}</li>" for n in notes) + "</ul>")
    for name, png in images:
        data = base64.b64encode(png).decode("ascii")
        parts.append(f"<h2>{e(name)}</h2><img alt='{e(name)}' src='data:image/png;base64,{data}'>")
    full = _table([str(c) for c in table.columns], [[cell(v) for v in row] for row in table.itertuples(index=False)])
    if glance_table is not None:
        parts.append(f"<details><summary>all columns ({len(table)} rows)</summary>{full}</details>")
    else:
        parts.append(full)
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _table(head: Sequence[str], rows: Sequence[Sequence[Any]], first_row_class: str = "", table_id: str = "") -> str:
    e = html.escape
    id_attr = f" id='{e(table_id)}'" if table_id else ""
    out = [f"<table{id_attr}><thead><tr>"
           + "".join(f"<th>{e(str(h))}</th>" for h in head) + "</tr></thead><tbody>"]
    for i, row in enumerate(rows):
        cls = f" class='{first_row_class}'" if i == 0 and first_row_class else ""
        out.append(f"<tr{cls}>" + "".join(f"<td>{e(str(v))}</td>" for v in row) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)
