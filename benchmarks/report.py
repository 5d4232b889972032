"""The paper's Tables 1 to 4 from a run's saved job results, with significance tests and figures.

    python -m benchmarks tables --run results/tcga_brca/<run> [--paper] [--diff]

Reads ``<run>/jobs/*.json`` (one result per job; nothing is trained) and writes::

    <run>/tables/table{1..4}.{md,tex,csv}   markdown, LaTeX (booktabs), long-form CSV of the values used
    <run>/tables/table{1..4}_diff.{md,tex}  reproduced minus paper (with --diff)
    <run>/tables/index.html                 self-contained page: tables, tests, figures (base64 PNG)
    <run>/stats.csv                         every pairwise test (MoMKD vs each other arm)
    <run>/figures/{roc,cd_diagram,auc_strip}.{png,pdf}

The tables (paper = Guo et al., arXiv 2602.21395, published values in ``results/paper/``):

* Table 1: methods x {HER2, PR, ODX} x {AUC, ACC, F1} on the cross-validation test folds.
* Table 2: the same fold models scored on the external cohort (task ODX).
* Table 3: MoMKD ablation on HER2 AUC (variants wsi_only, no_omics_align, no_wsi_align, no_recon, full).
* Table 4: fixed vs momentum memory AUC on HER2, PR, ODX and the external cohort, plus the EMA
  memory (an extension of this suite) as an extra column.

Cells are mean +- std (sample std, ddof 1) over every fold x seed in %, one decimal; "–" marks a
missing cell. Best in bold, second underlined (ranked on the displayed one-decimal value, so ties
share a mark). A job is found by (method, variant, task, fold, seed), never by its grid; MoMKD's
``default`` variant is its ``full`` variant. Significance: MoMKD (full) against each other arm per
task and metric, Holm-adjusted within each (table, task, split, metric, test) family:
``†`` the corrected resampled t-test over folds x seeds (Nadeau & Bengio 2003),
``‡`` the DeLong test on pooled out-of-fold predictions (AUC only; a slide's probability is the mean
over seeds, and over the fold models for the external cohort). For the external cohort the t-test's
n_test/n_train term uses each job's cross-validation sizes (a heuristic: there the test set is the
same for every fold model and only the training sets overlap).
"""
from __future__ import annotations

import base64
import datetime as _dt
import html as _html
import json
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from . import stats as st
from .jobs import canonical_variant  # noqa: F401  (re-exported: report.canonical_variant)

PAPER_DIR = Path(__file__).resolve().parents[1] / "results" / "paper"
DASH = "–"
ALPHA = 0.05
DAGGER_T, DAGGER_D = "†", "‡"

#: Tables 1 and 2 group their rows under these headings (registry families), when two or more are present
FAMILY_HEADINGS = {"floor": "Pooling floor (no attention)", "mil": "Slide-only MIL",
                   "kd": "Distillation from omics", "ours": "Ours"}
TASKS = ("her2", "pr", "odx")
TASK_NAMES = {"her2": "HER2", "pr": "PR", "odx": "ODX"}
METRICS = ("auc", "acc", "f1")
METRIC_NAMES = {"auc": "AUC", "acc": "ACC", "f1": "F1", "bacc": "BACC", "auprc": "AUPRC"}
CONTROL = ("momkd", "full")
EXTERNAL = ("odx", "external")           # Table 2 / Table 4's in-house row: task, split

# Table 3 rows: variant, label (markdown/HTML), label (LaTeX), active components (paper, Table 3).
ABLATION = (
    ("wsi_only", "Baseline", "Baseline", "WSI only"),
    ("no_omics_align", "MoMKD (α_omics = 0)", r"MoMKD ($\alpha_{\mathrm{omics}}=0$)",
     "WSI + Omics Recon + WSI Alignment"),
    ("no_wsi_align", "MoMKD (α_wsi = 0)", r"MoMKD ($\alpha_{\mathrm{wsi}}=0$)",
     "WSI + Omics Recon + Omics Alignment"),
    ("no_recon", "MoMKD (w/o Recon)", "MoMKD (w/o Recon)", "WSI + Joint Alignment (WSI & Omics)"),
    ("full", "MoMKD (Full)", "MoMKD (Full)", "WSI + Omics Recon + Joint Alignment"),
)
# Table 4 columns (variant, label) and rows (task, split, label).
MEMORY_COLS = (("fixed_memory", "Fixed memory"), ("full", "Momentum memory"),
               ("ema_memory", "EMA memory (ext.)"))
MEMORY_ROWS = (("her2", "test", "HER2"), ("pr", "test", "PR"), ("odx", "test", "ODX"),
               ("odx", "external", "External (ODX)"))

_JOB_KEY = ["method", "variant", "task", "fold", "seed"]
METRIC_COLUMNS = ["method", "variant", "task", "metric", "split", "fold", "seed", "value",
                  "n_train", "n_test"]
PRED_COLUMNS = ["method", "variant", "task", "split", "fold", "seed", "slide_id", "case_id", "y", "p"]
STATS_COLUMNS = ["table", "task", "split", "metric", "control", "other", "test", "n", "control_mean",
                 "other_mean", "diff", "statistic", "p", "p_holm", "significant", "note"]


def method_name(key: str) -> str:
    """The method's display name (``MethodSpec.display``; the key for unregistered ones)."""
    from benchmarks import registry

    return registry.display_name(key)


def method_family(key: str) -> str:
    from benchmarks import registry

    spec = registry.METHODS.get(key)
    return spec.family if spec is not None else "other"




