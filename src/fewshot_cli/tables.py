"""``fewshot compare --format md|csv|latex|json``: the rows of :mod:`.compare` as text.

- ``md`` and ``latex``: one table per protocol, named by a line above it (md: in bold;
  latex: ``%`` comment lines, then a booktabs ``tabular``). One line per group; per
  reported step, the primary metric (accuracy % for classification, else the loss) as
  ``mean ± std`` across seeds and the mean of the runs' 95% CI half-widths.
- ``csv``: long form, one line per group, protocol, step and metric, with a header; the
  protocol in columns of its own.
- ``json``: the csv's lines as a list of objects (``runs`` a list, plus ``settings``:
  the group's distinguishing settings).

Accuracy is in percent everywhere (metric ``accuracy_pct``); a standard deviation that
is undefined (one run) is empty (csv), null (json) or a dash.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from .compare import Row, Stat, by_protocol

DASH = "–"
TITLES = {"loss": "loss", "accuracy_pct": "accuracy %"}
#: The csv's columns (and each json record's keys, with ``settings``).
FIELDS = ("group", "algorithm", "runs", "n", "step", "metric", "mean", "std", "ci95_mean",
          "shots", "ways", "queries", "tasks", "eval_seed", "split", "query_batch",
          "loss_function", "protocol", "iterations_mean", "s_per_it")
LEGEND = ("cells: mean ± std across seeds (n runs); CI: mean of the runs' own 95% CI "
          "half-widths over test tasks")


def number(x: float | None, digits: int = 4, dash: str = DASH) -> str:
    return dash if x is None else f"{x:.{digits}g}"


def mean_std(stat: Stat, dash: str = DASH, pm: str = "±") -> str:
    """``0.8123 ± 0.031``; the std is a dash for one run, the whole cell for none."""
    if stat.mean is None:
        return dash
    return f"{number(stat.mean)} {pm} {number(stat.std, 2, dash)}"


def primary(rows: list[Row]) -> str:
    """The metric a table shows: accuracy when every row is classification, else loss."""
    return "accuracy_pct" if all(r.classification for r in rows) else "loss"


def step_headers(rows: list[Row]) -> list[str]:
    """Two headers per reported step: the metric's and its mean CI's."""
    metric = TITLES[primary(rows)]
    out = []
    for s in rows[0].protocol.steps:
        out += [f"{metric} after {s} step{'s' if s != 1 else ''}", f"95% CI ({s})"]
    return out


def step_cells(row: Row, metric: str, dash: str = DASH, pm: str = "±") -> list[str]:
    out = []
    for s in row.protocol.steps:
        st = row.stat(s, metric)
        out += [mean_std(st, dash, pm), number(st.ci95, 2, dash)]
    return out


# ------------------------------------------------------------------------------ md
def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown(rows: list[Row]) -> str:
    """GitHub pipe tables, one per protocol, each under a bold line naming it."""
    parts = []
    for table in by_protocol(rows):
        head = ["group", "algorithm", "n", *step_headers(table)]
        lines = [f"**protocol: {_md_cell(table[0].protocol.caption())}** ({LEGEND})", "",
                 "| " + " | ".join(head) + " |",
                 "|" + "|".join(["---", "---"] + ["--:"] * (len(head) - 2)) + "|"]
        metric = primary(table)
        for r in table:
            cells = [r.label, r.group.algorithm, str(r.n), *step_cells(r, metric)]
            lines.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


# ------------------------------------------------------------------------------ latex
_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
          "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
          "^": r"\textasciicircum{}", "±": r"$\pm$", "–": "--"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX.get(c, c) for c in text)


def latex(rows: list[Row]) -> str:
    """booktabs tabulars, one per protocol, each after comment lines naming it."""
    parts = []
    for table in by_protocol(rows):
        head = ["group", "algorithm", "$n$", *map(latex_escape, step_headers(table))]
        metric = primary(table)
        lines = [f"% protocol: {table[0].protocol.caption()}", f"% {LEGEND}",
                 r"\begin{tabular}{ll" + "r" * (len(head) - 2) + "}", r"\toprule",
                 " & ".join(head) + r" \\", r"\midrule"]
        for r in table:
            cells = [latex_escape(r.label), latex_escape(r.group.algorithm), str(r.n),
                     *(latex_escape(c) for c in step_cells(r, metric))]
            lines.append(" & ".join(cells) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}"]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


# ------------------------------------------------------------------------------ csv, json
def records(rows: list[Row]) -> list[dict[str, Any]]:
    """One record per row, reported step and metric (see the module docstring)."""
    out = []
    for r in rows:
        p = r.protocol
        its = r.iterations
        common = {"group": r.label, "algorithm": r.group.algorithm,
                  "runs": [e.name for e in r.entries], "shots": p.shots, "ways": p.ways,
                  "queries": p.queries, "tasks": p.tasks, "eval_seed": p.seed,
                  "split": p.split, "query_batch": p.query_batch, "loss_function": p.loss,
                  "protocol": p.text,
                  "iterations_mean": (its[0] if len(set(its)) == 1 else sum(its) / len(its))
                  if its else None,
                  "s_per_it": r.seconds_per_iteration}
        for s in p.steps:
            for m in r.metrics:
                st = r.stat(s, m)
                out.append({**common, "n": st.n, "step": s, "metric": m, "mean": st.mean,
                            "std": st.std, "ci95_mean": st.ci95,
                            "settings": r.group.settings})
    return out


def csv_text(rows: list[Row]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for rec in records(rows):
        writer.writerow({k: ";".join(v) if k == "runs" else ("" if v is None else v)
                         for k, v in rec.items()})
    return buf.getvalue()


def json_text(rows: list[Row]) -> str:
    return json.dumps([{k: rec[k] for k in (*FIELDS, "settings")} for rec in records(rows)],
                      indent=2, allow_nan=False) + "\n"


RENDERERS = {"md": markdown, "csv": csv_text, "latex": latex, "json": json_text}
