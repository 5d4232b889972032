"""Reproduce published classic-MIL numbers under each paper's protocol, as published and leak-free.

    python -m benchmarks reproduce [--suite musk1,musk2,elephant,ucsb_breast] [--methods abmil,dsmil]
                                   [--recipe official|shared] [--protocol as-published|leak-free]
                                   [--repeats N] [--out DIR] [--workers N] [--force]

For every suite and method the literature protocol of the paper it is compared with (the suite
file's ``[reproduce]`` table; ``data_manifests/literature_protocols.toml``) is run twice:

* ``as-published``: the paper's own choices, test-fold selection and data-set-wide normalisation
  included. These numbers only show that an implementation reproduces the published one; every
  output marks them "optimistic" with the reason, and ``run`` and the main tables never use them.
* ``leak-free``: the same folds, repeats, recipe and epoch budget, with every choice on a
  validation part and every statistic fitted on the training bags. The gap between the two rows is
  a finding in itself.

Writes ``DIR/reproduce.csv`` (suite, method, protocol, metric, ours_mean, ours_std, published_mean,
published_std, source, within_std; metric values in %; within_std: |ours - published| <=
published_std), ``DIR/reproduce.md`` (the same with the protocol, the spread definition, the
evidence level of each published number and the optimism flags), ``DIR/reproduce.json`` and one
job file per fold (``DIR/jobs``; finished jobs are reused, ``--force`` recomputes).
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks import registry
from benchmarks.data.cohort import CohortSource, load_cohort
from benchmarks.jobs import Job, ResultStore, atomic_write_json
from benchmarks.literature import (MODES, LiteratureProtocol, fold_value, literature_splits, load_protocols, normalise,
                                   load_published, max_over_epochs, spread)
from benchmarks.protocol import ProtocolConfig, load_splits, save_splits
from benchmarks.recipes import RECIPES, resolve as resolve_recipe
from benchmarks.suites import Suite, load_suite
from momkd.recipe import Recipe

DEFAULT_SUITES = ("musk1", "musk2", "elephant", "ucsb_breast")
DEFAULT_METHODS = ("abmil", "dsmil", "transmil", "dtfdmil", "wikg")
CSV_COLUMNS = ["suite", "method", "protocol", "metric", "ours_mean", "ours_std", "published_mean",
               "published_std", "source", "within_std"]


@dataclass(frozen=True)
class ReproContext:
    """What a worker needs (picklable)."""

    out_dir: str
    sources: dict[str, CohortSource]  # suite -> its cohort (raw features: the protocols normalise)
    tasks: dict[str, str]  # suite -> task
    protocol: dict[str, Any]  # ProtocolConfig fields (device, determinism, ...)
    started: float = 0.0  # time.time() when planned: results written after it come from a concurrent run
    code_digests: dict[str, str] = dataclasses.field(default_factory=dict)  # method -> provenance digest


def suite_plan(suite: Suite) -> dict[str, Any]:
    """The suite's ``[reproduce]`` table: the default literature protocol, per-method protocols and
    the repeats of methods without a published number on this suite."""
    raw = suite.raw.get("reproduce")
    if not raw:
        raise ValueError(f"suite {suite.name} has no [reproduce] table (the literature protocol it is compared "
                         f"under); suites with one: {', '.join(DEFAULT_SUITES)}")
    return {"protocol": raw["protocol"], "methods": dict(raw.get("methods", {})),
            "repeats_unpublished": raw.get("repeats_unpublished")}


def mode_recipe(recipe: Recipe, proto: LiteratureProtocol, mode: str, max_epochs: int | None) -> Recipe:
    """The recipe under a protocol mode: its epoch budget, and the selection rule of the mode (the
    last epoch or the test fold: nothing monitored; ``val``: the recipe's own monitor, validation AUC
    when it has none)."""
    choices = proto.mode(mode)
    epochs = proto.epochs or recipe.epochs
    if max_epochs:
        epochs = min(epochs, max_epochs)
    if choices.selection == "val":
        monitor = recipe.monitor if recipe.monitor != "none" else "val_auc"
        patience = recipe.patience
    else:
        monitor, patience = "none", None
    return dataclasses.replace(recipe, epochs=epochs, monitor=monitor, patience=patience,
                               min_epochs=min(recipe.min_epochs, epochs),
                               scheduler="none" if recipe.scheduler == "plateau" and monitor == "none"
                               else recipe.scheduler)


def split_file(out_dir: Path, suite: str, proto: str, mode: str, repeat: int) -> Path:
    """The folds of one repeat; the protocol mode's hash in the name, so a changed protocol writes new
    split files instead of clashing with the old ones (which its old jobs still point to)."""
    h = load_protocols()[proto].hash(mode)
    return Path(out_dir) / "splits" / f"{suite}_{proto}_{mode}_{h}_rep{repeat}.csv"


_SPLITS: dict[str, Any] = {}


def _split(path: Path, fold: int):
    if str(path) not in _SPLITS:
        _SPLITS[str(path)] = load_splits(path)
    return _SPLITS[str(path)][fold]


def execute_repro_job(job: Job, ctx: ReproContext) -> dict[str, Any]:
    """Train one fold of one protocol mode, compute its fold value, save the job file (once, also
    when two invocations share the folder: the job's lock)."""
    t0 = time.perf_counter()
    store = ResultStore(Path(ctx.out_dir))
    with store.claim(job, ctx.started, ctx.code_digests.get(job.method, ""), _label(job)) as done:
        if done is not None:
            return {"hash": job.hash, "label": _label(job), "status": "ok", "value": done["literature"]["value"],
                    "seconds": time.perf_counter() - t0, "by_other_run": True}
        return _execute(job, ctx, store, t0)


def _execute(job: Job, ctx: ReproContext, store: ResultStore, t0: float) -> dict[str, Any]:
    from benchmarks.engine import run_job, seed_everything

    _, proto_name, mode = job.grid.split("/")
    try:
        proto = load_protocols()[proto_name]
        choices = proto.mode(mode)
        cohort = load_cohort(ctx.sources[job.suite])
        task = ctx.tasks[job.suite]
        split = _split(split_file(Path(ctx.out_dir), job.suite, proto_name, mode, job.seed), job.fold)
        split.check(require_val=choices.val_frac > 0)
        bag = lambda s: cohort.bag(s).for_task(task, with_omics=False)  # noqa: E731
        train, val, test = ([bag(s) for s in ids] for ids in (split.train, split.val, split.test))
        every = [bag(s) for s in split.table["slide_id"]]
        train, val, test = normalise(choices.norm, train, val, test, every)
        threshold = "val_youden" if choices.threshold == "val_youden" else "0.5"
        protocol = ProtocolConfig.from_dict({**ctx.protocol, "threshold": threshold})
        seed = job.seed * 1000 + job.fold
        seed_everything(seed, protocol.deterministic)
        spec = registry.get(job.method)
        model = spec.build_model(cohort.in_dim, None, 2, job.hparams)
        recipe = Recipe.from_dict(job.train)
        res = run_job(model, train, val, test, [], protocol, seed=seed, recipe=recipe,
                      watch_test=choices.selection == "max_test")
        y_test = np.array([p["y"] for p in res["predictions"]["test"]])
        p_test = np.array([p["p"] for p in res["predictions"]["test"]])
        epoch = res["best_epoch"]
        if choices.selection == "max_test":
            value, epoch = max_over_epochs(proto.metric, choices.threshold, y_test,
                                           [row["watch"]["test"] for row in res["curve"]])
        else:
            y_val = np.array([p["y"] for p in res["predictions"]["val"]])
            p_val = np.array([p["p"] for p in res["predictions"]["val"]])
            value = fold_value(proto.metric, choices.threshold, y_test, p_test, y_val, p_val)
        res["literature"] = {"protocol": proto_name, "mode": mode, "choices": dataclasses.asdict(choices),
                             "metric": proto.metric, "value": value, "selected_epoch": epoch,
                             "optimistic": choices.optimism(), "reads_test": choices.reads_test}
        res["status"] = "ok"
        res["code_digest"] = ctx.code_digests.get(job.method, "")
        store.save(job, res)
        return {"hash": job.hash, "label": _label(job), "status": "ok", "value": value,
                "seconds": time.perf_counter() - t0}
    except Exception as e:  # one failed fold must not stop the others; it is listed in the outputs
        return {"hash": job.hash, "label": _label(job), "status": "failed", "error": f"{type(e).__name__}: {e}",
                "traceback": traceback.format_exc(), "seconds": time.perf_counter() - t0}


def _label(job: Job) -> str:
    return f"{job.suite} {job.method} {job.grid.split('/', 1)[1]} repeat {job.seed} fold {job.fold}"


# ------------------------------------------------------------------------------------------
# Planning
# ------------------------------------------------------------------------------------------
@dataclass
class Cell:
    """One output row: (suite, method, protocol mode) and its jobs."""

    suite: str
    method: str
    protocol: str
    mode: str
    metric: str
    spread: str
    jobs: list[Job]
    recipe: Recipe
    optimism: str


def plan(suites: list[str], methods: list[str], modes: list[str], recipe_name: str, out_dir: Path,
         repeats: int | None = None, max_epochs: int | None = None) -> tuple[list[Cell], ReproContext, list[str]]:
    """Every (suite, method, mode) cell with its jobs; writes the splits. Returns the cells, the
    worker context and the methods skipped (with why)."""
    protocols, published = load_protocols(), load_published()
    cells: list[Cell] = []
    sources, tasks, skipped = {}, {}, []
    base_protocol: dict[str, Any] | None = None
    for sname in suites:
        suite = load_suite(sname)
        sp = suite_plan(suite)
        src_raw = suite.raw.get("source", {})
        if src_raw.get("kind") != "milcsv":
            raise ValueError(f"suite {sname}: reproduce runs the classic MIL suites (milcsv sources)")
        (task,) = suite.tasks
        src = CohortSource(kind="milcsv", name=sname, dataset=src_raw["dataset"], task=task, feature_transform="none")
        cohort = load_cohort(src)
        sources[sname], tasks[sname] = src, task
        suite_protocol = suite.protocol
        base_protocol = base_protocol or {k: v for k, v in suite_protocol.to_dict().items()
                                          if k in ("device", "bf16", "cpu_bf16", "deterministic", "compile")}
        for m in methods:
            spec = registry.get(m)
            if spec.needs:
                skipped.append(f"{sname}/{m}: needs {', '.join(sorted(spec.needs))}; the suite has none")
                continue
            pname = sp["methods"].get(m, sp["protocol"])
            proto = protocols[pname]
            has_published = ((published["suite"] == sname) & (published["method"] == m)
                             & (published["protocol"] == pname)).any()
            n_rep = repeats or (proto.repeats if has_published or not sp["repeats_unpublished"]
                                else int(sp["repeats_unpublished"]))
            base = resolve_recipe(spec, recipe_name, suite_protocol, sname, suite.recipe_family)
            for mode in modes:
                choices = proto.mode(mode)
                r = mode_recipe(base, proto, mode, max_epochs)
                hp = spec.hparams("default", base=r.hparams)
                proto_hash = proto.hash(mode)
                jobs = []
                for rep in range(n_rep):
                    path = split_file(out_dir, sname, pname, mode, rep)
                    h = save_splits(literature_splits(cohort.manifest, task, proto, mode, rep), path)
                    for fold in range(proto.folds):
                        jobs.append(Job(sname, f"reproduce/{pname}/{mode}", task, m, "default", fold, rep,
                                        hparams=hp, data_fingerprint=cohort.fingerprint, protocol_hash=proto_hash,
                                        split_hash=h, recipe=recipe_name, train=r.training_dict()))
                cells.append(Cell(sname, m, pname, mode, proto.metric, proto.spread, jobs, r, choices.optimism()))
    ctx = ReproContext(str(out_dir), sources, tasks, base_protocol or {})
    return cells, ctx, skipped


# ------------------------------------------------------------------------------------------
# Summary
# ------------------------------------------------------------------------------------------
def summarise(cells: list[Cell], out_dir: Path) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """reproduce.csv rows (ours vs published, in %) and per-cell details for the markdown."""
    store = ResultStore(out_dir)
    published = load_published()
    rows, details = [], []
    for c in cells:
        vals, missing = [], 0
        for j in c.jobs:
            p = store.path(j)
            try:
                d = json.loads(p.read_text())
                lit = d["literature"]
                vals.append({"repeat": j.seed, "fold": j.fold, "value": float(lit["value"])})
            except (OSError, ValueError, KeyError):
                missing += 1
        df = pd.DataFrame(vals, columns=["repeat", "fold", "value"])
        df = df[np.isfinite(df["value"])]
        ours_mean = 100 * df["value"].mean() if len(df) else float("nan")
        sd, spread_used = spread(df, c.spread) if len(df) else (float("nan"), c.spread)
        ours_std = 100 * sd
        pub = published[(published["suite"] == c.suite) & (published["method"] == c.method)
                         & (published["protocol"] == c.protocol) & (published["metric"] == c.metric)]
        pm = float(pub["mean"].iloc[0]) if len(pub) else float("nan")
        ps = float(pub["std"].iloc[0]) if len(pub) else float("nan")
        within = (bool(abs(ours_mean - pm) <= ps) if len(pub) and np.isfinite(ours_mean) else None)
        source = f"{pub['source'].iloc[0]}, {pub['table'].iloc[0]}" if len(pub) else ""
        rows.append({"suite": c.suite, "method": c.method, "protocol": c.mode, "metric": c.metric,
                     "ours_mean": round(ours_mean, 2), "ours_std": round(ours_std, 2),
                     "published_mean": pm, "published_std": ps, "source": source, "within_std": within})
        details.append({"cell": c, "n": len(df), "planned": len(c.jobs), "missing": missing, "spread": spread_used,
                        "repeats": int(df["repeat"].nunique()) if len(df) else 0,
                        "evidence": pub["evidence"].iloc[0] if len(pub) else "",
                        "epochs": _mean_epochs(store, c)})
    # published numbers of methods this suite does not implement (e.g. Hopfield pooling on UCSB)
    ran = {(c.suite, c.method) for c in cells}
    for _, p in published.iterrows():
        if p["suite"] in {c.suite for c in cells} and (p["suite"], p["method"]) not in ran \
                and p["method"] not in registry.METHODS:
            rows.append({"suite": p["suite"], "method": p["method"], "protocol": "published", "metric": p["metric"],
                         "ours_mean": float("nan"), "ours_std": float("nan"), "published_mean": p["mean"],
                         "published_std": p["std"], "source": f"{p['source']}, {p['table']}", "within_std": None})
    return pd.DataFrame(rows, columns=CSV_COLUMNS), details


def _mean_epochs(store: ResultStore, c: Cell) -> float:
    eps = []
    for j in c.jobs:
        try:
            d = json.loads(store.path(j).read_text())
            eps.append(1 + int(d["literature"]["selected_epoch"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return float(np.mean(eps)) if eps else float("nan")


def _fmt(mean: float, std: float) -> str:
    if not np.isfinite(mean):
        return "–"
    return f"{mean:.1f} ± {std:.1f}" if np.isfinite(std) else f"{mean:.1f}"


def to_markdown(table: pd.DataFrame, details: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    from benchmarks.report import method_name

    protocols = load_protocols()
    lines = ["# Reproducing published classic-MIL numbers", "",
             f"Command: `{meta['command']}`  ",
             f"Recipe: {meta['recipe']}; wall time {meta['wall_s'] / 60:.1f} min on {meta['machine']}; "
             f"code {meta['git_commit'] or 'unknown'}; {meta['n_ran']} of {meta['n_jobs']} jobs trained by this "
             "invocation, the rest reused from earlier ones (the wall time covers only this invocation)"
             + (f"; reused although computed by other code (--reuse-stale): {meta['stale_reused']}"
                if meta.get("stale_reused") else "") + ".", "",
             "Values in %. **As published** rows repeat the paper's own choices and are **optimistic** (the "
             "reason is given in each row); **leak-free** rows make every choice on a validation part and fit "
             "every statistic on training bags. *within std*: |ours - published| <= published std. "
             "Spread: what the published ± is (std over folds, standard error or std over repeats' means).", ""]
    by_suite: dict[str, list] = {}
    for _, r in table.iterrows():
        by_suite.setdefault(r["suite"], []).append(r)
    det = {(d["cell"].suite, d["cell"].method, d["cell"].mode): d for d in details}
    for suite, rows in by_suite.items():
        lines += [f"## {suite}", "",
                  "| method | protocol | mode | metric | ours | published | within std | folds | epochs | flag |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            d = det.get((suite, r["method"], r["protocol"]))
            pub = _fmt(r["published_mean"], r["published_std"])
            if d is None:  # a published-only reference row
                lines.append(f"| {r['method']} (published only) | | | {r['metric']} | – | {pub} | | | | |")
                continue
            c = d["cell"]
            flag = f"optimistic: {c.optimism}" if r["protocol"] == "as-published" else ""
            n = f"{d['n']}/{d['planned']}" + (f" ({d['planned'] - d['n']} failed or missing)" if d["n"] < d["planned"] else "")
            n += f", {d['repeats']} rep." + ("" if d["spread"] == c.spread else " (± over folds)")
            within = "" if r["within_std"] is None else ("yes" if r["within_std"] else "no")
            lines.append(f"| {method_name(r['method'])} | {c.protocol} | {r['protocol']} | {r['metric']} | "
                         f"{_fmt(r['ours_mean'], r['ours_std'])} | {pub} | {within} | {n} | "
                         f"{d['epochs']:.1f} | {flag} |")
        lines.append("")
        used = sorted({det[(suite, r['method'], r['protocol'])]['cell'].protocol for r in rows
                       if (suite, r['method'], r['protocol']) in det})
        for pn in used:
            p = protocols[pn]
            lines.append(f"- `{pn}`: {p.title}; {p.folds} folds x {p.repeats} repeats ({p.fold_scheme}), "
                         f"± = {p.spread}, epochs {'each recipe' if not p.epochs else p.epochs}; evidence: {p.evidence}.")
        evid = {f"{r['method']}: {det[(suite, r['method'], r['protocol'])]['evidence']}" for r in rows
                if (suite, r['method'], r['protocol']) in det and det[(suite, r['method'], r['protocol'])]['evidence']}
        for e in sorted(evid):
            lines.append(f"- published number of {e}")
        lines.append("")
    if meta.get("failed"):
        lines += ["## Failed folds", ""] + [f"- {f['label']}: {f['error']}" for f in meta["failed"]] + [""]
    if meta.get("skipped"):
        lines += ["## Skipped", ""] + [f"- {s}" for s in meta["skipped"]] + [""]
    lines += ["Epochs: mean number of epochs trained up to the selected one (the last, the best validation "
              "epoch or, as published by DSMIL, the best test epoch)."]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------
def add_arguments(p) -> None:
    p.add_argument("--suite", default=",".join(DEFAULT_SUITES), help="comma-separated classic MIL suites")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS), help="comma-separated registry names")
    p.add_argument("--recipe", choices=RECIPES, default="official",
                   help="official (default: each method's own recipe, its benchmark script where it has one) "
                        "or shared")
    p.add_argument("--protocol", choices=MODES, default=None, help="one mode only (default: both)")
    p.add_argument("--repeats", type=int, default=None, help="fold shuffles per protocol (default: the protocol's)")
    p.add_argument("--max-epochs", type=int, default=None, help="cap every epoch budget (quick checks)")
    p.add_argument("--out", default="results/reproduce", help="output folder (default results/reproduce)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes (default: cores)")
    p.add_argument("--force", action="store_true", help="recompute finished jobs")
    p.add_argument("--reuse-stale", action="store_true",
                   help="reuse finished jobs computed by other code (counted in reproduce.md) instead of "
                        "recomputing them")
    p.add_argument("--no-progress", action="store_true")


def main(args) -> int:
    """Run the literature protocols of the classic MIL suites and compare with the published numbers."""
    from tqdm.auto import tqdm

    from benchmarks.engine import environment
    from benchmarks.executors import interrupted, run_local
    from benchmarks.provenance import method_code_digest

    t0 = time.perf_counter()
    suites = [s.strip() for s in args.suite.split(",") if s.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        registry.get(m)
    if args.repeats is not None and args.repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
    modes = [args.protocol] if args.protocol else list(MODES)
    out = Path(args.out)
    cells, ctx, skipped = plan(suites, methods, modes, args.recipe, out, args.repeats, args.max_epochs)
    digests = {m: method_code_digest(m, extra=("benchmarks.literature",)) for m in methods}
    ctx = dataclasses.replace(ctx, started=time.time(), code_digests=digests)
    for s in skipped:
        print(f"skipping {s}", file=sys.stderr)
    store = ResultStore(out)
    jobs = [j for c in cells for j in c.jobs]
    todo, stale = store.partition(jobs, digests, args.force)
    stale_by = {m: sum(j.method == m for j in stale) for m in sorted({j.method for j in stale})}
    if stale and args.reuse_stale:
        print(f"reusing {len(stale)} finished job(s) computed by other code ({stale_by}); their values may differ "
              "from this code's", file=sys.stderr)
    elif stale:
        print(f"recomputing {len(stale)} finished job(s) whose code changed since ({stale_by}); "
              "--reuse-stale keeps them", file=sys.stderr)
        todo += stale
    todo.sort(key=lambda j: -registry.get(j.method).job_cost)
    print(f"reproduce: {len(jobs)} jobs ({len(jobs) - len(todo)} finished and reused, {len(todo)} to run) -> {out}",
          file=sys.stderr)
    failed = []
    bar = tqdm(total=len(todo), desc="folds", unit="job", disable=args.no_progress or not todo)
    n_done = 0
    try:
        for r in run_local(todo, ctx, args.workers, fn=execute_repro_job):
            if r["status"] != "ok":
                failed.append({"label": r["label"], "error": r["error"]})
                print(f"FAILED {r['label']}: {r['error']}\n{r['traceback']}", file=sys.stderr)
            else:
                n_done += 1
            bar.set_postfix_str(f"{r['label']}: {r['status']}")
            bar.update()
    except KeyboardInterrupt:
        bar.close()
        return interrupted(n_done, len(todo), out / "jobs")
    bar.close()
    table, details = summarise(cells, out)
    env = environment()
    meta = {"command": "python -m benchmarks reproduce " + " ".join(sys.argv[2:]) if len(sys.argv) > 2
            else "python -m benchmarks reproduce", "recipe": args.recipe, "wall_s": time.perf_counter() - t0,
            "machine": f"{os.cpu_count()} CPU cores, torch {env['torch']}", "git_commit": env["git_commit"],
            "failed": failed, "skipped": skipped, "n_jobs": len(jobs), "n_ran": len(todo),
            "code_digests": digests, "stale_reused": stale_by if args.reuse_stale else {}}
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "reproduce.csv", index=False)
    (out / "reproduce.md").write_text(to_markdown(table, details, meta), encoding="utf-8")
    atomic_write_json(out / "reproduce.json", {**meta, "suites": suites, "methods": methods, "modes": modes,
                                               "recipes": {f"{c.suite}/{c.method}/{c.mode}": c.recipe.to_dict()
                                                           for c in cells}})
    print((out / "reproduce.md").read_text())
    return 1 if failed else 0