# ------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------
def load_results(run_dir: str | Path, provenance: dict[str, Any] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read the run's planned jobs (``<run_dir>/plan.json``, benchmarks/jobs.py) into two long DataFrames.

    metrics: [method, variant, task, metric, split, fold, seed, value, n_train, n_test], value a
      fraction in [0, 1]; one row per job x split x metric (``n_train``/``n_test`` are the job's,
      needed by the corrected t-test).
    predictions: [method, variant, task, split, fold, seed, slide_id, case_id, y, p].
    Only the jobs the run planned are read: other files in ``jobs/`` (another run's settings) are
    never mixed in. A planned job that failed, is missing or unreadable is left out of the frames,
    named in a warning and listed in ``provenance["problems"]``.

    ``provenance`` (a dict, filled in place): ``recipes`` {recipe: number of jobs}, ``recipe_summary``
    {method: one line}, ``tuned`` {method: the ``--params`` file}, ``coverage`` {(method, variant,
    task): (finished, planned)}, ``problems`` [PlannedJob]. A plan whose jobs were trained with
    different recipes is refused: one table never mixes them.
    """
    from benchmarks.jobs import load_planned

    planned = load_planned(Path(run_dir))
    prov: dict[str, Any] = provenance if provenance is not None else {}
    coverage: dict[tuple[str, str, str], list[int]] = {}
    problems = []
    mrows, prows = [], []
    for pj in planned:
        e = pj.entry
        cov = coverage.setdefault((e["method"], e["variant"], e["task"]), [0, 0])
        cov[1] += 1
        if pj.data is None:
            problems.append(pj)
            continue
        d = pj.data
        try:
            rows = _job_rows(e, d)
        except (KeyError, TypeError, ValueError) as err:
            pj.problem, pj.detail = "unreadable", f"bad metric or prediction ({type(err).__name__}: {err})"
            problems.append(pj)
            continue
        cov[0] += 1
        mrows += rows[0]
        prows += rows[1]
        job = d.get("job") or {}
        rec = job.get("recipe") or "shared"
        prov.setdefault("recipes", {})[rec] = prov.get("recipes", {}).get(rec, 0) + 1
        if job.get("train"):
            prov.setdefault("recipe_summary", {})[e["method"]] = _recipe_line(job["train"])
        if job.get("params_source"):
            prov.setdefault("tuned", {})[e["method"]] = job["params_source"]
        env = d.get("env") or {}
        commit = env.get("git_commit") or "unknown"
        code = f"momkd-bench {env.get('package') or '?'} @ {commit[:10]}{'-dirty' if commit.endswith('-dirty') else ''}"
        prov.setdefault("code", {})[code] = prov.get("code", {}).get(code, 0) + 1
        prov.setdefault("folds", set()).add(e["fold"])
        prov.setdefault("seeds", set()).add(e["seed"])
    for pj in problems:
        if pj.problem != "failed":
            warnings.warn(f"{pj.path}: planned job {pj.label} is {pj.problem} ({pj.detail}); left out of the tables",
                          stacklevel=2)
    prov["coverage"] = {k: tuple(v) for k, v in coverage.items()}
    prov["problems"] = problems
    if len(prov.get("recipes", {})) > 1:
        raise ValueError(f"{run_dir}: jobs trained with different recipes {prov['recipes']}; a table "
                         "never mixes them. Keep one recipe per run folder (run --recipe ... --out DIR).")
    metrics = pd.DataFrame(mrows, columns=METRIC_COLUMNS)
    preds = pd.DataFrame(prows, columns=PRED_COLUMNS)
    for df in (metrics, preds):
        df["fold"] = df["fold"].astype(int)
        df["seed"] = df["seed"].astype(int)
    return metrics, preds


def _job_rows(entry: dict[str, Any], d: dict[str, Any]) -> tuple[list[dict], list[dict]]:
    """Metric and prediction rows of one finished job; a non-numeric value raises (named by the caller)."""
    ident = {k: entry[k] for k in _JOB_KEY}
    n_train, n_test = d.get("n_train"), d.get("n_test")
    mrows, prows = [], []
    for split, ms in (d.get("metrics") or {}).items():
        for metric, v in (ms or {}).items():
            if v is None:
                continue
            mrows.append({**ident, "metric": metric, "split": split, "value": float(v),
                          "n_train": np.nan if n_train is None else float(n_train),
                          "n_test": np.nan if n_test is None else float(n_test)})
    for split, plist in (d.get("predictions") or {}).items():
        for p in plist or []:
            prows.append({**ident, "split": split, "slide_id": str(p["slide_id"]),
                          "case_id": str(p.get("case_id", p["slide_id"])), "y": int(p["y"]), "p": float(p["p"])})
    return mrows, prows


def _recipe_line(train: dict[str, Any]) -> str:
    from momkd.recipe import Recipe

    try:
        return Recipe.from_dict(train).summary()
    except (KeyError, TypeError, ValueError):
        return str(train.get("name", "?"))


def annotate_provenance(tables: Sequence["Table"], provenance: dict[str, Any]) -> None:
    """Say in every table how its rows were trained: the recipe, and which rows used tuned
    hyper-parameters (their label gets ``(tuned)``)."""
    recipes = provenance.get("recipes", {})
    tuned = provenance.get("tuned", {})
    summary = provenance.get("recipe_summary", {})
    if not recipes:
        return
    (name,) = recipes
    if name == "shared":
        line = "Recipe: shared (every method: " + (next(iter(summary.values())).split(": ", 1)[-1]
                                                  if summary else "the suite's protocol") + ")."
    else:
        line = (f"Recipe: {name} (each method's own: "
                + "; ".join(f"{method_name(m)} {summary[m].split(': ', 1)[-1]}" for m in _method_order(summary))
                + ").")
    for t in tables:
        t.notes.insert(0, line)
        marked = False
        for r in t.rows:
            if r.kind == "ours" and r.key and r.key[0] in tuned:
                r.labels[0] += " (tuned)"
                marked = True
        if marked:
            t.notes.append("(tuned): hyper-parameters from " + ", ".join(
                sorted({f"{tuned[m]}" for m in tuned})) + " (`tune` on validation parts), not the defaults.")


def add_ci(tables: Sequence["Table"], level: float = 0.95) -> None:
    """A t-interval of each cell's mean over its fold x seed values (folds of one seed are not
    independent: read it as a guide, the marks carry the tests)."""
    from scipy import stats as sps

    for t in tables:
        for r in t.rows:
            if r.kind != "ours":
                continue
            for c in r.cells:
                if c.n > 1 and np.isfinite(c.std) and c.kind == "value":
                    h = sps.t.ppf(0.5 + level / 2, c.n - 1) * c.std / np.sqrt(c.n)
                    c.ci = (c.mean - h, c.mean + h)
        t.notes.append(f"[a, b]: {100 * level:.0f}% t-interval of the mean over folds x seeds.")


def source_line(run: Path, provenance: dict[str, Any]) -> str:
    """Where a table's numbers come from: the data, the folds x seeds, the protocol and the code."""
    summary = {}
    if (Path(run) / "summary.json").is_file():
        try:
            summary = json.loads((Path(run) / "summary.json").read_text())
        except (OSError, ValueError):
            summary = {}
    c = summary.get("cohort") or {}
    if c.get("kind") == "simulated":
        data = f"simulated {c.get('name', '?')} cohort (scale {c.get('scale')}, seed {c.get('seed')})"
    elif c.get("kind") == "files":
        data = f"features in {Path(str(c.get('features_dir'))).parent} (manifest {c.get('manifest')})"
    elif c.get("kind") == "milcsv":
        data = f"{c.get('dataset')} ('mil' package CSV)"
    else:
        data = "unknown data (no summary.json)"
    if summary.get("data_fingerprint"):
        data += f", fingerprint {str(summary['data_fingerprint'])[:12]}"
    folds, seeds = sorted(provenance.get("folds", ())), sorted(provenance.get("seeds", ()))
    code = provenance.get("code", {})
    code_txt = "; ".join(f"{k}" + (f" ({n} jobs)" if len(code) > 1 else "") for k, n in sorted(code.items()))
    sp = summary.get("splits_source") or {}
    split_txt = (f" from the {sp.get('format')} split file {sp.get('path')} (sha256 {sp.get('sha256')}"
                 + ("; SLIDE-LEVEL: a patient's slides may sit in two parts of a fold" if sp.get("slide_level") else "")
                 + ")") if sp else ""
    return (f"Source: {data}; {len(folds)} folds{split_txt} x {len(seeds)} seed(s) {seeds}; protocol "
            f"{summary.get('protocol_hash', '?')}; recipe {summary.get('recipe', '?')}; code {code_txt or '?'}.")


def annotate_source(tables: Sequence["Table"], run: Path, provenance: dict[str, Any]) -> None:
    """Every table says what made it; simulated rows beside the paper's rows say they are simulated."""
    line = source_line(run, provenance)
    simulated = line.startswith("Source: simulated")
    for t in tables:
        t.notes.append(line)
        if simulated and any(r.kind == "paper" for r in t.rows):
            for r in t.rows:
                if r.kind == "ours":
                    r.labels[0] += " (simulated)"
            t.notes.append("(simulated): our rows come from the built-in simulated cohort, not TCGA-BRCA; "
                           "they check the code path and are not comparable with the paper's numbers.")


def annotate_coverage(tables: Sequence["Table"], provenance: dict[str, Any], max_listed: int = 12) -> None:
    """Show what failed: a cell built from fewer jobs than planned reads ``71.2 ± 3.1 (4/5)``, a
    method whose jobs all failed keeps its row in Tables 1-2 marked ``failed``, and a footnote
    names every planned job without a result and why (Table 1: all of them)."""
    coverage = provenance.get("coverage", {})
    problems = provenance.get("problems", [])
    for t in tables:
        hit: set[tuple[str, str, str]] = set()
        for r in t.rows:
            if r.kind != "ours":
                continue
            for c in r.cells:
                if c.key is None:
                    continue
                cov = coverage.get(tuple(c.key[:3]))
                if cov and cov[0] < cov[1]:
                    c.coverage = f" ({cov[0]}/{cov[1]})"
                    hit.add(tuple(c.key[:3]))
        for r in t.rows:  # no planned job of the row finished: the method failed
            arms = {tuple(c.key[:3]) for c in r.cells if c.key is not None and tuple(c.key[:3]) in coverage}
            if r.kind == "ours" and arms and all(coverage[a][0] == 0 for a in arms):
                r.labels[0] += " (failed)"
        listed = [p for p in problems if t.name == "table1" and p.entry["grid"] == "cv"
                  or tuple(p.entry[k] for k in ("method", "variant", "task")) in hit]
        if listed:
            items = [f"{p.label}: {p.problem} ({p.detail.splitlines()[0][:160] if p.detail else ''})"
                     for p in listed[:max_listed]]
            more = f"; and {len(listed) - max_listed} more" if len(listed) > max_listed else ""
            t.notes.append("(k/n): built from k of the n planned folds x seeds; planned jobs without a result: "
                           + "; ".join(items) + more + ". Rerun the same command to retry them.")


def load_paper(paper_dir: str | Path | None = None) -> pd.DataFrame:
    """The published numbers (``results/paper/table*.csv``), in %; empty if the folder is missing."""
    d = Path(paper_dir) if paper_dir is not None else PAPER_DIR
    files = sorted(d.glob("table*.csv")) if d.is_dir() else []
    if not files:
        warnings.warn(f"{d}: no published tables (table*.csv); the paper view is empty", stacklevel=2)
        return pd.DataFrame(columns=["table", "method", "variant", "task", "split", "metric", "mean", "std"])
    return pd.concat([pd.read_csv(f) for f in files], ignore_index=True)


# ------------------------------------------------------------------------------------------
# Table model and rendering
# ------------------------------------------------------------------------------------------
@dataclass
class Cell:
    """One table cell: mean / std in % over ``n`` fold x seed values (``kind="diff"``: a signed
    difference in points); ``marks`` are significance daggers, ``style`` is best / second / ''."""

    mean: float = float("nan")
    std: float = float("nan")
    n: int = 0
    marks: str = ""
    style: str = ""
    kind: str = "value"
    key: tuple | None = None    # (method, variant, task, split, metric) of a reproduced cell
    coverage: str = ""          # " (4/5)" when built from fewer jobs than the run planned
    ci: tuple[float, float] | None = None   # 95% t-interval of the mean (``tables --ci``)

    @property
    def empty(self) -> bool:
        return self.n == 0 or not np.isfinite(self.mean)

    def text(self, pm: str = " ± ") -> str:
        if self.empty:
            return DASH + self.coverage
        if self.kind == "diff":
            return f"{self.mean:+.1f}"
        if self.n > 1 and np.isfinite(self.std):
            ci = f" [{self.ci[0]:.1f}, {self.ci[1]:.1f}]" if self.ci is not None else ""
            return f"{self.mean:.1f}{pm}{self.std:.1f}{ci}{self.coverage}"
        return f"{self.mean:.1f}{self.coverage}"


@dataclass
class Row:
    labels: list[str]
    cells: list[Cell]
    kind: str = "ours"          # ours | paper | diff | section (a heading over the rows below it)
    tex_labels: list[str] | None = None
    key: tuple | None = None    # (method, variant) or (task, split)


@dataclass
class Table:
    """A rendered-agnostic table: row headers, optional column groups, rows of cells."""

    name: str
    title: str
    caption: str
    header: list[str]
    columns: list[str]
    groups: list[tuple[str, int]] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    long: pd.DataFrame = field(default_factory=pd.DataFrame)
    stats: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=STATS_COLUMNS))

    # -- lookups -------------------------------------------------------------------------
    def col_labels(self) -> list[str]:
        if not self.groups:
            return list(self.columns)
        out = []
        i = 0
        for g, span in self.groups:
            out += [f"{g} {c}".strip() for c in self.columns[i:i + span]]
            i += span
        return out

    def cell(self, row_label: str, col_label: str, kind: str = "ours") -> Cell:
        """The cell at a row (first label) and column (``"HER2 AUC"`` form) of the given kind."""
        j = self.col_labels().index(col_label)
        for r in self.rows:
            if r.labels[0] == row_label and r.kind == kind:
                return r.cells[j]
        raise KeyError(f"{self.name}: no {kind} row {row_label!r}; rows: {[r.labels[0] for r in self.rows]}")

    def frame(self) -> pd.DataFrame:
        """Display strings (marks included, no styling) as a DataFrame."""
        data = [r.labels + [c.text() + c.marks for c in r.cells] for r in self.rows if r.kind != "section"]
        return pd.DataFrame(data, columns=self.header + self.col_labels())

    # -- renderers -----------------------------------------------------------------------
    def to_markdown(self) -> str:
        from tabulate import tabulate

        def fmt(c: Cell) -> str:
            t = c.text() + c.marks
            return f"**{t}**" if c.style == "best" else f"<ins>{t}</ins>" if c.style == "second" else t

        n_head = len(self.header)
        body = [[f"**{r.labels[0]}**"] + [""] * (n_head - 1 + len(self.columns)) if r.kind == "section" else
                [f"*{l}*" if r.kind == "paper" and i == 0 else l for i, l in enumerate(r.labels)]
                + [fmt(c) for c in r.cells] for r in self.rows]
        tab = tabulate(body, headers=self.header + self.col_labels(), tablefmt="github",
                       disable_numparse=True,
                       colalign=("left",) * n_head + ("center",) * len(self.columns))
        parts = [f"**{self.title}**", "", tab, "", self.caption]
        parts += [f"- {n}" for n in self.notes]
        return "\n".join(parts).rstrip() + "\n"

    def to_latex(self) -> str:
        n_head, n_col = len(self.header), len(self.columns)
        spec = "l" * n_head + "".join(" " + "c" * s for _, s in self.groups) if self.groups \
            else "l" * n_head + "c" * n_col
        lines = ["% requires \\usepackage{booktabs}", r"\begin{table}[t]", r"\centering", r"\small",
                 rf"\caption{{{_tex(self.title)}. {_tex(self.caption)}}}", rf"\label{{tab:{self.name}}}",
                 rf"\begin{{tabular}}{{{spec}}}", r"\toprule"]
        if self.groups:
            heads, rules, c0 = [], [], n_head + 1
            for g, s in self.groups:
                heads.append(rf"\multicolumn{{{s}}}{{c}}{{{_tex(g)}}}" if s > 1 else _tex(g))
                rules.append(rf"\cmidrule(lr){{{c0}-{c0 + s - 1}}}")
                c0 += s
            lines.append(" & " * n_head + " & ".join(heads) + r" \\")
            lines.append(" ".join(rules))
        lines.append(" & ".join(_tex(h) for h in self.header + self.columns) + r" \\")
        lines.append(r"\midrule")
        for r in self.rows:
            if r.kind == "section":
                lines.append(rf"\multicolumn{{{n_head + n_col}}}{{l}}{{\textit{{{_tex(r.labels[0])}}}}} \\")
                continue
            labels = r.tex_labels or [_tex(l) for l in r.labels]
            if r.kind == "paper":
                labels = [rf"\textit{{{labels[0]}}}"] + labels[1:]
            cells = []
            for c in r.cells:
                t = c.text(pm=r"$\pm$") if not c.empty else "--"
                t = t.replace("+", "$+$") if c.kind == "diff" and not c.empty else t
                t += "".join({DAGGER_T: r"$^{\dagger}$", DAGGER_D: r"$^{\ddagger}$"}[m] for m in c.marks)
                if c.style == "best":
                    t = rf"\textbf{{{t}}}"
                elif c.style == "second":
                    t = rf"\underline{{{t}}}"
                cells.append(t)
            lines.append(" & ".join(labels + cells) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}"]
        if self.notes:
            lines.append(r"\par\footnotesize " + " ".join(_tex(n) for n in self.notes))
        lines.append(r"\end{table}")
        return "\n".join(lines) + "\n"

    def to_html(self) -> str:
        e = _html.escape
        out = [f'<table class="res" id="{self.name}"><caption><b>{e(self.title)}</b>. {e(self.caption)}</caption>',
               "<thead>"]
        if self.groups:
            out.append("<tr>" + "".join(f'<th rowspan="2">{e(h)}</th>' for h in self.header)
                       + "".join(f'<th colspan="{s}">{e(g)}</th>' for g, s in self.groups) + "</tr>")
            out.append("<tr>" + "".join(f"<th>{e(c)}</th>" for c in self.columns) + "</tr>")
        else:
            out.append("<tr>" + "".join(f"<th>{e(h)}</th>" for h in self.header + self.columns) + "</tr>")
        out.append("</thead><tbody>")
        for r in self.rows:
            if r.kind == "section":
                out.append(f'<tr class="section"><th colspan="{len(self.header) + len(self.columns)}">'
                           f"{e(r.labels[0])}</th></tr>")
                continue
            tds = []
            for c in r.cells:
                t = e(c.text() + c.marks)
                t = f"<b>{t}</b>" if c.style == "best" else f"<u>{t}</u>" if c.style == "second" else t
                tds.append(f"<td>{t}</td>")
            out.append(f'<tr class="{r.kind}">' + "".join(f"<th>{e(l)}</th>" for l in r.labels)
                       + "".join(tds) + "</tr>")
        out.append("</tbody></table>")
        if self.notes:
            out.append('<ul class="notes">' + "".join(f"<li>{e(n)}</li>" for n in self.notes) + "</ul>")
        return "\n".join(out)


def _tex(s: str) -> str:
    rep = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
           "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}", "±": r"$\pm$",
           "–": "--", "α": r"$\alpha$", "†": r"$^{\dagger}$", "‡": r"$^{\ddagger}$"}
    return "".join(rep.get(ch, ch) for ch in str(s))


# ------------------------------------------------------------------------------------------
# Building blocks
# ------------------------------------------------------------------------------------------
class _Index:
    """Fast lookups into the long frames by (method, variant, task, split[, metric])."""

    def __init__(self, metrics: pd.DataFrame, preds: pd.DataFrame | None) -> None:
        self.metrics = metrics
        self.m = {k: g for k, g in metrics.groupby(["method", "variant", "task", "split", "metric"], sort=False)}
        self.p = ({} if preds is None or preds.empty else
                  {k: g for k, g in preds.groupby(["method", "variant", "task", "split"], sort=False)})

    def values(self, arm: tuple[str, str], task: str, split: str, metric: str) -> pd.DataFrame:
        g = self.m.get((arm[0], arm[1], task, split, metric))
        return g if g is not None else pd.DataFrame(columns=METRIC_COLUMNS)

    def cell(self, arm, task, split, metric) -> Cell:
        v = self.values(arm, task, split, metric)["value"].to_numpy(dtype=float)
        key = (arm[0], arm[1], task, split, metric)
        if v.size == 0:
            return Cell(key=key)
        return Cell(mean=100 * v.mean(), std=100 * v.std(ddof=1) if v.size > 1 else float("nan"),
                    n=v.size, key=key)

    def pooled(self, arm, task, split, by: str = "slide_id") -> pd.DataFrame:
        """One probability per slide (``by="case_id"``: per patient, the mean over its slides): the
        mean over seeds (and fold models, for external data)."""
        g = self.p.get((arm[0], arm[1], task, split))
        if g is None or g.empty:
            return pd.DataFrame(columns=[by, "y", "p"])
        return g.groupby(by, sort=True).agg(y=("y", "first"), p=("p", "mean")).reset_index()

    def arms(self, split: str | None = None, tasks: Iterable[str] | None = None) -> list[tuple[str, str]]:
        df = self.metrics
        if split is not None:
            df = df[df["split"] == split]
        if tasks is not None:
            df = df[df["task"].isin(list(tasks))]
        return sorted(set(zip(df["method"], df["variant"])))


def method_order(methods: Iterable[str]) -> list[str]:
    """Table order: by registry family (floor, mil, kd, ours), then registration order (built-in
    methods as in the paper's Table 1, plugins after them); unregistered keys sorted, then the
    control (MoMKD) last."""
    from benchmarks import registry

    ms = set(methods)
    rank = {n: (registry.FAMILIES.index(s.family), i) for i, (n, s) in enumerate(registry.METHODS.items())}
    known = sorted((m for m in ms if m in rank and m != CONTROL[0]), key=rank.__getitem__)
    other = sorted(m for m in ms if m not in rank and m != CONTROL[0])
    return known + other + ([CONTROL[0]] if CONTROL[0] in ms else [])


_method_order = method_order


def _paper_lookup(paper: pd.DataFrame, table: int) -> dict[tuple, tuple[float, float]]:
    if paper is None or paper.empty:
        return {}
    sub = paper[paper["table"].astype(int) == table]
    return {(r.method, r.variant, r.task, r.split, r.metric): (float(r.mean), float(r.std))
            for r in sub.itertuples(index=False)}


def _paper_cell(lookup, key) -> Cell:
    v = lookup.get(key)
    return Cell() if v is None else Cell(mean=v[0], std=v[1], n=5)  # the paper: 5 folds


def _mark_best(rows: Sequence[Row], cols: Sequence[int] | None = None, axis: str = "column") -> None:
    """Bold the best and underline the second-best displayed value among ``ours`` rows.

    Needs >= 2 entries for a bold and >= 3 for an underline.
    axis="column": rank down each column (Tables 1-3); axis="row": across ``cols`` within each
    row (Table 4: fixed vs momentum vs EMA). Values are compared after rounding to one decimal.
    """
    ours = [r for r in rows if r.kind == "ours"]

    def mark(cells: list[Cell]) -> None:
        n = sum(not c.empty for c in cells)
        if n < 2:
            return          # a single entry is neither best nor second
        vals = sorted({round(c.mean, 1) for c in cells if not c.empty}, reverse=True)
        for c in cells:
            if c.empty:
                continue
            if round(c.mean, 1) == vals[0]:
                c.style = "best"
            elif n > 2 and len(vals) > 1 and round(c.mean, 1) == vals[1]:
                c.style = "second"      # of two entries the second is just the worst: not marked

    if not ours:
        return
    n = len(ours[0].cells)
    cols = list(range(n)) if cols is None else list(cols)
    if axis == "column":
        for j in cols:
            mark([r.cells[j] for r in ours])
    else:
        for r in ours:
            mark([r.cells[j] for j in cols])


def _pairwise(ix: _Index, table: str, control: tuple[str, str], others: Sequence[tuple[str, str]],
              cells: Sequence[tuple[str, str, str]]) -> pd.DataFrame:
    """Control vs each other arm, per (task, split, metric): corrected t, Wilcoxon, DeLong (AUC).

    Holm's adjustment runs within each (task, split, metric, test) family over the other arms.
    """
    rows = []
    for task, split, metric in cells:
        a = ix.values(control, task, split, metric)
        if a.empty:
            continue
        for other in others:
            b = ix.values(other, task, split, metric)
            if b.empty:
                continue
            pair = a.merge(b, on=["fold", "seed"], suffixes=("_a", "_b"))
            base = {"table": table, "task": task, "split": split, "metric": metric,
                    "control": "/".join(control), "other": "/".join(other)}
            external = split == "external"
            if len(pair) >= 2 and not external:
                # internal folds: disjoint test sets, so the fold x seed values are (nearly) independent
                d = pair["value_a"].to_numpy() - pair["value_b"].to_numpy()
                n_tr = pair["n_train_a"].fillna(pair["n_train_b"]).to_numpy(dtype=float)
                n_te = pair["n_test_a"].fillna(pair["n_test_b"]).to_numpy(dtype=float)
                common = {**base, "n": len(pair), "control_mean": pair["value_a"].mean(),
                          "other_mean": pair["value_b"].mean(), "diff": d.mean()}
                if np.all(np.isfinite(n_tr)) and np.all(np.isfinite(n_te)):
                    t, p = st.corrected_ttest(d, n_tr, n_te)
                    rows.append({**common, "test": "corrected_t", "statistic": t, "p": p,
                                 "note": f"J={len(d)}, n_test/n_train={np.mean(n_te) / np.mean(n_tr):.3f}"})
                else:
                    rows.append({**common, "test": "corrected_t", "statistic": np.nan, "p": np.nan,
                                 "note": "n_train/n_test missing in the job results"})
                w, p = st.wilcoxon_test(pair["value_a"], pair["value_b"])
                rows.append({**common, "test": "wilcoxon", "statistic": w, "p": p, "note": ""})
            if metric == "auc":
                # one score per patient (mean over its slides, seeds and, external, fold models): the
                # fold values of an external set share one test set, and a patient's slides are not
                # independent, so DeLong runs on patients
                pa, pb = ix.pooled(control, task, split, "case_id"), ix.pooled(other, task, split, "case_id")
                m = pa.merge(pb, on="case_id", suffixes=("_a", "_b"))
                bad = int((m["y_a"] != m["y_b"]).sum()) if not m.empty else 0
                m = m[m["y_a"] == m["y_b"]] if bad else m
                if not m.empty and m["y_a"].nunique() == 2:
                    a1, a2, z, p = st.delong_test(m["y_a"].to_numpy(int), m["p_a"], m["p_b"])
                    what = ("external patients, scores averaged over the fold models" if external
                            else "pooled out-of-fold predictions, one per patient")
                    rows.append({**base, "test": "delong", "n": len(m), "control_mean": a1, "other_mean": a2,
                                 "diff": a1 - a2, "statistic": z, "p": p,
                                 "note": what + (f"; {bad} patients with conflicting labels dropped" if bad else "")})
    df = pd.DataFrame(rows, columns=STATS_COLUMNS)
    if df.empty:
        df["significant"] = df["significant"].astype(bool)
        return df
    df["p_holm"] = np.nan
    for _, idx in df.groupby(["task", "split", "metric", "test"]).groups.items():
        df.loc[idx, "p_holm"] = st.holm(df.loc[idx, "p"].to_numpy(dtype=float))
    df["significant"] = (df["p_holm"] < ALPHA).fillna(False).astype(bool)
    return df


def primary_test(split: str) -> str:
    """The one test behind a cell's mark: the corrected resampled t-test over the internal folds
    (disjoint test sets); DeLong per patient on the external cohort (one shared test set, where the
    fold values are not independent and the corrected t-test's type-I error was 0.47 in a null
    simulation). The other tests stay in stats.csv, unmarked."""
    return "delong" if split == "external" else "corrected_t"


def _apply_marks(table: Table) -> None:
    """One mark per cell: † (internal, corrected t) or ‡ (external, DeLong) when the arm differs
    significantly from the control under the cell's primary test (Holm within its column)."""
    if table.stats.empty:
        return
    cells = {c.key: c for r in table.rows if r.kind == "ours" for c in r.cells if c.key is not None}
    for r in table.stats[table.stats["significant"]].itertuples(index=False):
        if r.test != primary_test(r.split):
            continue
        cell = cells.get(tuple(r.other.split("/", 1)) + (r.task, r.split, r.metric))
        if cell is not None:
            cell.marks = DAGGER_D if r.split == "external" else DAGGER_T


def sig_note(table: Table, control: str) -> list[str]:
    """What the marks mean, which test, and the family Holm corrects over."""
    if table.stats.empty:
        return []
    splits = set(table.stats["split"])
    k = table.stats.groupby(["task", "split", "metric", "test"])["other"].nunique().max()
    out = []
    if splits - {"external"}:
        out.append(f"{DAGGER_T}: {control} differs from this entry (corrected resampled t-test over folds x seeds, "
                   f"Nadeau & Bengio 2003), Holm-adjusted over the {k} comparisons with {control} in the same "
                   f"column, p < {ALPHA}.")
    if "external" in splits:
        out.append(f"{DAGGER_D}: the external AUC differs from {control}'s (DeLong test on the external patients, "
                   "each scored by the mean of the fold models: the folds share one test set, so the corrected "
                   f"t-test does not apply), Holm-adjusted over the {k} comparisons in the column, p < {ALPHA}; "
                   "external ACC and F1 are not tested.")
    out.append("One mark per cell. DeLong per patient (internal) and Wilcoxon results are in stats.csv, unmarked.")
    return out


def _long(ix: _Index, arms, cells) -> pd.DataFrame:
    parts = [ix.values(arm, t, s, m) for arm in arms for t, s, m in cells]
    parts = [p for p in parts if not p.empty]
    cols = ["method", "variant", "task", "metric", "split", "fold", "seed", "value"]
    if not parts:
        return pd.DataFrame(columns=cols)
    return pd.concat(parts, ignore_index=True)[cols].sort_values(cols[:7], kind="stable").reset_index(drop=True)



def _method_table(ix: _Index, paper: pd.DataFrame | None, *, name: str, number: int, title: str,
                  caption: str, tasks: Sequence[str], split: str, group_names: Sequence[str],
                  planned: Iterable[tuple[str, str, str]] = ()) -> Table:
    """Tables 1 and 2: methods (default variant; MoMKD full) x tasks x {AUC, ACC, F1}. ``planned``
    (method, variant, task) arms keep their row even when none of their jobs finished."""
    present = sorted(set(ix.arms(split, tasks)) | {(m, v) for m, v, t in planned if t in tasks})
    present = [arm for arm in present if arm[1] == ("full" if arm[0] == CONTROL[0] else "default")]
    methods = _method_order(m for m, _ in present)
    lookup = _paper_lookup(paper, number) if paper is not None else {}
    if paper is not None:
        methods = _method_order(set(methods) | {k[0] for k in lookup})
    cells_spec = [(t, split, m) for t in tasks for m in METRICS]
    table = Table(name=name, title=title, caption=caption, header=["Method"],
                  columns=[METRIC_NAMES[m] for m in METRICS] * len(tasks),
                  groups=[(g, len(METRICS)) for g in group_names])
    families = [method_family(m) for m in methods]
    grouped = len(set(families)) > 1
    for method, family in zip(methods, families):
        arm = (method, "full" if method == CONTROL[0] else "default")
        if grouped and not any(r.kind == "section" and r.key == (family,) for r in table.rows):
            table.rows.append(Row([FAMILY_HEADINGS.get(family, "Other")], [], "section", key=(family,)))
        if arm in present:
            cells = [ix.cell(arm, t, s, m) for t, s, m in cells_spec]
            table.rows.append(Row([method_name(method)], cells, "ours", key=arm))
        if paper is not None and any((arm + (t, s, m)) in lookup for t, s, m in cells_spec):
            table.rows.append(Row([f"{method_name(method)} (paper)"],
                                  [_paper_cell(lookup, arm + c) for c in cells_spec], "paper", key=arm))
    _mark_best(table.rows)
    arms = [r.key for r in table.rows if r.kind == "ours"]
    if CONTROL in arms:
        table.stats = _pairwise(ix, name, CONTROL, [a for a in arms if a != CONTROL], cells_spec)
        _apply_marks(table)
    table.long = _long(ix, arms, cells_spec)
    table.notes = sig_note(table, "MoMKD") if CONTROL in arms and len(arms) > 1 else []
    if not arms:
        table.notes.insert(0, "No matching job results in this run.")
    return table


# ------------------------------------------------------------------------------------------
# The four tables
# ------------------------------------------------------------------------------------------
def table1(metrics: pd.DataFrame, predictions: pd.DataFrame | None = None, *, paper: bool = False,
           paper_dir: str | Path | None = None, planned: Iterable[tuple[str, str, str]] = ()) -> Table:
    """Table 1: internal cross-validation, methods x {HER2, PR, ODX} x {AUC, ACC, F1} (test folds).
    ``planned``: the run's (method, variant, task) arms, shown even when every job of one failed."""
    ix = _Index(metrics, predictions)
    planned = list(planned)
    present = set(metrics.loc[metrics["split"] == "test", "task"]) | {t for _, _, t in planned}
    # the paper's three tasks whenever any is present; other suites (MUSK, UCSB) show only theirs
    paper_tasks = list(TASKS) if (present & set(TASKS)) or not present else []
    tasks = paper_tasks + sorted(present - set(TASKS))
    return _method_table(
        ix, load_paper(paper_dir) if paper else None, name="table1", number=1,
        title="Table 1: Internal comparison (cross-validation test folds)",
        caption="Mean ± std over folds x seeds (%). Bold: best; underlined: second best.",
        tasks=tasks, split="test", group_names=[TASK_NAMES.get(t, t) for t in tasks], planned=planned)


def table2(metrics: pd.DataFrame, predictions: pd.DataFrame | None = None, *, paper: bool = False,
           paper_dir: str | Path | None = None) -> Table:
    """Table 2: each fold's model scored on the external cohort (task ODX), {AUC, ACC, F1}."""
    ix = _Index(metrics, predictions)
    return _method_table(
        ix, load_paper(paper_dir) if paper else None, name="table2", number=2,
        title="Table 2: External validation (ODX, external cohort)",
        caption="Each cross-validation fold model scored on the external cohort; mean ± std over "
                "fold models x seeds (%). Bold: best; underlined: second best.",
        tasks=[EXTERNAL[0]], split=EXTERNAL[1], group_names=["External ODX"])


def table3(metrics: pd.DataFrame, predictions: pd.DataFrame | None = None, *, paper: bool = False,
           paper_dir: str | Path | None = None) -> Table:
    """Table 3: MoMKD ablation, HER2 AUC, with the active components (paper's Table 3)."""
    ix = _Index(metrics, predictions)
    lookup = _paper_lookup(load_paper(paper_dir), 3) if paper else {}
    spec = ("her2", "test", "auc")
    cols = ["HER2 AUC"] + (["HER2 AUC (paper)"] if paper else [])
    table = Table(name="table3", title="Table 3: Ablation of MoMKD on HER2",
                  caption="Mean ± std over folds x seeds (%). Bold: best; underlined: second best.",
                  header=["Model variant", "Active components"], columns=cols)
    for variant, label, tex_label, comps in ABLATION:
        arm = ("momkd", variant)
        cells = [ix.cell(arm, *spec)] + ([_paper_cell(lookup, arm + spec)] if paper else [])
        table.rows.append(Row([label, comps], cells, "ours", tex_labels=[tex_label, _tex(comps)], key=arm))
    _mark_best(table.rows, cols=[0])
    arms = [r.key for r in table.rows if not ix.values(r.key, *spec).empty]
    if CONTROL in arms:
        table.stats = _pairwise(ix, "table3", CONTROL, [a for a in arms if a != CONTROL], [spec])
        _apply_marks(table)
    table.long = _long(ix, arms, [spec])
    table.notes = sig_note(table, "MoMKD (Full)")
    if paper:
        table.notes.append("Paper column: Guo et al., arXiv 2602.21395, Table 3 (results/paper/table3.csv).")
    return table


def table4(metrics: pd.DataFrame, predictions: pd.DataFrame | None = None, *, paper: bool = False,
           paper_dir: str | Path | None = None, planned: Iterable[tuple[str, str, str]] = ()) -> Table:
    """Table 4: fixed vs momentum (MoMKD full) memory AUC, plus the EMA memory extension when the
    run planned it (``run --grids ...,extensions``) or holds its results."""
    ix = _Index(metrics, predictions)
    lookup = _paper_lookup(load_paper(paper_dir), 4) if paper else {}
    arms_planned = {(m, v) for m, v, _ in planned}
    mem_cols = [(v, lab) for v, lab in MEMORY_COLS
                if v != "ema_memory" or ("momkd", v) in arms_planned
                or any(not ix.values(("momkd", v), t, s, "auc").empty for t, s, _ in MEMORY_ROWS)]
    cols = [lab for _, lab in mem_cols]
    if paper:
        cols += [f"{lab} (paper)" for v, lab in mem_cols if any(k[1] == v for k in lookup)]
    table = Table(name="table4", title="Table 4: Fixed vs momentum memory (AUC, %)",
                  caption="Mean ± std over folds x seeds (%); the momentum memory is MoMKD (full)"
                          + ("; the EMA memory is an extension of this suite" if len(mem_cols) > 2 else "")
                          + ". Bold: best in the row; underlined: second.",
                  header=["Task"], columns=cols)
    for task, split, label in MEMORY_ROWS:
        cells = [ix.cell(("momkd", v), task, split, "auc") for v, _ in mem_cols]
        if paper:
            cells += [_paper_cell(lookup, ("momkd", v, task, split, "auc"))
                      for v, _ in mem_cols if any(k[1] == v for k in lookup)]
        table.rows.append(Row([label], cells, "ours", key=(task, split)))
    _mark_best(table.rows, cols=range(len(mem_cols)), axis="row")
    specs = [(t, s, "auc") for t, s, _ in MEMORY_ROWS]
    others = [("momkd", v) for v, _ in mem_cols if v != "full"]
    table.stats = _pairwise(ix, "table4", CONTROL, others, specs)
    _apply_marks(table)
    table.long = _long(ix, [("momkd", v) for v, _ in mem_cols], specs)
    table.notes = sig_note(table, "the momentum memory")
    if paper:
        table.notes.append("Paper columns: Guo et al., arXiv 2602.21395, Table 4 (results/paper/table4.csv); "
                           "the paper's 'In-house Dataset' row is our external cohort.")
    return table


TABLES = {"table1": table1, "table2": table2, "table3": table3, "table4": table4}


def diff_table(reproduced: Table, paper_dir: str | Path | None = None) -> Table:
    """The reproduced-minus-paper view of a table (points of %, signed; "–" where either is missing)."""
    lookup = _paper_lookup(load_paper(paper_dir), int(reproduced.name[-1]))
    n = len([c for c in reproduced.columns if not c.endswith("(paper)")])
    t = Table(name=f"{reproduced.name}_diff", title=reproduced.title + ": reproduced minus paper",
              caption="Reproduced mean minus published mean, in points of %.", header=list(reproduced.header),
              columns=list(reproduced.columns[:n]), groups=list(reproduced.groups))
    for r in reproduced.rows:
        if r.kind != "ours":
            continue
        cells = []
        for c in r.cells[:n]:
            pv = lookup.get(c.key) if c.key is not None else None
            cells.append(Cell(mean=c.mean - pv[0], n=1, kind="diff", key=c.key)
                         if pv is not None and not c.empty else Cell(kind="diff", key=c.key))
        t.rows.append(Row(list(r.labels), cells, "diff", tex_labels=r.tex_labels, key=r.key))
    return t


# ------------------------------------------------------------------------------------------
# Statistics across tables, figures, and writing everything
# ------------------------------------------------------------------------------------------
def friedman_across_tasks(metrics: pd.DataFrame, metric: str = "auc") -> tuple[Any, pd.DataFrame] | None:
    """Friedman + Nemenyi over the tasks of Tables 1 and 2 (blocks: HER2, PR, ODX, external ODX).

    Blocks with >= 2 methods are kept, then the methods present in every kept block. Returns
    (FriedmanResult, the blocks x methods mean matrix) or None when fewer than 2 x 2 remain.
    """
    df = metrics[(metrics["metric"] == metric)
                 & (metrics["variant"] == np.where(metrics["method"] == CONTROL[0], "full", "default"))]
    blocks = [(t, "test") for t in TASKS] + [EXTERNAL]
    df = df[[(t, s) in blocks for t, s in zip(df["task"], df["split"])]]
    if df.empty:
        return None
    mat = df.groupby(["task", "split", "method"])["value"].mean().unstack("method")
    mat = mat[mat.notna().sum(axis=1) >= 2]
    mat = mat.loc[:, mat.notna().all(axis=0)]
    if mat.shape[0] < 2 or mat.shape[1] < 2:
        return None
    mat = mat[_method_order(mat.columns)]
    return st.friedman_nemenyi(mat), mat


def compute_stats(metrics: pd.DataFrame, predictions: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every pairwise test of Tables 1-4 plus the Friedman test across tasks (the rows of stats.csv)."""
    tables = [f(metrics, predictions) for f in TABLES.values()]
    return _stats_frame(tables, friedman_across_tasks(metrics))


def _stats_frame(tables: Sequence[Table], fried) -> pd.DataFrame:
    parts = [t.stats for t in tables if not t.stats.empty]
    df = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=STATS_COLUMNS)
    if fried is not None:
        res, mat = fried
        ranks = ", ".join(f"{method_name(k)} {v:.2f}" for k, v in res.ranks.sort_values().items())
        row = {"table": "all", "task": "+".join(f"{t}/{s}" for t, s in mat.index), "split": "",
               "metric": "auc", "control": "", "other": "all", "test": "friedman", "n": res.n_blocks,
               "statistic": res.statistic, "p": res.p_value, "p_holm": res.p_value,
               "significant": bool(res.p_value < ALPHA),
               "note": f"Nemenyi CD = {res.cd:.3f} (alpha {res.alpha}); mean ranks: {ranks}"}
        df = pd.concat([df, pd.DataFrame([row], columns=STATS_COLUMNS)], ignore_index=True)
    df["significant"] = df["significant"].astype(bool)
    return df


def make_figures(metrics: pd.DataFrame, preds: pd.DataFrame, out_dir: str | Path,
                 formats: Sequence[str] = ("png", "pdf")) -> dict[str, list[Path]]:
    """ROC curves (pooled out-of-fold), CD diagram across tasks, fold-wise AUC strips."""
    from . import figures as fg

    ix = _Index(metrics, preds)
    out: dict[str, list[Path]] = {}
    panels_spec = [(t, "test", f"{TASK_NAMES[t]} (CV test folds)") for t in TASKS] + \
                  [(EXTERNAL[0], EXTERNAL[1], "ODX (external cohort)")]
    arms = [(m, "full" if m == CONTROL[0] else "default") for m in _method_order(set(metrics["method"]))]
    roc_panels, strip_panels = [], []
    for task, split, title in panels_spec:
        curves = {}
        for arm in arms:
            pool = ix.pooled(arm, task, split)
            if len(pool) and pool["y"].nunique() == 2:
                curves[arm[0]] = (method_name(arm[0]), pool["y"].to_numpy(int), pool["p"].to_numpy(float))
        if curves:
            roc_panels.append((title, curves))
        series = {arm[0]: (method_name(arm[0]), 100 * ix.values(arm, task, split, "auc")["value"].to_numpy(float))
                  for arm in arms if not ix.values(arm, task, split, "auc").empty}
        if series:
            strip_panels.append((title, series))
    if roc_panels:
        out["roc"] = fg.save(fg.roc_figure(roc_panels), out_dir, "roc", formats)
    if strip_panels:
        out["auc_strip"] = fg.save(fg.strip_figure(strip_panels), out_dir, "auc_strip", formats)
    fried = friedman_across_tasks(metrics)
    if fried is not None:
        fig = fg.cd_figure(fried[0], {k: method_name(k) for k in fried[1].columns},
                           title="Mean AUC rank across tasks (1 = best)")
        out["cd_diagram"] = fg.save(fig, out_dir, "cd_diagram", formats)
    return out


def build_tables(metrics: pd.DataFrame, preds: pd.DataFrame | None = None, *, paper: bool = False,
                 paper_dir: str | Path | None = None, planned: Iterable[tuple[str, str, str]] = ()) -> list[Table]:
    """The four tables; ``planned`` arms (the run's plan) keep their Table 1 row if all their jobs failed."""
    return [f(metrics, preds, paper=paper, paper_dir=paper_dir, **({"planned": planned} if f in (table1, table4) else {}))
            for f in TABLES.values()]


FORMATS = ("md", "tex", "csv", "html")


def write_all(run_dir: str | Path, formats: Sequence[str] = FORMATS, paper: bool = True,
              diff: bool = False, paper_dir: str | Path | None = None,
              figure_formats: Sequence[str] = ("png", "pdf"), ci: bool = False) -> dict[str, Path]:
    """Render everything for a run from its saved job results; returns {relative name: path}.

    Writes tables/table{1..4}.{md,tex,csv} (per ``formats``), tables/index.html, stats.csv and
    figures/* (``figure_formats=()`` skips the figures). ``paper`` adds the published numbers (rows in Tables 1-2, columns in 3-4);
    ``diff`` also writes tables/table{n}_diff.{md,tex} (reproduced minus paper).
    """
    bad = set(formats) - set(FORMATS)
    if bad:
        raise ValueError(f"unknown table format(s) {sorted(bad)}; choose from {FORMATS}")
    run = Path(run_dir)
    from .smoke import is_smoke_run, write_smoke

    if is_smoke_run(run):  # one-epoch jobs: timings and memory only, never Tables 1-4
        return write_smoke(run)
    provenance: dict[str, Any] = {}
    metrics, preds = load_results(run, provenance)
    tables = build_tables(metrics, preds, paper=paper, paper_dir=paper_dir, planned=provenance.get("coverage", {}))
    annotate_provenance(tables, provenance)
    annotate_coverage(tables, provenance)
    annotate_source(tables, run, provenance)
    if ci:
        add_ci(tables)
    diffs = [diff_table(t, paper_dir) for t in tables] if diff else []
    tdir = run / "tables"
    tdir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}

    def put(rel: str, text: str) -> None:
        path = run / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written[rel] = path

    for t in tables + diffs:
        if "md" in formats:
            put(f"tables/{t.name}.md", t.to_markdown())
        if "tex" in formats:
            put(f"tables/{t.name}.tex", t.to_latex())
        if "csv" in formats and not t.name.endswith("_diff"):
            put(f"tables/{t.name}.csv", t.long.to_csv(index=False))
    fried = friedman_across_tasks(metrics)
    stats_df = _stats_frame(tables, fried)
    put("stats.csv", stats_df.to_csv(index=False))
    figs = make_figures(metrics, preds, run / "figures", figure_formats) if figure_formats else {}
    for name, paths in figs.items():
        for p in paths:
            written[f"figures/{p.name}"] = p
    if "html" in formats:
        put("tables/index.html", _html_page(run, tables, diffs, stats_df, figs, fried, len(metrics)))
    return written


def _html_page(run: Path, tables, diffs, stats_df: pd.DataFrame, figs, fried, n_rows: int) -> str:
    e = _html.escape
    css = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}"
           "table.res{border-collapse:collapse;margin:1.2em 0;font-size:14px}"
           "table.res th,table.res td{padding:3px 8px;text-align:center}"
           "table.res thead{border-top:2px solid #000;border-bottom:1px solid #000}"
           "table.res tbody{border-bottom:2px solid #000}table.res caption{text-align:left;margin-bottom:4px}"
           "tr.paper{color:#666;font-style:italic}ul.notes{font-size:12px;color:#444}"
           "table.stats{border-collapse:collapse;font-size:12px}table.stats td,table.stats th"
           "{border:1px solid #ddd;padding:2px 6px}img{max-width:100%}")
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>MoMKD bench: {e(run.name)}</title>"
             f"<style>{css}</style></head><body>",
             f"<h1>MoMKD benchmark report</h1><p>Run <code>{e(str(run))}</code>; generated "
             f"{_dt.datetime.now().isoformat(timespec='seconds')}; {n_rows} metric values loaded. "
             "Published numbers: Guo et al., arXiv 2602.21395 (results/paper/).</p>"]
    parts += ["<h2>Tables</h2>"] + [t.to_html() for t in tables]
    if diffs:
        parts += ["<h2>Reproduced minus paper</h2>"] + [t.to_html() for t in diffs]
    parts.append("<h2>Figures</h2>")
    if not figs:
        parts.append("<p>No predictions to plot.</p>")
    for name, paths in figs.items():
        png = next((p for p in paths if p.suffix == ".png"), None)
        if png is not None:
            b64 = base64.b64encode(png.read_bytes()).decode("ascii")
            parts.append(f"<figure><img alt='{e(name)}' src='data:image/png;base64,{b64}'>"
                         f"<figcaption>{e(name)}</figcaption></figure>")
    parts.append("<h2>Significance tests (stats.csv)</h2>")
    if fried is not None:
        res = fried[0]
        parts.append(f"<p>Friedman over {res.n_blocks} tasks: chi2 = {res.statistic:.3f}, p = {res.p_value:.3g}; "
                     f"Nemenyi CD = {res.cd:.3f}.</p>")
    shown = stats_df.copy()
    for c in ("control_mean", "other_mean", "diff", "statistic", "p", "p_holm"):
        shown[c] = pd.to_numeric(shown[c], errors="coerce").map(lambda v: "" if pd.isna(v) else f"{v:.4g}")
    if shown.empty:
        parts.append("<p>No pairwise tests (MoMKD or the other arms missing).</p>")
    else:
        sig = shown[stats_df["significant"].to_numpy(bool) & (stats_df["test"] != "wilcoxon").to_numpy()]
        parts.append(f"<h3>Significant after Holm ({len(sig)} of {len(shown)} tests)</h3>")
        parts.append(sig.to_html(index=False, classes="stats", border=0) if len(sig) else "<p>None.</p>")
        parts.append(f"<details><summary>All {len(shown)} tests</summary>"
                     + shown.to_html(index=False, classes="stats", border=0) + "</details>")
    parts.append("</body></html>")
    return "\n".join(parts)


# ------------------------------------------------------------------------------------------
# CLI: python -m benchmarks tables --run DIR [--paper] [--diff]
# ------------------------------------------------------------------------------------------
def add_arguments(parser) -> None:
    parser.add_argument("--run", required=True, help="run directory (holds jobs/<hash>.json)")
    parser.add_argument("--paper", action="store_true",
                        help="add the published numbers (paper rows in Tables 1-2, columns in 3-4)")
    parser.add_argument("--diff", action="store_true",
                        help="also write reproduced-minus-paper tables (tables/table{n}_diff.*)")
    parser.add_argument("--formats", default=",".join(FORMATS),
                        help=f"comma-separated subset of {','.join(FORMATS)} (default: all)")
    parser.add_argument("--figures", default="png,pdf",
                        help="figure formats, comma-separated (default png,pdf; 'none' skips the figures)")
    parser.add_argument("--ci", action="store_true", help="add 95%% confidence intervals of the means to the cells")


def main(args) -> int:
    """Re-render Tables 1-4, stats.csv, the figures and index.html from a run's saved results (no training)."""
    run = Path(args.run)
    if not (run / "jobs").is_dir():
        print(f"error: {run} has no jobs/ folder; pass a run directory written by "
              "`python -m benchmarks run`", file=sys.stderr)
        return 2
    formats = tuple(f.strip() for f in str(args.formats).split(",") if f.strip())
    bad = set(formats) - set(FORMATS)
    if bad:
        print(f"error: unknown format(s) {sorted(bad)}; choose from {','.join(FORMATS)}", file=sys.stderr)
        return 2
    figs = tuple(f.strip() for f in str(getattr(args, "figures", "png,pdf")).split(",")
                 if f.strip() and f.strip() != "none")
    written = write_all(run, formats=formats, paper=bool(args.paper), diff=bool(args.diff),
                        figure_formats=figs, ci=bool(getattr(args, "ci", False)))
    md = run / "tables" / "table1.md"
    if md.exists():
        print(md.read_text(encoding="utf-8"))
    for rel in sorted(written):
        print(f"wrote {written[rel]}")
    return 0

